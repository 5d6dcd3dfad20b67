"""Echolancer end-to-end behaviour: framing, causality, padding invariance, conditioning, dtypes."""

import pytest
import torch

from model import Echolancer
from utils.config import load_config

TINY = "config/model_tiny.yaml"
# The attention backends of full-sequence forwards: every property below holds for both (on CPU
# FlexAttention runs its eager reference implementation; see tests/model/test_flex_attention.py).
BACKENDS = ["sdpa", "flex"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "flex" and not torch.cuda.is_available():
        with torch.no_grad():  # flex_attention has no backward on CPU: these tests need none
            yield request.param
    else:
        yield request.param


def make_model(*overrides: str, seed: int = 0) -> Echolancer:
    torch.manual_seed(seed)
    return Echolancer.from_config(load_config(TINY, list(overrides))).eval()


def batch(model: Echolancer, B: int = 2, S: int = 9, T: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    texts = torch.randint(2, 40, (B, S), generator=g)
    src_lens = torch.tensor([S] + [S - 3] * (B - 1))
    mels = torch.randint(0, model.codebook_size, (B, T), generator=g)
    mel_lens = torch.tensor([T] + [T - 4] * (B - 1))
    speakers = torch.arange(B) % model.cfg.n_speaker
    em = torch.randn(B, model.cfg.emotion_input_size, generator=g)
    return speakers, texts, src_lens, mels, mel_lens, em


def test_special_ids_follow_the_codebook():
    m = make_model()
    assert (m.codebook_size, m.bos_id, m.eos_id, m.pad_id) == (1000, 1000, 1001, 1002)
    assert m.head.out_features == m.n_vocab == 1003


def test_framing_puts_eos_at_each_rows_length_and_pad_after():
    m = make_model()
    mels = torch.tensor([[5, 6, 7], [8, 9, m.pad_id]])
    inputs, targets, tgt_pad = m.frame(mels, torch.tensor([3, 2]))
    assert inputs.tolist() == [[m.bos_id, 5, 6, 7], [m.bos_id, 8, 9, m.pad_id]]
    assert targets.tolist() == [[5, 6, 7, m.eos_id], [8, 9, m.eos_id, m.pad_id]]
    assert tgt_pad.tolist() == [[False] * 4, [False, False, False, True]]


def test_logits_have_one_more_position_than_audio_tokens():
    m = make_model()
    out = m(*batch(m, T=12)[:5])
    assert out.logits.shape == (2, 13, m.n_vocab)


@pytest.mark.parametrize("alibi", [True, False])
def test_decoder_is_causal(alibi, backend):
    m = make_model(f"model.use_alibi={str(alibi).lower()}", f"model.attention_backend={backend}")
    spk, texts, sl, mels, ml, em = batch(m, B=1, T=10)
    ml = torch.tensor([10])
    base = m(spk, texts, sl, mels, ml, em).logits
    for k in (0, 4, 9):
        changed = mels.clone()
        changed[0, k] = (changed[0, k] + 1) % m.codebook_size
        out = m(spk, texts, sl, changed, ml, em).logits
        # token k is the decoder input at position k+1: logits at positions <= k cannot see it
        assert torch.equal(out[:, : k + 1], base[:, : k + 1])
        assert not torch.allclose(out[:, k + 1], base[:, k + 1])


@pytest.mark.parametrize("alibi", [True, False])
def test_extra_padding_changes_no_valid_logit(alibi, backend):
    m = make_model(f"model.use_alibi={str(alibi).lower()}", f"model.attention_backend={backend}")
    spk, texts, sl, mels, ml, em = batch(m)
    base = m(spk, texts, sl, mels, ml, em)
    # append junk (not even pad ids) after every row's end, on both text and audio
    texts2 = torch.cat([texts, torch.randint(2, 40, (2, 5))], 1)
    mels2 = torch.cat([mels, torch.randint(0, 1000, (2, 7))], 1)
    texts2[1, sl[1]:] = 33
    mels2[1, ml[1]:] = 17
    out = m(spk, texts2, sl, mels2, ml, em)
    for b in range(2):
        n = ml[b] + 1
        assert torch.allclose(out.logits[b, :n], base.logits[b, :n], atol=1e-5)


def test_model_without_alibi_is_not_position_blind():
    m = make_model("model.use_alibi=false")
    spk, texts, sl, _, _, em = batch(m, B=1)
    sl = torch.tensor([texts.shape[1]])
    perm = torch.randperm(texts.shape[1], generator=torch.Generator().manual_seed(0))
    enc = m.encode(spk, texts, sl, em).memory
    enc_perm = m.encode(spk, texts[:, perm], sl, em).memory
    # a position-blind encoder would just permute its outputs
    assert not torch.allclose(enc_perm, enc[:, perm], atol=1e-4)
    # and the decoder distinguishes a repeated token at different positions
    inputs = torch.tensor([[m.bos_id, 7, 7, 7, 7]])
    h = m.decode(inputs, m.encode(spk, texts, sl, em))
    assert not torch.allclose(h[0, 2], h[0, 3], atol=1e-4)


def test_emotion_changes_output_but_never_erases_text():
    m = make_model()
    spk, texts, sl, _, _, em = batch(m)
    same_em = em[:1].expand(2, -1)
    same_text = texts[:1].expand(2, -1)
    sl_same = sl[:1].expand(2)
    a = m.encode(spk[:1].expand(2), same_text, sl_same, em).memory
    assert not torch.allclose(a[0], a[1], atol=1e-4), "emotion had no effect"
    b = m.encode(spk[:1].expand(2), texts, torch.tensor([9, 9]), same_em).memory
    assert not torch.allclose(b[0], b[1], atol=1e-4), "two texts with one emotion gave one output"


def test_speaker_ids_change_the_output_and_bad_ids_are_rejected():
    m = make_model()
    spk, texts, sl, mels, ml, em = batch(m, B=1)
    a = m(torch.tensor([0]), texts, sl, mels, ml, em).logits
    b = m(torch.tensor([3]), texts, sl, mels, ml, em).logits
    assert not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        m(torch.tensor([4]), texts, sl, mels, ml, em)


def test_reference_tokens_condition_the_vq_token_mode_model():
    m = make_model("model.vq_token_mode=true", "model.multi_speaker=false")
    spk, texts, sl, mels, ml, em = batch(m, B=1)
    ref_a = torch.randint(0, 1000, (1, 15), generator=torch.Generator().manual_seed(3))
    ref_b = torch.randint(0, 1000, (1, 15), generator=torch.Generator().manual_seed(4))
    lens = torch.tensor([15])
    a = m(None, texts, sl, mels, ml, em, vq_tokens=ref_a, vq_token_lens=lens).logits
    b = m(None, texts, sl, mels, ml, em, vq_tokens=ref_b, vq_token_lens=lens).logits
    assert not torch.allclose(a, b, atol=1e-5)
    # padding after the reference's length is ignored
    padded = torch.cat([ref_a, torch.full((1, 4), 999)], 1)
    c = m(None, texts, sl, mels, ml, em, vq_tokens=padded, vq_token_lens=lens).logits
    assert torch.allclose(a, c, atol=1e-5)
    with pytest.raises(ValueError, match="vq_tokens"):
        m(None, texts, sl, mels, ml, em)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alibi", [True, False])
def test_outputs_are_finite_under_autocast(dtype, alibi):
    m = make_model(f"model.use_alibi={str(alibi).lower()}")
    spk, texts, sl, mels, ml, em = batch(m)
    with torch.autocast("cpu", dtype=dtype):
        out = m(spk, texts, sl, mels, ml, em)
    assert out.logits.dtype == dtype
    assert torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize("alibi", [True, False])
def test_one_step_decode_with_cache_equals_full_decode(alibi):
    m = make_model(f"model.use_alibi={str(alibi).lower()}")
    spk, texts, sl, mels, ml, em = batch(m)
    enc = m.encode(spk, texts, sl, em)
    inputs = torch.cat([torch.full((2, 1), m.bos_id), mels], 1)
    with torch.no_grad():
        full, _ = m.project(m.decode(inputs, enc))
        state = m.init_decode_state(enc, max_len=20)
        steps = [m.decode_step(inputs[:, i : i + 1], torch.tensor([i]), state)[0] for i in range(inputs.shape[1])]
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def test_stop_head_produces_per_position_logits():
    m = make_model("model.stop_head=true")
    out = m(*batch(m)[:5])
    assert out.stop_logits.shape == out.logits.shape[:2]
    assert out.stop_targets.sum(1).tolist() == [1, 1]


def test_a_model_cast_to_bfloat16_runs_without_autocast():
    m = make_model().to(torch.bfloat16)
    spk, texts, sl, mels, ml, em = batch(m)
    out = m(spk, texts, sl, mels, ml, em)  # float32 emotion input is cast to the weights' dtype
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    assert torch.isfinite(m(spk, texts, sl, mels, ml).logits.float()).all()  # default (zero) emotion


@pytest.mark.parametrize("alibi", [True, False])
def test_attention_never_materialises_a_batch_sized_float_mask(alibi, monkeypatch):
    import model.layers as layers

    calls = []
    sdpa = layers.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((q.shape, None if attn_mask is None else (attn_mask.dtype, tuple(attn_mask.shape)), is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    m = make_model(f"model.use_alibi={str(alibi).lower()}")
    spk, texts, sl, mels, ml, em = batch(m, B=3, S=9, T=12)
    m(spk, texts, sl, mels, ml, em)
    B, H, T = 3, 2, 13
    for _q_shape, mask, is_causal in calls:
        if mask is None:
            assert is_causal  # decoder self-attention without ALiBi: SDPA's own causal mask
        elif mask[0] == torch.bool:
            assert mask[1][1:3] == (1, 1)  # key padding (B, 1, 1, S), broadcast over heads and queries
        else:
            # float ALiBi bias: shared by the batch in the decoder; only the short encoder is (B, H, S, S)
            assert alibi and mask[1] in ((1, H, T, T), (B, H, 9, 9))
    decoder_self = [c for c in calls if c[0][2] == T and (c[1] is None or c[1][1][-1] == T)]
    assert len(decoder_self) == m.cfg.decoder.layer


# ---- word order: a sentence and its reverse must not look the same ------------------------------

POSITION_OPTIONS = [
    ["model.use_alibi=true", "model.encoder_position=directional"],
    ["model.use_alibi=true", "model.encoder_position=absolute"],
    ["model.use_alibi=true", "model.encoder_position=directional_absolute"],
    ["model.use_alibi=false"],
]


def scaled_model(*overrides: str) -> Echolancer:
    """The tiny model with every matrix scaled x5, so a difference cannot hide in a small init."""
    m = make_model(*overrides)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(5.0)
    return m


def order_sensitivity(m: Echolancer, texts: torch.Tensor) -> float:
    """Largest logit change from reversing the text, relative to the logits' scale."""
    T = 10
    mels = torch.randint(0, m.codebook_size, (1, T), generator=torch.Generator().manual_seed(3))
    args = dict(src_lens=torch.tensor([texts.shape[1]]), mels=mels, mel_lens=torch.tensor([T]),
                em_hidden=torch.zeros(1, m.cfg.emotion_input_size))
    spk = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        a = m(spk, texts, **args).logits
        b = m(spk, texts.flip(1), **args).logits
    return float((a - b).abs().max() / a.abs().max())


TEXT = torch.tensor([[5, 9, 14, 3, 22, 7, 30, 11, 18, 25, 6, 12, 33, 8, 19, 4, 27]])  # 17 tokens


@pytest.mark.parametrize("overrides", POSITION_OPTIONS, ids=lambda o: o[-1].split("=")[-1])
def test_reversing_the_text_changes_the_logits(overrides, backend):
    m = scaled_model(*overrides, f"model.attention_backend={backend}")
    assert order_sensitivity(m, TEXT) > 1e-3  # float noise is ~1e-7


@pytest.mark.parametrize("overrides", POSITION_OPTIONS, ids=lambda o: o[-1].split("=")[-1])
def test_swapping_two_distant_text_tokens_changes_the_logits(overrides, backend):
    m = scaled_model(*overrides, f"model.attention_backend={backend}")
    swapped = TEXT.clone()
    swapped[0, [1, 15]] = swapped[0, [15, 1]]
    T = 10
    mels = torch.randint(0, m.codebook_size, (1, T), generator=torch.Generator().manual_seed(3))
    spk, em = torch.zeros(1, dtype=torch.long), torch.zeros(1, m.cfg.emotion_input_size)
    with torch.no_grad():
        a = m(spk, TEXT, torch.tensor([17]), mels, torch.tensor([T]), em).logits
        b = m(spk, swapped, torch.tensor([17]), mels, torch.tensor([T]), em).logits
    assert float((a - b).abs().max() / a.abs().max()) > 1e-3


def test_the_order_check_catches_the_old_mirror_blind_encoder():
    # The symmetric-ALiBi encoder of earlier versions (kept here only as the check's control):
    # its memory of a reversed text is the mirrored memory, and cross-attention sees a set.
    m = scaled_model("model.use_alibi=true")
    m.encoder.position = "symmetric"
    assert order_sensitivity(m, TEXT) < 1e-5


def test_saved_config_of_the_mirror_blind_encoder_is_refused_with_the_reason():
    from utils.config import ConfigError, ModelConfig, config_from_dict, config_to_dict

    raw = config_to_dict(load_config(TINY))
    del raw["model"]["encoder_position"]  # what versions before the position scheme saved
    with pytest.raises(ConfigError, match="encoder_position.*cannot tell a sentence from its reverse"):
        config_from_dict(ModelConfig, raw, "old.pt")
    raw["model"]["use_alibi"] = False  # sinusoidal models meant the same then as now: they load
    assert config_from_dict(ModelConfig, raw, "old.pt").model.encoder_position == "directional"


def test_directional_encoder_needs_two_heads():
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="encoder.head must be >= 2"):
        load_config(TINY, ["model.encoder.head=1", "model.encoder_kv_heads=1"])
    load_config(TINY, ["model.encoder.head=1", "model.encoder_kv_heads=1", "model.encoder_position=absolute"])


@pytest.mark.parametrize("overrides", POSITION_OPTIONS, ids=lambda o: o[-1].split("=")[-1])
def test_text_padding_changes_no_valid_logit_for_every_position_option(overrides, backend):
    m = make_model(*overrides, f"model.attention_backend={backend}")
    spk, texts, sl, mels, ml, em = batch(m)
    base = m(spk, texts, sl, mels, ml, em)
    junk = torch.cat([texts, torch.randint(2, 40, (2, 5))], dim=1)
    out = m(spk, junk, sl, mels, ml, em)
    for b in range(2):
        n = int(ml[b]) + 1
        assert torch.allclose(out.logits[b, :n], base.logits[b, :n], atol=1e-5)
