"""What a decode step chooses, and the knobs that decide it.

    params = SamplingParams(temperature=0.7, top_k=50, max_length=800)   # validated here, once
    generate(model, speakers, texts, src_lens, params=params)

:class:`SamplingParams` holds everything that decides *which* tokens come out (temperature,
filters, stopping, length bounds, how the attention is steered); how the decode runs (cache,
compilation, the random generator) stays with :func:`model.generation.generate`. The functions
below turn one step's logits into token ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor

from model.tracking import AlignSpec, TrackingParams

# --------------------------------------------------------------------------------------------
# The parameters of a decode
# --------------------------------------------------------------------------------------------


def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"generate: {name}={value!r} is not allowed; {name} must be {allowed}")


@dataclass(frozen=True)
class SamplingParams:
    """The parameters that decide what a decode generates; checked when built.

    Frozen and hashable, so a decode can key reusable state on it and nothing changes it midway.

    Args:
        max_length: most codec tokens per row; the loop never runs longer.
        min_length: EOS and the stop head are ignored before this many tokens.
        temperature: 0 = greedy (argmax); otherwise sampling at this temperature.
        top_k, top_p: sampling filters (0 / 1.0 = off); ignored when greedy.
        repetition_penalty: > 1 discourages codec tokens the row already produced (1 = off).
        gate_threshold: a stop-head model stops a row when sigmoid(stop logit) exceeds it.
        min_tokens_per_text_token, max_tokens_per_text_token: per-row length bounds relative to
            the text: a row cannot stop before floor(min·S_b) tokens and is cut at ceil(max·S_b),
            never beyond ``max_length``. None = no bound.
        attention_window: (back, forward) monotonic cross-attention window, or None (all text).
        tracking: alignment-tracked decoding (``model/tracking.py``), or None. Not together with
            ``attention_window``.
        record_alignment: record each step's attended position even without window or tracking.
        code_levels: the FSQ levels of the codec the model's tokens come from (e.g. ``(8, 5, 5,
            5)``), for expected-code decoding: a step that does not stop emits the code nearest the
            expected code (per FSQ dimension, the mean digit) under the step's filtered,
            temperature-scaled distribution over codec tokens, instead of a random draw. Neighbouring
            FSQ codes decode to similar frames, so the mean of a broad but well-centred
            distribution is a better guess than a sample from it. None = plain sampling.
    """

    max_length: int = 1000
    min_length: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    gate_threshold: float = 0.5
    min_tokens_per_text_token: Optional[float] = None
    max_tokens_per_text_token: Optional[float] = None
    attention_window: Optional[tuple[int, int]] = None
    tracking: Optional[TrackingParams] = None
    record_alignment: bool = False
    code_levels: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        self._check_lengths()
        self._check_sampling()
        # Normalised in place (a list from a config becomes a hashable tuple); frozen, hence
        # object.__setattr__.
        object.__setattr__(self, "attention_window", _check_window(self.attention_window))
        object.__setattr__(self, "record_alignment", bool(self.record_alignment))
        object.__setattr__(self, "code_levels", _check_levels(self.code_levels))
        if self.tracking is not None:
            self.tracking.check()
        _ = self.align  # AlignSpec refuses a window together with tracking, naming both

    def _check_sampling(self) -> None:
        if self.temperature < 0:
            raise _bad("temperature", self.temperature, ">= 0 (0 = greedy)")
        if self.top_k < 0:
            raise _bad("top_k", self.top_k, ">= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise _bad("top_p", self.top_p, "in (0, 1] (1 = off)")
        if self.repetition_penalty <= 0:
            raise _bad("repetition_penalty", self.repetition_penalty, "> 0 (1 = off)")
        if not 0.0 < self.gate_threshold < 1.0:
            raise _bad("gate_threshold", self.gate_threshold, "in (0, 1)")

    def _check_lengths(self) -> None:
        if self.max_length < 1:
            raise _bad("max_length", self.max_length, "an integer >= 1")
        if not 0 <= self.min_length <= self.max_length:
            raise _bad("min_length", self.min_length, f"in [0, max_length={self.max_length}]")
        lo, hi = self.min_tokens_per_text_token, self.max_tokens_per_text_token
        if lo is not None and lo < 0:
            raise ValueError(f"generate: min_tokens_per_text_token={lo!r} is not allowed; it must be >= 0 or None")
        if hi is not None and (hi <= 0 or (lo is not None and hi <= lo)):
            raise ValueError(f"generate: max_tokens_per_text_token={hi!r} is not allowed; it must be > 0, "
                             f"> the minimum ({lo}), or None")

    def check_vocab(self, n_vocab: int, codebook_size: int) -> None:
        """``top_k`` against the model's vocabulary and ``code_levels`` against its codebook (the
        checks that need the model)."""
        if self.top_k > n_vocab:
            raise _bad("top_k", self.top_k, f"in [0, {n_vocab}] (0 = off)")
        if self.code_levels is not None and math.prod(self.code_levels) != codebook_size:
            raise _bad("code_levels", self.code_levels,
                           f"FSQ levels whose product is the model's codebook_size ({codebook_size})")

    @classmethod
    def names(cls) -> frozenset[str]:
        """The keyword arguments :func:`model.generation.generate` forwards here."""
        return frozenset(f.name for f in fields(cls))

    @property
    def align(self) -> AlignSpec:
        """What the decode does with its cross-attention (window, tracking, or only recording)."""
        return AlignSpec(self.attention_window, self.tracking, self.record_alignment)

    def row_bounds(self, src_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row (min, max) codec tokens, on ``src_lens``' device so the loop never syncs on them.

        Args:
            src_lens: (B,) text lengths.
        Returns:
            row_min, row_max: (B,) long, with row_min <= row_max <= ``max_length``.
        """
        lo, hi = self.min_tokens_per_text_token, self.max_tokens_per_text_token
        row_min = torch.full_like(src_lens, self.min_length, dtype=torch.long)
        row_max = torch.full_like(src_lens, self.max_length, dtype=torch.long)
        if lo is not None:
            row_min = torch.maximum(row_min, torch.floor(lo * src_lens.float()).long()).clamp(max=self.max_length)
        if hi is not None:
            row_max = torch.minimum(row_max, torch.ceil(hi * src_lens.float()).long().clamp(min=1))
            row_min = torch.minimum(row_min, row_max)
        return row_min, row_max


