"""The bucketed batch sampler: low padding, token budget, determinism, distributed split, resume."""

import random

from data.sampler import BucketBatchSampler, padding_fraction


def _lengths(n=400, seed=0):
    r = random.Random(seed)
    return [r.randint(20, 400) for _ in range(n)]


def test_every_index_once_and_much_less_padding_than_random_batches():
    lengths = _lengths()
    s = BucketBatchSampler(lengths, batch_size=16, seed=3)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    r = list(range(len(lengths)))
    random.Random(0).shuffle(r)
    random_pad = padding_fraction(lengths, [r[i : i + 16] for i in range(0, len(r), 16)])
    assert padding_fraction(lengths, batches) < 0.05 < 0.3 < random_pad


def test_token_budget_bounds_padded_tokens_per_batch():
    lengths = _lengths() + [5000]  # one clip longer than the budget gets a batch of its own
    s = BucketBatchSampler(lengths, batch_size=64, max_tokens=2000, seed=1)
    for b in s:
        assert len(b) * max(lengths[i] + 1 for i in b) <= 2000 or len(b) == 1


def test_deterministic_per_seed_and_epoch_and_shuffled_across_epochs():
    lengths = _lengths()
    a, b = BucketBatchSampler(lengths, 8, seed=5), BucketBatchSampler(lengths, 8, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_ranks_split_the_global_batches_and_position_resumes_with_another_world_size():
    lengths = _lengths(101)
    single = BucketBatchSampler(lengths, 4, seed=2)
    glob = single.global_batches()
    ranks = [list(BucketBatchSampler(lengths, 4, seed=2, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # equal step counts for DDP
    assert {tuple(b) for r in ranks for b in r} == {tuple(b) for b in glob}
    # Two ranks consumed 3 batches each (6 global); one process picks up exactly after them.
    single.set_position(6)
    assert list(single) == glob[6:]
    two = [BucketBatchSampler(lengths, 4, seed=2, num_replicas=2, rank=r) for r in range(2)]
    consumed = [list(t)[:3] for t in two]
    assert sorted(map(tuple, consumed[0] + consumed[1])) == sorted(map(tuple, glob[:6]))
