"""Text-audio alignment: the beta-binomial prior that helps it form, and how to look at it.

An autoregressive TTS decoder has to discover on its own that audio step t attends to the text
near position t·S/T; on real speech that takes thousands of steps, and a decoder that never finds
it skips or repeats words. The static prior of RAD-TTS (Shih et al. 2021, also used by NeMo's
Magpie-TTS) shortcuts this: for an utterance of S text tokens and T audio steps, step t's prior over
text positions k is a beta-binomial

    P(k | t) = BetaBinomial(k; n = S − 1, α = ω·t, β = ω·(T − t + 1)),   t = 1..T,

whose mean moves linearly from the first to the last text token. Its log, times a weight that is
annealed from 1 to 0 during training (:func:`prior_weight`), is added to every cross-attention
score. Inference never uses it (the audio length is unknown there).

The prior alone does not teach the decoder's own attention: while it carries the alignment the
model's scores barely move (measured on the speech recipe), so the alignment has to form again as
the prior fades. :func:`guided_attention_loss` (Tachibana et al. 2018, "guided attention") trains
the model's own cross-attention directly: it penalises attention mass far from the diagonal,
with weight 1 − exp(−(s/S − t/T)² / 2g²) at text position s of S and audio step t of T.

The guided loss's band is a fixed diagonal: it penalises correct alignments whose pace varies
(a pause, a long vowel, a letter of 2 tokens beside one of 6). :func:`forward_sum_loss` (the
"forward-sum" or CTC alignment loss of RAD-TTS, Shih et al. 2021, and NeMo's T5-TTS) asks only for
order: the likelihood, summed over every monotonic path that visits each text position in turn
(with a blank for steps that attend to nothing in particular), of the decoder's own cross-attention.
Any speaking rate scores the same, so long as the attention moves forward through all the text.

At inference :func:`window_mask` can hold the decoder to the text it has reached: each step's
cross-attention sees only positions [p − back, p + forward] around p, the furthest text position
its attention has peaked at so far (``generation.attention_window``; the decode loop keeps p).
A decoder that can neither jump ahead nor fall back cannot skip or repeat words.

The pictures: :func:`cross_attention_maps` recomputes the decoder's cross-attention probabilities
explicitly for a few utterances, :func:`diagonality` scores how much of their mass lies near the
diagonal, and :func:`alignment_image` turns one map into an 8-bit image for W&B.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    from model.echolancer import Echolancer

# Far-off text positions get a log prior of about −500 at ω = 1; clamping keeps the bias finite
# in fp16 and bounds how hard the prior can push while it is annealed.
MIN_LOG_PRIOR = -30.0


def _log_beta(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def beta_binomial_log_prior(src_lens: Tensor, tgt_lens: Tensor, S: int, T: int, scale: float = 1.0) -> Tensor:
    """The log beta-binomial alignment prior of a batch.

    Args:
        src_lens: (B,) text lengths.  tgt_lens: (B,) decoder steps per row (audio tokens + EOS).
        S, T: padded text and decoder lengths.  scale: ω, the concentration per audio step.
    Returns:
        (B, T, S) float32 log prior, clamped at ``MIN_LOG_PRIOR``; 0 on padded steps and text
        (those are masked elsewhere).
    """
    device = src_lens.device
    n = (src_lens.float() - 1).clamp(min=0)[:, None, None]  # (B, 1, 1)
    t = torch.arange(1, T + 1, device=device, dtype=torch.float32)[None, :, None]  # (1, T, 1)
    k = torch.arange(S, device=device, dtype=torch.float32)[None, None, :]  # (1, 1, S)
    L = tgt_lens.float()[:, None, None]
    a = scale * t
    b = (scale * (L - t + 1)).clamp(min=scale)  # positions past the row's end: any positive value
    kk = torch.minimum(k, n)  # keep lgamma's arguments positive on padded text
    log_p = (
        torch.lgamma(n + 1) - torch.lgamma(kk + 1) - torch.lgamma(n - kk + 1)
        + _log_beta(kk + a, n - kk + b) - _log_beta(a, b)
    )
    valid = (k <= n) & (t <= L)
    return torch.where(valid, log_p.clamp(min=MIN_LOG_PRIOR), 0.0)


def prior_weight(step: int, enabled: bool, hold_steps: int, anneal_steps: int) -> float:
    """Weight of the prior at optimizer step ``step``: 1 while held, then a linear fade to 0."""
    if not enabled:
        return 0.0
    if step < hold_steps:
        return 1.0
    if anneal_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - (step - hold_steps) / anneal_steps)


def alignment_prior(
    src_lens: Tensor, mel_lens: Tensor, S: int, T: int, scale: float, weight: float
) -> Optional[Tensor]:
    """The cross-attention bias for ``Echolancer.forward`` (``cross_bias``), or None at weight 0.

    Args:
        src_lens: (B,) text lengths.  mel_lens: (B,) codec tokens per row (EOS is added here).
        S: padded text length.  T: padded codec length (the decoder runs T + 1 steps).
    Returns:
        (B, T + 1, S) float32 or None.
    """
    if weight <= 0.0:
        return None
    return weight * beta_binomial_log_prior(src_lens, mel_lens + 1, S, T + 1, scale)


def guided_attention_weights(src_lens: Tensor, tgt_lens: Tensor, S: int, T: int, sigma: float) -> Tensor:
    """Penalty W (B, T, S) of the guided attention loss: 0 on the diagonal, towards 1 far off it.

    Positions are the centres of their cells, (s + ½)/S against (t + ½)/T per row; padded
    steps and text get 0.

    Args:
        src_lens: (B,) text lengths.  tgt_lens: (B,) decoder steps per row.  S, T: padded sizes.
        sigma: g, the width of the zero-penalty band as a fraction of the utterance.
    """
    device = src_lens.device
    s = torch.arange(S, device=device, dtype=torch.float32)[None, None, :]
    t = torch.arange(T, device=device, dtype=torch.float32)[None, :, None]
    s_len = src_lens.float()[:, None, None].clamp(min=1)
    t_len = tgt_lens.float()[:, None, None].clamp(min=1)
    d = (s + 0.5) / s_len - (t + 0.5) / t_len
    w = 1.0 - torch.exp(-d.square() / (2.0 * sigma * sigma))
    return torch.where((s < s_len) & (t < t_len), w, 0.0)


def guided_attention_loss(
    weights: list[Tensor], src_lens: Tensor, tgt_lens: Tensor, sigma: float,
    normalizer: Optional[float | Tensor] = None,
) -> Tensor:
    """Off-diagonal attention mass, per decoder step, averaged over layers and heads.

    Args:
        weights: each decoder layer's cross-attention probabilities (B, H, T, S), as
            ``Echolancer.forward(..., return_cross_weights=True)`` returns them.
        src_lens: (B,) text lengths.  tgt_lens: (B,) valid decoder steps (codec tokens + EOS).
        sigma: see :func:`guided_attention_weights`.
        normalizer: divide the sum over valid steps by this (the accumulated batch's valid-step
            count, as the token loss does) instead of this batch's count.
    Returns:
        scalar float32; in [0, 1) per step: 0 when every head attends within the diagonal band.
    """
    if not weights:
        raise ValueError("guided_attention_loss needs the cross-attention weights of at least one layer")
    B, _, T, S = weights[0].shape
    w = guided_attention_weights(src_lens, tgt_lens, S, T, sigma)[:, None]  # (B, 1, T, S)
    total = sum((a.float() * w).sum() / a.shape[1] for a in weights) / len(weights)
    denom = normalizer if normalizer is not None else tgt_lens.sum().clamp(min=1)
    return total / denom


def forward_sum_loss(
    weights: list[Tensor], src_lens: Tensor, tgt_lens: Tensor, blank_logprob: float = -1.0,
    normalizer: Optional[float | Tensor] = None,
) -> Tensor:
    """CTC over text positions: −log P(the attention visits every text position, in order).

    Each layer's cross-attention, averaged over heads, is read as a distribution over text
    positions per decoder step. A blank class with log-score ``blank_logprob`` is put before the
    text and the row renormalised; the CTC target of a row of S_b symbols is simply 1, 2, ..., S_b.
    Heads are averaged rather than scored one by one so that a head may attend elsewhere (e.g. to
    the whole sentence) while the layer as a whole moves through the text.

    Args:
        weights: each decoder layer's cross-attention probabilities (B, H, T, S) (0 on padded text).
        src_lens: (B,) text lengths.  tgt_lens: (B,) valid decoder steps (codec tokens + EOS).
        blank_logprob: log-score of the blank column before renormalisation (RAD-TTS uses −1).
        normalizer: divide the summed negative log-likelihood by this (the accumulated batch's
            valid-step count, as the token loss does) instead of this batch's count.
    Returns:
        scalar float32 ≥ 0: the negative log-likelihood per decoder step, averaged over layers.
        A row with fewer steps than symbols (no monotonic path) contributes 0.
    """
    if not weights:
        raise ValueError("forward_sum_loss needs the cross-attention weights of at least one layer")
    B, _, T, S = weights[0].shape
    valid_text = torch.arange(S, device=src_lens.device)[None, None, :] < src_lens[:, None, None]  # (B, 1, S)
    targets = torch.arange(1, S + 1, device=src_lens.device).expand(B, S)
    total = torch.zeros((), device=weights[0].device)
    for a in weights:
        p = a.float().mean(dim=1)  # (B, T, S)
        # Padded text gets a score whose probability is 0 in float32 (−inf would give CTC's backward
        # 0·inf = NaN); real positions are floored at 1e-8, so one the attention ignores still has a
        # finite, large cost.
        logp = torch.log(p.clamp(min=1e-8)).masked_fill(~valid_text, -1.0e4)
        blank = torch.full((B, T, 1), blank_logprob, device=p.device)
        logp = torch.log_softmax(torch.cat([blank, logp], dim=-1), dim=-1)  # (B, T, S + 1)
        nll = torch.nn.functional.ctc_loss(
            logp.transpose(0, 1), targets, tgt_lens.long(), src_lens.long(), blank=0, reduction="none",
            zero_infinity=True,
        )
        total = total + nll.sum()
    denom = normalizer if normalizer is not None else tgt_lens.sum().clamp(min=1)
    return total / len(weights) / denom


def alignment_loss(weights: list[Tensor], src_lens: Tensor, tgt_lens: Tensor, cfg,
                   normalizer: Optional[float | Tensor] = None) -> Tensor:
    """The training alignment loss: ``guided_weight``·guided + ``forward_sum_weight``·forward-sum.

    Args:
        weights, src_lens, tgt_lens, normalizer: as :func:`guided_attention_loss`.
        cfg: the training config's ``alignment`` section (``utils.config.train.AlignmentConfig``).
    """
    total = torch.zeros((), device=weights[0].device)
    if cfg.guided_weight > 0:
        total = total + cfg.guided_weight * guided_attention_loss(weights, src_lens, tgt_lens, cfg.guided_sigma,
                                                                  normalizer)
    if cfg.forward_sum_weight > 0:
        total = total + cfg.forward_sum_weight * forward_sum_loss(weights, src_lens, tgt_lens,
                                                                  cfg.forward_sum_blank, normalizer)
    return total


def window_mask(pos: Tensor, S: int, window: tuple[int, int]) -> Tensor:
    """Text positions each row may attend to, around its current alignment position.

    Args:
        pos: (B, ...) long, each row's (and step's) alignment position.  S: padded text length.
        window: (back, forward) text positions kept before and after ``pos``.
    Returns:
        (B, ..., S) bool, True where ``pos - back <= s <= pos + forward``.
    """
    back, forward = window
    s = torch.arange(S, device=pos.device)
    d = s - pos[..., None]
    return (d >= -back) & (d <= forward)


def window_position(pos: Tensor, weights: list[Tensor]) -> Tensor:
    """The alignment position after a step: the text position the step's cross-attention
    (averaged over layers and heads) peaks at, never behind ``pos``.

    Args:
        pos: (B,) long.  weights: each layer's probabilities of the step, (B, H, S).
    """
    attn = torch.stack([w.float().mean(dim=1) for w in weights]).mean(dim=0)  # (B, S)
    return torch.maximum(pos, attn.argmax(dim=-1))


@torch.no_grad()
def cross_attention_maps(model: Echolancer, batch: dict) -> list[Tensor]:
    """Each decoder layer's cross-attention, averaged over heads, under teacher forcing.

    Args:
        batch: the keys of ``Echolancer.forward`` (``speakers``, ``texts``, ``src_lens``, ``mels``,
            ``mel_lens``, optional ``em_hidden``, ``vq_tokens``, ``vq_token_lens``).
    Returns:
        one (B, T + 1, S) float32 map per decoder layer, in eval mode and without any prior.
    """
    was_training = model.training
    model.eval()
    try:
        enc = model.encode(batch.get("speakers"), batch["texts"], batch["src_lens"], batch.get("em_hidden"),
                           batch.get("vq_tokens"), batch.get("vq_token_lens"))
        inputs, _, tgt_pad = model.frame(batch["mels"], batch["mel_lens"])
        weights: list[Tensor] = []
        model.decode(inputs, enc, tgt_pad, cross_weights=weights)
    finally:
        model.train(was_training)
    return [w.mean(dim=1) for w in weights]


def diagonality(attn: Tensor, src_lens: Tensor, tgt_lens: Tensor, band: float = 0.2) -> Tensor:
    """Share of attention mass within a band around the diagonal, per row.

    The diagonal runs from (step 0, text 0) to (last step, last text token); the band is
    ±max(2, ``band``·S) text tokens wide. A monotonic alignment whose pace varies somewhat scores
    near 1; attention spread over the whole text scores about the band's share of the text.

    Args:
        attn: (B, T, S) attention probabilities.  src_lens: (B,) S per row.  tgt_lens: (B,) T per row.
    Returns:
        (B,) float32 in [0, 1].
    """
    B, T, S = attn.shape
    t = torch.arange(T, device=attn.device, dtype=torch.float32)[None, :, None]
    k = torch.arange(S, device=attn.device, dtype=torch.float32)[None, None, :]
    s_len = src_lens.float()[:, None, None]
    t_len = tgt_lens.float()[:, None, None]
    centre = t * (s_len - 1) / (t_len - 1).clamp(min=1)
    width = torch.maximum(torch.full_like(s_len, 2.0), band * s_len)
    near = ((k - centre).abs() <= width) & (k < s_len)
    valid_t = (t < t_len).squeeze(-1)  # (B, T)
    mass = (attn.float() * near).sum(-1)  # (B, T)
    return (mass * valid_t).sum(-1) / valid_t.sum(-1).clamp(min=1)


def alignment_image(attn: Tensor, src_len: int, tgt_len: int) -> Tensor:
    """One utterance's map (T, S) -> (S, T) uint8 image: text upward, audio steps to the right.

    Each column is scaled by its maximum so a soft alignment stays visible.
    """
    a = attn[:tgt_len, :src_len].float().clamp(min=0)
    a = a / a.amax(dim=1, keepdim=True).clamp(min=1e-8)
    return (a.T.flip(0) * 255).round().to(torch.uint8)