def _check_levels(levels: Optional[Sequence[int]]) -> Optional[tuple[int, ...]]:
    if levels is None:
        return None
    ok = (not isinstance(levels, (str, bytes)) and len(levels) > 0
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in levels))
    if not ok:
        raise _bad("code_levels", levels, "None or the codec's FSQ levels, integers >= 2 (e.g. (8, 5, 5, 5))")
    return tuple(int(v) for v in levels)


def _check_window(window: Optional[Sequence[int]]) -> Optional[tuple[int, int]]:
    if window is None:
        return None
    ok = (not isinstance(window, (str, bytes)) and len(window) == 2
          and all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in window))
    if not ok:
        raise ValueError(f"generate: attention_window={window!r} is not allowed; it must be None or two "
                         f"integers >= 0, (back, forward)")
    return int(window[0]), int(window[1])


# --------------------------------------------------------------------------------------------
# Logit processing and sampling
# --------------------------------------------------------------------------------------------


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty (Keskar et al. 2019) on tokens a row already produced.

    Args:
        logits: (B, V) float.  seen: (B, V) bool, True for tokens already generated by the row.
        penalty: > 1 discourages repeats: positive logits are divided by it, negative multiplied.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k_top_p(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf.

    Args:
        logits: (B, V) float, already divided by the temperature.
        top_k: keep the k highest (0 = off).  top_p: keep the smallest set of tokens whose
            probability reaches ``top_p`` (1.0 = off); the most likely token is always kept.
    Returns:
        (B, V) filtered logits.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (so the first one stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(
    logits: Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: Optional[torch.Generator],
) -> Tensor:
    """(B, V) processed logits -> (B,) chosen ids: argmax when ``temperature == 0``, else sampled.

    Sampling uses the exponential race: argmax(p / E) with E ~ Exp(1) i.i.d. picks token i with
    probability p_i, like ``torch.multinomial``, but without the host synchronisation that
    ``multinomial`` makes on CUDA, so a step never waits for the device.
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = filter_top_k_top_p(logits / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


class CodeGrid:
    """The FSQ grid behind the codec tokens, numbered as the pre-encoder numbers it
    (``model.preencoder.FSQ``: its ``indices_to_codes`` and ``codes_to_indices``).

    Args:
        levels: FSQ levels per dimension.  device: where the tables live.
    """

    def __init__(self, levels: Sequence[int], device: torch.device) -> None:
        from model.preencoder import FSQ  # the codec's own numbering, not a copy of it

        self.fsq = FSQ(list(levels)).to(device)
        self.size = self.fsq.codebook_size
        self.codes = self.fsq.indices_to_codes(torch.arange(self.size, device=device))  # (K, D) integer-valued
        self.low, self.high = self.codes.amin(0), self.codes.amax(0)  # (D,) each dimension's range

    def expected(self, scores: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
        """(B, V) processed logits (codec tokens first) -> (B,) the code nearest the expected code.

        The distribution is the one :func:`choose_tokens` samples from, restricted to codec tokens
        (greedy, ``temperature == 0``, is its argmax).
        """
        codes = scores[:, : self.size]
        if temperature == 0.0:
            return codes.argmax(dim=-1)
        probs = filter_top_k_top_p(codes / temperature, top_k, top_p).softmax(dim=-1)  # (B, K)
        mean = probs @ self.codes  # (B, D) the expected code, per dimension
        return self.fsq.codes_to_indices(torch.minimum(torch.maximum(mean, self.low), self.high))
