"""Alignment-tracked decoding: follow the text position the decoder attends to, and steer by it.

An autoregressive TTS decoder fails in three ways that the attention shows before the audio does:
it stops before the end of the text (words dropped), its attention sticks on one symbol (a word
stretched or repeated), or it jumps back (words repeated). The decode loop can watch for all three
because the cross-attention of every step says where in the text the decoder is.

:class:`AlignState` keeps, per row, the text position ``pos`` the decoder has reached and how many
steps it has stayed there. Each step (``Echolancer.decode_step`` and the uncached reference in
``model/generation.py`` run the same code):

1. *Steer.* With tracking on, the step's cross-attention scores get a prior around ``pos``: no
   change from ``back`` positions behind to ``forward`` ahead, and −``slope`` nats per position
   beyond that band. It is a bias, not a hard window: the decoder can still look anywhere when the
   evidence is strong, but is held to the neighbourhood of where it is.
2. *Follow.* After the step, ``pos`` moves to the peak of the step's attention (averaged over
   layers and heads), never back and at most ``max_jump`` positions forward per step.
3. *Unstick.* A row that has stayed at one position for ``stuck_steps`` steps is pushed on by one.
4. *No early stop.* A row may choose EOS only once ``pos`` is within ``end_slack`` of its last
   symbol (the generation loop asks :meth:`AlignState.may_stop`).

The thresholds come from the training data (:func:`tracking_params`): ``max_jump`` from the fewest
audio tokens per text token seen, ``stuck_steps`` from the most (a symbol that lasts several times
the slowest utterance's average is stuck, not slow).

The older monotonic *window* (``generation.attention_window``, :func:`model.alignment.window_mask`)
is the hard-mask variant: each step sees only [pos − back, pos + forward]. Both keep their state
here, in buffers updated in place, so a captured CUDA graph replays them.

The peaks are also what :func:`alignment_report` scores: the share of the text ever attended
(coverage) and the steps that jump back two or more symbols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from model.alignment import window_mask, window_position


@dataclass(frozen=True)
class TrackingParams:
    """The numbers of alignment-tracked decoding (see the module docstring).

    Args:
        back, forward: the band around ``pos`` (text positions) where the prior is 0.
        slope: nats subtracted per position outside the band.
        max_jump: most positions ``pos`` may advance in one step.
        stuck_steps: steps at one position before ``pos`` is pushed on by one.
        end_slack: EOS is allowed once ``pos >= last symbol - end_slack``.
    """

    back: int = 1
    forward: int = 3
    slope: float = 2.0
    max_jump: int = 1
    stuck_steps: int = 12
    end_slack: int = 1

    def check(self) -> None:
        bad = [k for k in ("back", "forward", "end_slack") if getattr(self, k) < 0]
        bad += [k for k in ("max_jump", "stuck_steps") if getattr(self, k) < 1]
        bad += ["slope"] if not self.slope >= 0 else []
        if bad:
            raise ValueError(f"tracking: {', '.join(bad)} out of range in {self}; back, forward, end_slack >= 0, "
                             f"max_jump, stuck_steps >= 1, slope >= 0")


def tracking_params(stats: Optional[dict], back: int = 1, forward: int = 3, slope: float = 2.0,
                    stuck_factor: float = 3.0, end_slack: int = 1) -> TrackingParams:
    """Thresholds from the training data's audio-per-text ratios (``length_ratio_stats``).

    ``max_jump`` = ceil(1 / fewest tokens per symbol) (a text read faster than one symbol a step
    needs longer jumps), ``stuck_steps`` = ceil(``stuck_factor`` × most tokens per symbol). Without
    statistics: one position a step, stuck after 12 steps.
    """
    max_jump, stuck = 1, 12
    if stats:
        lo, hi = stats["min_tokens_per_text_token"], stats["max_tokens_per_text_token"]
        max_jump = max(1, math.ceil(1.0 / max(lo, 1e-3)))
        stuck = max(2, math.ceil(stuck_factor * hi))
    p = TrackingParams(back, forward, slope, max_jump, stuck, end_slack)
    p.check()
    return p


@dataclass(frozen=True)
class AlignSpec:
    """What a decode does with its attention: a hard window, tracking, or only recording peaks.

    Hashable: it is part of the key of a reusable (graph-captured) decode state.
    """

    window: Optional[tuple[int, int]] = None
    tracking: Optional[TrackingParams] = None
    record: bool = False

    def __post_init__(self) -> None:
        if self.window is not None and self.tracking is not None:
            raise ValueError("generate: attention_window and tracking are two ways to steer the attention; "
                             "choose one")

    @property
    def active(self) -> bool:
        return self.window is not None or self.tracking is not None or self.record


def tracking_bias(pos: Tensor, S: int, p: TrackingParams) -> Tensor:
    """The prior added to cross-attention scores around ``pos``.

    Args:
        pos: (B, ...) long positions.  S: padded text length.
    Returns:
        (B, ..., S) float32: 0 within [pos − back, pos + forward], −slope per position beyond.
    """
    d = torch.arange(S, device=pos.device)[None] - pos[..., None]
    beyond = (-p.back - d).clamp(min=0) + (d - p.forward).clamp(min=0)
    return -p.slope * beyond.float()


def steer(pos: Tensor, valid: Tensor, spec: AlignSpec, dtype: torch.dtype) -> Tensor:
    """The cross-attention mask of steps at ``pos``.

    Args:
        pos: (B, T) long, each step's position.  valid: (B, 1, S) bool, True = real text.
        dtype: the attention's compute dtype (a float mask is made in it).
    Returns:
        (B, T, S): bool (window, or nothing to steer) or float with −inf at padded text (tracking).
    """
    S = valid.shape[-1]
    if spec.window is not None:
        return valid & window_mask(pos, S, spec.window)
    if spec.tracking is not None:
        return tracking_bias(pos, S, spec.tracking).to(dtype).masked_fill(~valid, float("-inf"))
    return valid.expand(-1, pos.shape[1], -1)


class AlignState:
    """Per-row alignment state of one decode: static (B,) buffers, updated in place.

    Args:
        spec: what to do (see :class:`AlignSpec`).  batch_size: B.  device: where the buffers live.
    """

    def __init__(self, spec: AlignSpec, batch_size: int, device: torch.device) -> None:
        self.spec = spec
        z = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.pos, self.stay, self.peak, self.last = z.clone(), z.clone(), z.clone(), z.clone()

    def load(self, src_lens: Tensor) -> AlignState:
        """Start a new batch of texts (the same buffers)."""
        self.pos.zero_()
        self.stay.zero_()
        self.peak.zero_()
        self.last.copy_((src_lens - 1).clamp(min=0))
        return self

    def step_mask(self, valid: Tensor, dtype: torch.dtype) -> Tensor:
        """The mask of the current step: (B, 1, 1, S) (``valid``: (B, 1, 1, S) bool)."""
        return steer(self.pos[:, None], valid[:, 0], self.spec, dtype)[:, None]

    def update(self, attn: Tensor) -> None:
        """Move on after a step whose attention (B, S), averaged over layers and heads, is ``attn``."""
        peak = attn.argmax(dim=-1)
        self.peak.copy_(peak)
        if self.spec.window is not None:
            self.pos.copy_(window_position(self.pos, [attn[:, None]]))
            return
        p = self.spec.tracking
        if p is None:
            return
        target = torch.minimum(torch.maximum(peak, self.pos), self.pos + p.max_jump)
        stay = torch.where(target > self.pos, 0, self.stay + 1)
        push = stay >= p.stuck_steps
        target = torch.where(push, self.pos + 1, target).minimum(self.last)
        self.stay.copy_(torch.where(push, 0, stay))
        self.pos.copy_(target)

    def may_stop(self) -> Optional[Tensor]:
        """(B,) bool: rows whose attention has reached the end of their text (tracking), else None."""
        p = self.spec.tracking
        if p is None:
            return None
        return self.pos >= self.last - p.end_slack


def mean_attention(weights: list[Tensor]) -> Tensor:
    """Each layer's (B, H, T, S) probabilities, last step, averaged over layers and heads: (B, S)."""
    return torch.stack([w[:, :, -1].float().mean(dim=1) for w in weights]).mean(dim=0)


def alignment_report(peaks: Tensor, steps: int, text_len: int) -> dict[str, float]:
    """How one row's attention moved through its text during free decoding.

    Args:
        peaks: (T,) long, the attended position of each step.  steps: the row's steps (its tokens,
            plus the stopping step when it stopped).  text_len: its symbols.
    Returns:
        ``coverage``: share of the symbols that were ever a step's peak; ``backward_jumps``: steps
        whose peak is two or more symbols behind the previous step's; ``end``: whether the last
        symbol or the one before it was reached.
    """
    p = peaks[:steps].long()
    if p.numel() == 0 or text_len <= 0:
        return {"coverage": 0.0, "backward_jumps": 0, "end": False}
    seen = torch.zeros(text_len, dtype=torch.bool)
    seen[p.clamp(0, text_len - 1)] = True
    back = int(((p[1:] - p[:-1]) <= -2).sum()) if p.numel() > 1 else 0
    return {"coverage": float(seen.float().mean()), "backward_jumps": back, "end": bool(p.max() >= text_len - 2)}
