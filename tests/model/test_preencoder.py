"""FSQ against the paper's formula, and the pre-encoder's masking / scripting contract."""

import itertools
import math

import pytest
import torch

from model.preencoder import FSQ, LOG_FLOOR, PreEncoder, lengths_to_mask, reconstruction_loss
from utils.config import ConfigError, config_from_dict
from utils.config.preencoder import PreEncoderConfig, PreEncoderGeneratorConfig


def tiny(ds: int = 1) -> PreEncoder:
    torch.manual_seed(0)
    g = PreEncoderGeneratorConfig(hidden=32, encoder_blocks=2, decoder_blocks=1, kernel_size=3, downsample=ds)
    return PreEncoder(80, g).eval()


def paper_fsq(z: torch.Tensor, levels: list[int], eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """The FSQ formula of docs/DESIGN.md written out per dimension with Python floats."""
    qs, idx = [], torch.zeros(z.shape[:-1], dtype=torch.long)
    basis = 1
    for d, L in enumerate(levels):
        half = (L - 1) * (1 + eps) / 2
        offset = 0.5 if L % 2 == 0 else 0.0
        shift = math.atanh(offset / half)
        q = torch.round(torch.tanh(z[..., d] + shift) * half - offset)
        qs.append(q)
        idx = idx + (q.long() + L // 2) * basis
        basis *= L
    return torch.stack(qs, -1), idx


def test_fsq_matches_paper_formula():
    levels = [8, 5, 5, 5]
    fsq = FSQ(levels)
    z = torch.randn(4000, 4) * 3
    q_ref, idx_ref = paper_fsq(z, levels)
    torch.testing.assert_close(fsq.quantize(z), q_ref)
    assert torch.equal(fsq.codes_to_indices(fsq.quantize(z)), idx_ref)
    assert fsq.basis.tolist() == [1, 8, 40, 200] and fsq.codebook_size == 1000


def test_fsq_reaches_every_code_and_round_trips():
    for levels in ([8, 5, 5, 5], [7, 6, 4]):
        fsq = FSQ(levels)
        n = math.prod(levels)
        idx = torch.arange(n)
        codes = fsq.indices_to_codes(idx)
        assert torch.equal(fsq.codes_to_indices(codes), idx)
        # Every digit combination occurs once: the codebook is a full grid, no duplicates.
        grid = {tuple(c) for c in codes.long().tolist()}
        assert len(grid) == n
        assert grid == set(itertools.product(*[range(-(L // 2), L - L // 2) for L in levels]))
        # Bounded values can reach every level (extreme inputs saturate at the ends of the range).
        q = fsq.quantize(torch.cat([torch.full((1, len(levels)), -50.0), torch.full((1, len(levels)), 50.0)]))
        assert q[0].tolist() == [-(L // 2) for L in levels]
        assert q[1].tolist() == [L - 1 - L // 2 for L in levels]


def test_fsq_straight_through_gradient():
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(10, 4, requires_grad=True)
    codes, _ = fsq(z)
    codes.sum().backward()
    assert z.grad is not None and bool((z.grad.abs() > 0).all())


@pytest.mark.parametrize("ds", [1, 2])
def test_codes_identical_batched_and_alone(ds):
    model = tiny(ds)
    torch.manual_seed(1)
    lengths = [41, 23, 8]
    mels = [torch.randn(n, 80) * 2 - 5 for n in lengths]
    batch = torch.full((3, 41, 80), 7.0)  # garbage in the padding must not matter
    for i, m in enumerate(mels):
        batch[i, : m.shape[0]] = m
    mask = lengths_to_mask(torch.tensor(lengths), 41)
    with torch.no_grad():
        batched = model.encode(batch, mask)
        for i, m in enumerate(mels):
            alone = model.encode(m[None], None)[0]
            assert torch.equal(batched[i, : alone.shape[0]], alone)
            assert bool((batched[i, alone.shape[0]:] == 0).all())  # padded tokens are 0


def test_downsampling_shapes_and_token_mask():
    model = tiny(2)
    mask = lengths_to_mask(torch.tensor([9, 4]), 9)
    idx = model.encode(torch.randn(2, 9, 80), mask)
    assert idx.shape == (2, 5)  # ceil(9 / 2)
    assert model.token_mask(mask)[:, 0].tolist() == [[False] * 5, [False, False, True, True, True]]
    assert model.decode(idx, model.token_mask(mask)).shape == (2, 10, 80)


def test_decode_writes_silence_at_padding_and_ignores_pad_ids():
    model = tiny()
    idx = torch.randint(0, 1000, (2, 6))
    mask = lengths_to_mask(torch.tensor([6, 3]), 6)
    with torch.no_grad():
        a = model.decode(idx, mask)
        b = model.decode(idx.masked_fill(mask[:, 0], 999), mask)
    torch.testing.assert_close(a, b)
    assert bool((a[1, 3:] == LOG_FLOOR).all()) and bool((a[1, :3] != LOG_FLOOR).all())


@pytest.mark.parametrize("ds", [1, 2])
def test_scripted_equals_eager(ds):
    model = tiny(ds)
    scripted = torch.jit.script(model)
    mel = torch.randn(2, 13, 80) * 2 - 5
    mask = lengths_to_mask(torch.tensor([13, 7]), 13)
    with torch.no_grad():
        idx = model.encode(mel, mask)
        assert torch.equal(scripted.encode(mel, mask), idx)
        tmask = model.token_mask(mask)
        torch.testing.assert_close(scripted.decode(idx, tmask), model.decode(idx, tmask))
    assert scripted.codebook_size == 1000 and list(scripted.fsq_levels) == [8, 5, 5, 5]


def test_masked_loss_ignores_padding():
    target = torch.zeros(2, 5, 3)
    pred = torch.ones(2, 5, 3)
    pred[1, 2:] = 100.0  # huge error only in the padded frames
    mask = lengths_to_mask(torch.tensor([5, 2]), 5)
    total, l1, l2 = reconstruction_loss(pred, target, mask, l1_weight=1.0, l2_weight=0.5)
    assert float(l1) == pytest.approx(1.0) and float(l2) == pytest.approx(1.0)
    assert float(total) == pytest.approx(1.5)


def test_training_reduces_reconstruction_error():
    model = tiny().train()
    torch.manual_seed(0)
    mel = torch.randn(2, 16, 80) * 2 - 5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        recon, _ = model(mel)
        loss, _, _ = reconstruction_loss(recon, mel, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_config_rejects_bad_values_with_key_names():
    with pytest.raises(ConfigError, match="fsq_levels"):
        config_from_dict(PreEncoderConfig, {"model": {"generator": {"fsq_levels": [1, 5]}}}, "pe.yaml")
    with pytest.raises(ConfigError, match="downsample"):
        config_from_dict(PreEncoderConfig, {"model": {"generator": {"downsample": 3}}}, "pe.yaml")
    with pytest.raises(ConfigError, match="mel_channels"):
        config_from_dict(PreEncoderConfig, {"model": {"mel_channels": 100}}, "pe.yaml")
    with pytest.raises(ConfigError, match="1.0e-6"):
        config_from_dict(PreEncoderConfig, {"training": {"learning_rate": "1e-6"}}, "pe.yaml")
