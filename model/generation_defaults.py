"""The defaults a model generates with, from its config and the statistics of its training data.

    stats = length_ratio_stats(train_set.text_lens, train_set.audio_lens)    # saved in checkpoints
    configure_generation(model, model_cfg.generation, stats)
    model.infer(...)   # length bounds, attention window and tracking from the two

:func:`configure_generation` is the one place that sets ``model.length_bounds``,
``model.attention_window``, ``model.tracking`` and ``model.length_stats``; training (for its test
interval) and loading a checkpoint both call it, so both generate the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import torch

from model.tracking import tracking_params

if TYPE_CHECKING:  # annotations only
    from model.echolancer import Echolancer
    from utils.config.model import GenerationConfig


def length_ratio_stats(text_lens: Sequence[int], audio_lens: Sequence[int]) -> dict[str, float]:
    """The training data's audio-per-text ratios, which training saves in checkpoints.

    Args:
        text_lens, audio_lens: per-utterance text tokens and codec tokens.
    Returns:
        ``{"min_tokens_per_text_token", "max_tokens_per_text_token", "utterances"}``.
    """
    # Vectorised: a packed corpus hands over arrays of a million lengths at start-up.
    t = torch.as_tensor(text_lens, dtype=torch.float64)
    a = torch.as_tensor(audio_lens, dtype=torch.float64)
    ratios = (a / t)[t > 0]
    if ratios.numel() == 0:
        raise ValueError("length_ratio_stats: no utterance with text")
    return {"min_tokens_per_text_token": float(ratios.min()), "max_tokens_per_text_token": float(ratios.max()),
            "utterances": float(ratios.numel())}


def length_bounds(
    min_ratio: Optional[float], max_ratio: Optional[float], margin: float, stats: Optional[dict]
) -> tuple[Optional[float], Optional[float]]:
    """The ``min/max_tokens_per_text_token`` to generate with.

    An explicit value (the model config's ``generation`` section) wins; a missing one comes from
    the training data's ``stats`` widened by ``margin`` (min / margin, max x margin); without
    stats it stays None (no bound).
    """
    if stats:
        if min_ratio is None:
            min_ratio = stats["min_tokens_per_text_token"] / margin
        if max_ratio is None:
            max_ratio = stats["max_tokens_per_text_token"] * margin
    return min_ratio, max_ratio


def configure_generation(model: Echolancer, gen: GenerationConfig, stats: Optional[dict]) -> None:
    """Set the defaults :meth:`Echolancer.infer` generates with.

    Args:
        model: the Echolancer to configure (its attributes are set in place).
        gen: the model config's ``generation`` section.
        stats: the training data's ratios (:func:`length_ratio_stats`), or None.
    """
    model.length_stats = stats
    model.length_bounds = length_bounds(gen.min_tokens_per_text_token, gen.max_tokens_per_text_token,
                                        gen.length_margin, stats)
    model.attention_window = tuple(gen.attention_window) if gen.attention_window is not None else None
    t = gen.tracking
    model.tracking = (tracking_params(stats, t.back, t.forward, t.slope, t.stuck_factor, t.end_slack)
                      if t.enabled else None)
