"""Losses average over valid elements only; PAD is ignored and EOS is a real target."""

import pytest
import torch
import torch.nn.functional as F

from model import Echolancer, EcholancerLoss, MaskedBCE, MaskedCrossEntropy, MaskedMAE
from utils.config import load_config


def tiny(*overrides):
    torch.manual_seed(0)
    return Echolancer.from_config(load_config("config/model_tiny.yaml", list(overrides))).eval()


def forward(m):
    g = torch.Generator().manual_seed(0)
    texts = torch.randint(2, 40, (2, 6), generator=g)
    mels = torch.randint(0, 1000, (2, 8), generator=g)
    return m(torch.tensor([0, 1]), texts, torch.tensor([6, 4]), mels, torch.tensor([8, 3]))


def test_loss_ignores_logits_at_pad_targets():
    m = tiny()
    base = EcholancerLoss()(forward(m)).total.detach()
    changed = forward(m)
    changed.logits = changed.logits.detach().clone()
    changed.logits[1, 4:] += torch.randn_like(changed.logits[1, 4:]) * 50  # row 1: 3 tokens + EOS valid
    assert torch.allclose(EcholancerLoss()(changed).total, base)
    changed.logits[1, 3] += torch.randn_like(changed.logits[1, 3]) * 50  # the EOS position counts
    assert not torch.allclose(EcholancerLoss()(changed).total, base)


def test_loss_counts_eos_and_equals_the_manual_mean():
    m = tiny()
    out = forward(m)
    lo = EcholancerLoss()(out)
    valid = ~out.tgt_pad
    assert out.targets[1, 3] == m.eos_id and valid[1, 3]
    manual = F.cross_entropy(out.logits[valid], out.targets[valid])
    assert torch.allclose(lo.ce, manual, atol=1e-6)
    assert lo.n_tokens == 9 + 4
    changed = forward(m)
    changed.logits = changed.logits.detach().clone()
    changed.logits[1, 3, m.eos_id] += 10.0  # more confident EOS lowers the loss
    assert EcholancerLoss()(changed).ce < lo.ce


def test_normalizer_makes_accumulated_micro_batches_equal_one_batch():
    m = tiny()
    out = forward(m)
    whole = EcholancerLoss()(out).total
    n = out.tgt_pad.logical_not().sum()
    parts = []
    for b in range(2):
        sub = type(out)(out.logits[b : b + 1], None, out.targets[b : b + 1], out.tgt_pad[b : b + 1],
                        out.src_pad[b : b + 1], out.stop_targets[b : b + 1])
        parts.append(EcholancerLoss()(sub, normalizer=n).total)
    assert torch.allclose(sum(parts), whole, atol=1e-6)


def test_stop_head_term_is_weighted_masked_bce():
    m = tiny("model.stop_head=true")
    out = forward(m)
    lo = EcholancerLoss(pos_weight=5.0, stop_weight=0.5)(out)
    valid = ~out.tgt_pad
    manual = F.binary_cross_entropy_with_logits(
        out.stop_logits[valid], out.stop_targets[valid].float(), pos_weight=torch.tensor(5.0)
    )
    assert torch.allclose(lo.stop, manual, atol=1e-6)
    assert torch.allclose(lo.total, lo.ce + 0.5 * lo.stop)


def test_masked_losses_average_over_valid_elements_only():
    pred = torch.tensor([[1.0, 2.0, 100.0]])
    target = torch.tensor([[0.0, 0.0, 0.0]])
    pad = torch.tensor([[False, False, True]])
    assert MaskedMAE()(pred, target, pad).item() == pytest.approx(1.5)
    logits = torch.tensor([[0.0, 0.0, 50.0]])
    bce = MaskedBCE(pos_weight=2.0)(logits, torch.tensor([[1.0, 0.0, 0.0]]), pad)
    assert bce.item() == pytest.approx((2 * 0.693147 + 0.693147) / 2, rel=1e-4)
    ce = MaskedCrossEntropy()(torch.zeros(1, 3, 4), torch.tensor([[1, 2, 3]]), pad)
    assert ce.item() == pytest.approx(1.386294, rel=1e-5)
    # mel-shaped (B, T, C) input with a (B, T, 1) mask broadcasts
    mel_pad = torch.tensor([[[False], [True]]])
    assert MaskedMAE()(torch.ones(1, 2, 3), torch.zeros(1, 2, 3), mel_pad).item() == pytest.approx(1.0)
