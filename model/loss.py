"""Losses. Every masked loss takes a padding mask (True = ignore) and averages over valid
elements only, or divides the sum by ``normalizer`` when given, so that gradient accumulation
over micro-batches equals one large batch (divide by the valid-element count of the whole
accumulated batch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _reduce(values: Tensor, pad: Tensor, normalizer: Optional[float | Tensor]) -> Tensor:
    values = values.masked_fill(pad, 0.0)
    denom = normalizer if normalizer is not None else (~pad).sum().clamp(min=1)
    return values.sum() / denom


class MaskedCrossEntropy(nn.Module):
    """Cross-entropy over logits (..., V) and targets (...), ignoring positions where pad is True."""

    def forward(self, logits: Tensor, targets: Tensor, pad: Tensor, normalizer=None) -> Tensor:
        ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.masked_fill(pad, 0).flatten(), reduction="none")
        return _reduce(ce.view_as(targets), pad, normalizer)


class MaskedMAE(nn.Module):
    """Mean absolute error over valid positions. ``pad`` broadcasts against the inputs."""

    def forward(self, pred: Tensor, target: Tensor, pad: Tensor, normalizer=None) -> Tensor:
        err = (pred.float() - target.float()).abs()
        return _reduce(err, pad.expand_as(err), normalizer)


class MaskedBCE(nn.Module):
    """Binary cross-entropy with logits over valid positions, positives weighted by ``pos_weight``."""

    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: Tensor, target: Tensor, pad: Tensor, normalizer=None) -> Tensor:
        pw = torch.tensor(self.pos_weight, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw, reduction="none")
        return _reduce(bce, pad, normalizer)


@dataclass
class LossOutput:
    total: Tensor
    ce: Tensor
    stop: Optional[Tensor]
    accuracy: Tensor  # token accuracy over valid targets (EOS included), detached
    n_tokens: Tensor  # valid targets in this batch
    align: Optional[Tensor] = None  # guided alignment loss, added by the trainer when it is on
    text_ctc: Optional[Tensor] = None  # weighted text-recognition loss, added by the trainer when it is on


class EcholancerLoss(nn.Module):
    """Token cross-entropy (EOS is a target, PAD is ignored) plus, for models with a stop head,
    a masked BCE stop term weighted by ``pos_weight``.

    Args:
        pos_weight: weight of the positive (stop) class.  stop_weight: weight of the stop term.
    """

    def __init__(self, pos_weight: float = 5.0, stop_weight: float = 1.0) -> None:
        super().__init__()
        self.ce = MaskedCrossEntropy()
        self.bce = MaskedBCE(pos_weight)
        self.stop_weight = stop_weight

    def forward(self, out, normalizer=None) -> LossOutput:
        """
        Args:
            out: :class:`model.echolancer.EcholancerOutput`.
            normalizer: divide sums by this instead of this batch's valid count.
        """
        ce = self.ce(out.logits, out.targets, out.tgt_pad, normalizer)
        total, stop = ce, None
        if out.stop_logits is not None:
            stop = self.bce(out.stop_logits, out.stop_targets, out.tgt_pad, normalizer)
            total = total + self.stop_weight * stop
        with torch.no_grad():
            valid = ~out.tgt_pad
            correct = (out.logits.argmax(-1) == out.targets) & valid
            n = valid.sum()
            acc = correct.sum().float() / n.clamp(min=1)
        return LossOutput(total, ce, stop, acc, n)


def text_ctc_loss(text_logits: Tensor, texts: Tensor, src_lens: Tensor, tgt_lens: Tensor,
                  normalizer: Optional[float | Tensor] = None) -> Tensor:
    """CTC of the text given the decoder states: −log P(texts | text_logits), blank = last class.

    Args:
        text_logits: (B, T, V + 1) per decoder step, the text symbols and (last) blank.
        texts: (B, S) text ids in [0, V), padded anyhow past ``src_lens``.  src_lens: (B,).
        tgt_lens: (B,) valid decoder steps (codec tokens + EOS).
        normalizer: divide the summed negative log-likelihood by this (the accumulated batch's
            valid-step count, as the token loss does) instead of this batch's step count.
    Returns:
        scalar float32 ≥ 0, per decoder step. A row with too few steps for its text contributes 0.
    """
    blank = text_logits.shape[-1] - 1
    logp = torch.log_softmax(text_logits.float(), dim=-1).transpose(0, 1)  # (T, B, V + 1)
    nll = F.ctc_loss(logp, texts.long(), tgt_lens.long(), src_lens.long(), blank=blank, reduction="none",
                     zero_infinity=True)
    denom = normalizer if normalizer is not None else tgt_lens.sum().clamp(min=1)
    return nll.sum() / denom
