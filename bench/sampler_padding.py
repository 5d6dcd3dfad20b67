"""Padding of the length-bucketed batch sampler against random batches, on dummy data.

    python bench/sampler_padding.py                                  # 2000 dummy utterances, batch 16
    python bench/sampler_padding.py --n 5000 --batch_size 32 --max_tokens 12000

Padding fraction = padded audio positions / all positions of the padded batches (the EOS target
counts as a real position). Lengths follow ``data/dummy.py`` (about 4 codec tokens per character,
texts of 5 to 200 characters); no files are written.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.sampler import BucketBatchSampler, padding_fraction  # noqa: E402


def dummy_lengths(n: int, seed: int) -> list[int]:
    """Audio lengths distributed like ``create_dummy_data_files`` (text 5..200 chars, x4 +-25 %)."""
    r = random.Random(seed)
    return [max(1, int(r.randint(5, 200) * 4.0 * (0.75 + 0.5 * r.random()))) for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_tokens", type=int, default=None)
    p.add_argument("--pool_batches", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    lengths = dummy_lengths(args.n, args.seed)
    order = list(range(args.n))
    random.Random(args.seed).shuffle(order)
    rand = [order[i : i + args.batch_size] for i in range(0, args.n, args.batch_size)]
    bucketed = BucketBatchSampler(lengths, args.batch_size, args.max_tokens, seed=args.seed,
                                  pool_batches=args.pool_batches).global_batches()
    print(f"{args.n} utterances, audio length {min(lengths)}..{max(lengths)} tokens, batch_size {args.batch_size}, "
          f"max_tokens {args.max_tokens}")
    print(f"random batches   : {len(rand):5d} batches, padding {padding_fraction(lengths, rand):6.1%}")
    print(f"bucketed sampler : {len(bucketed):5d} batches, padding {padding_fraction(lengths, bucketed):6.1%}, "
          f"largest batch {max(len(b) * max(lengths[i] + 1 for i in b) for b in bucketed)} padded tokens")


if __name__ == "__main__":
    main()
