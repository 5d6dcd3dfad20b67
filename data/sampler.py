"""A length-bucketed batch sampler, distributed-aware and resumable mid-epoch.

Per epoch (deterministic for ``(seed, epoch)``):
1. shuffle all indices, cut them into pools of ``pool_batches * batch_size`` utterances;
2. sort each pool by audio length and cut it into batches of similar length, each holding at most
   ``batch_size`` utterances and, with ``max_tokens``, at most ``max_tokens`` padded audio tokens
   (``n * longest``), so a few long clips cannot cause out-of-memory;
3. shuffle the order of the batches.

This *global* list of batches does not depend on the number of processes. Rank ``r`` of ``W`` takes
batches ``r, r + W, ...`` (the list is wrapped around to a multiple of ``W`` so every rank does the
same number of steps). The resume position is the number of global batches already consumed
(:meth:`BucketBatchSampler.set_position`), so a run can resume with a different world size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Optional

import torch
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices of similar length.

    Args:
        lengths: per-utterance lengths used for bucketing and the token budget (audio tokens).
        batch_size: maximum utterances per batch.
        max_tokens: optional budget of padded tokens per batch (``len(batch) * max(length + 1)``;
            the +1 is the EOS target). A single utterance above the budget still forms its own batch.
        shuffle: False gives a fixed length-sorted order (validation).
        seed: base seed; the epoch is added to it.
        num_replicas, rank: distributed split (defaults: one process).
        pool_batches: batches per sorting pool; larger = less padding, less randomness.
        drop_last: drop the final partial batch of each pool.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        max_tokens: Optional[int] = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pool_batches: int = 50,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or null, got {max_tokens}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, {num_replicas})")
        self.lengths = [int(x) for x in lengths]
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.pool_batches = pool_batches
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0  # global batches of this epoch already consumed

    # ---- state ---------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; resets the position to its start."""
        self.epoch = epoch
        self.start = 0

    def set_position(self, consumed_global_batches: int) -> None:
        """Skip the first ``consumed_global_batches`` batches of the epoch's global list."""
        self.start = int(consumed_global_batches)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    # ---- batches -------------------------------------------------------------------------------

    def _cut(self, pool: list[int]) -> list[list[int]]:
        batches, cur, longest = [], [], 0
        for i in pool:
            n_tok = self.lengths[i] + 1
            new_longest = max(longest, n_tok)
            over_budget = self.max_tokens is not None and cur and (len(cur) + 1) * new_longest > self.max_tokens
            if len(cur) == self.batch_size or over_budget:
                batches.append(cur)
                cur, new_longest = [], n_tok
            cur.append(i)
            longest = new_longest
        if cur and not (self.drop_last and len(cur) < self.batch_size):
            batches.append(cur)
        return batches

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, in order, for every rank together."""
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        pool_size = self.pool_batches * self.batch_size if self.shuffle else n
        batches: list[list[int]] = []
        for p in range(0, n, pool_size):
            # Stable sort after a shuffle: equal lengths stay in random order.
            pool = sorted(order[p : p + pool_size], key=lambda i: self.lengths[i])
            batches.extend(self._cut(pool))
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        remaining = self.global_batches()[self.start :]
        if not remaining:
            return []
        W = self.num_replicas
        total = -(-len(remaining) // W) * W
        # Wrap around so every rank gets the same number of batches (DDP needs equal step counts).
        remaining = remaining + [remaining[i % len(remaining)] for i in range(total - len(remaining))]
        return remaining[self.rank :: W]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._rank_batches()

    def __len__(self) -> int:
        return len(self._rank_batches())

    def epoch_global_len(self) -> int:
        """Global batches in the current epoch (before the distributed split)."""
        return len(self.global_batches())


def padding_fraction(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Fraction of the padded audio positions (incl. the EOS target) that are padding."""
    total = real = 0
    for b in batches:
        longest = max(lengths[i] + 1 for i in b)
        total += longest * len(b)
        real += sum(lengths[i] + 1 for i in b)
    return 1.0 - real / max(total, 1)
