"""Learning-rate schedules as pure functions of the optimizer step.

The multiplier applied to the base learning rate depends on the step only, so a resumed run gets
exactly the rate it would have had (the scheduler's state is just its step counter), warm-up never
restarts, and after ``total_steps`` the rate stays at its final value instead of rising again.

Step ``s`` is the number of optimizer updates already done (0 for the first update).

- ``warmup_cosine``: linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to
  ``min_lr_ratio`` at ``total_steps``.
- ``warmup_linear``: linear warm-up, then linear decay to ``min_lr_ratio`` at ``total_steps``.
- ``constant_with_warmup``: linear warm-up, then 1.
- ``noam`` (Vaswani et al. 2017), normalised to peak at 1:
  ``min((s+1)/warmup, sqrt(warmup/(s+1)))``; never below ``min_lr_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("warmup_cosine", "warmup_linear", "constant_with_warmup", "noam")


def _warmup(step: int, warmup_steps: int) -> float:
    # (step + 1) so the first update already has a non-zero rate and step warmup-1 reaches 1.
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """Fraction of the decay phase done, clamped to [0, 1] (no rise after the end)."""
    span = max(1, total_steps - warmup_steps)
    return min(1.0, max(0.0, (step - warmup_steps + 1) / span))


def lr_multiplier(step: int, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The learning-rate multiplier at optimizer step ``step``.

    Args:
        step: optimizer updates done before this one (>= 0).
        kind: one of :data:`SCHEDULES`.
        warmup_steps: length of the linear warm-up (0 = none).
        total_steps: step at which decaying schedules reach ``min_lr_ratio``.
        min_lr_ratio: floor of the decay, as a fraction of the base rate.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"scheduler.type must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    step = max(0, int(step))
    if kind == "noam":
        w = max(1, warmup_steps)
        s = step + 1
        return max(min_lr_ratio, min(s / w, math.sqrt(w / s)))
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    if kind == "constant_with_warmup":
        return 1.0
    p = _progress(step, warmup_steps, total_steps)
    if kind == "warmup_linear":
        decay = 1.0 - p
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` over :func:`lr_multiplier`; its ``state_dict`` (the step) restores it exactly."""
    fn: Callable[[int], float] = partial(
        lr_multiplier, kind=kind, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, fn)
