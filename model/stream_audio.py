"""Audio a chunk at a time from a growing sequence of codec tokens, equal to decoding them at once.

    reach = measure_reach(render, codebook_size, samples_per_token)   # the render's receptive field
    chunker = AudioChunker(render, reach, samples_per_token)
    audio = chunker.push(new_tokens)            # float32 samples that are final, possibly empty
    audio = chunker.finish(pad_tokens)          # the rest

Plain torch and numpy (no model classes): ``pipeline.Synthesizer.stream`` and the deployed chain
(``model/deploy.py``) both use it. Why the joins are exact is in ``model/streaming.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

# render(tokens (1, W) long, n_valid) -> (W * per_token, ...) float: a span decoded on its own;
# tokens from n_valid on are padding (they stand for the framing one-shot synthesis adds).
Render = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class Reach:
    """How far a decoded token's output looks: ``left`` tokens before it, ``right`` after (>= 0)."""

    left: int
    right: int


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


class AudioChunker:
    """A growing token sequence -> audio chunks (see the module docstring).

    Args:
        render: decodes a token span on its own (:data:`Render`), returning ``per_token`` output
            items (samples) per token along dim 0.
        reach: the render's receptive field in tokens (``holdback`` defaults to ``reach.right``,
            left context to ``reach.left + context``).
        per_token: output samples per token (pre-encoder downsample x vocoder hop).
        context: extra left tokens rendered before each chunk (Griffin-Lim: a start for its phase).
        overlap: tokens crossfaded between consecutive renders (0 = trim only: exact joins).
    """

    def __init__(self, render: Render, reach: Reach, per_token: int, context: int = 0, overlap: int = 0) -> None:
        if min(reach.left, reach.right, context, overlap) < 0 or per_token < 1:
            raise ValueError(f"AudioChunker: bad settings reach={reach}, per_token={per_token}, "
                             f"context={context}, overlap={overlap}")
        self.render, self.reach, self.per_token = render, reach, per_token
        self.context, self.overlap = reach.left + context, overlap
        self.tokens = torch.zeros(0, dtype=torch.long)
        self.done = 0  # tokens whose samples have been handed out
        self.tail: Optional[np.ndarray] = None  # the last render's samples of the overlap region
        self.renders = 0

    def push(self, new_tokens: Tensor) -> np.ndarray:
        """Add tokens; return the float32 samples that are now final (possibly none)."""
        self.tokens = torch.cat([self.tokens, new_tokens.reshape(-1).long().cpu()])
        upto = self.tokens.numel() - self.reach.right  # later tokens' samples still see the unknown future
        if upto - self.done <= self.overlap:
            return np.zeros(0, dtype=np.float32)
        return self._emit(upto, pad_tokens=0, final=False)

    def finish(self, pad_tokens: int = 0) -> np.ndarray:
        """The utterance has ended: the rest of its samples.

        Args:
            pad_tokens: padding tokens after the last one that one-shot synthesis renders with the
                utterance (batch framing: the stopping step's column), so the stream sees them too.
        """
        if self.tokens.numel() == self.done and self.tail is None:
            return np.zeros(0, dtype=np.float32)
        return self._emit(self.tokens.numel(), pad_tokens, final=True)

    def _emit(self, upto: int, pad_tokens: int, final: bool) -> np.ndarray:
        start = max(0, self.done - self.context)
        n = self.tokens.numel()
        span = torch.cat([self.tokens[start:], torch.zeros(pad_tokens, dtype=torch.long)])[None]  # (1, W)
        wav = self.render(span, n - start)
        self.renders += 1
        pt = self.per_token
        seg = np.asarray(wav[(self.done - start) * pt : (upto - start) * pt], dtype=np.float32).copy()
        if self.tail is not None:  # blend the region both renders cover
            k = min(len(self.tail), len(seg))
            fade = np.linspace(0.0, 1.0, k + 2, dtype=np.float32)[1:-1]  # both ends strictly inside (0, 1)
            seg[:k] = self.tail[:k] * (1.0 - fade) + seg[:k] * fade
            self.tail = None
        if final or self.overlap == 0:
            self.done = upto
            return seg
        keep = self.overlap * pt
        self.tail = seg[-keep:].copy()
        self.done = upto - self.overlap
        return seg[:-keep]


def measure_reach(render: Render, codebook_size: int, per_token: int, exact: bool = True, probe_tokens: int = 64,
                  max_tokens: int = 4096) -> Reach:
    """The receptive field of ``render`` in tokens, measured on the modules themselves.

    One token in the middle of a random probe is changed; every output sample that moves (at all
    on the CPU, beyond float rounding elsewhere) depends on it. Samples that move ``d`` tokens to its right depend on tokens
    ``d`` to their left (``Reach.left``), and the other way round. A probe whose edges move is
    doubled until the change dies out inside it. One token of margin is added on each side: a
    tap whose contribution happens to round away must not shorten the context.

    Args:
        render: as :class:`AudioChunker` takes it.  codebook_size: token ids are in [0, this).
        per_token: output samples per token.
        exact: the render computes on the CPU (any change counts); False on a GPU (a change must
            exceed 1e-6 of the output's scale).  probe_tokens: first probe length.
        max_tokens: longest probe before giving up (a render that is not local, e.g. Griffin-Lim).
    Raises:
        ValueError: the render's reach is longer than ``max_tokens`` / 2.
    """
    g = torch.Generator().manual_seed(0)
    n = probe_tokens
    while n <= max_tokens:
        probe = torch.randint(0, codebook_size, (1, n), generator=g)
        c = n // 2
        base = render(probe, n).float()
        lo, hi = n, -1
        for shift in (1, codebook_size // 2):  # two different changes: one may leave some tap unmoved
            other = probe.clone()
            other[0, c] = (other[0, c] + shift) % codebook_size
            diff = (render(other, n).float() - base).abs().reshape(n * per_token, -1).amax(dim=1)
            # On the CPU a sample whose inputs did not change is computed bit for bit as before, so
            # any change at all marks a dependency: the exact receptive field. GPU kernels may pick
            # algorithms whose rounding spreads, so there a change must stand above float noise.
            tol = 0.0 if exact else 1e-6 * float(base.abs().max())
            moved = torch.nonzero(diff > tol).flatten()
            if moved.numel():
                lo, hi = min(lo, int(moved[0]) // per_token), max(hi, int(moved[-1]) // per_token)
        if hi < 0:
            return Reach(1, 1)  # nothing depends on a neighbour (or on the token at all)
        if lo > 0 and hi < n - 1:
            return Reach(left=max(0, hi - c) + 1, right=max(0, c - lo) + 1)
        n *= 2
    raise ValueError(f"measure_reach: the output still changes {max_tokens // 2} tokens away from a changed "
                     "token; this decoder is not local enough to stream exactly")
