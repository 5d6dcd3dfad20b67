"""bench/learn_alignment.py: the learning rate warms up, then decays over the run's steps or minutes."""

import dataclasses
import importlib.util
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("learn_alignment", os.path.join(ROOT, "bench", "learn_alignment.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up by name
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def _args(bench, schedule, max_steps=1600, minutes=60.0):
    from utils.config.train import AlignmentConfig

    return bench.RunArgs("x", "config/model.yaml", [], True, False, minutes, max_steps, 1, 0, 32, 1e-3, 250,
                         300, 300, 1.0, AlignmentConfig(), schedule)


def test_cosine_warms_up_then_decays_to_zero_at_the_last_step(bench):
    a = _args(bench, "warmup_cosine")
    assert bench.lr_factor(a, 0, 0.0) == pytest.approx(1 / bench.WARMUP, rel=1e-3)
    assert bench.lr_factor(a, bench.WARMUP - 1, 0.0) == pytest.approx(math.cos(math.pi * 0.124 / 2) ** 2, abs=1e-3)
    assert bench.lr_factor(a, 800, 0.0) == pytest.approx(0.5, abs=5e-3)
    assert bench.lr_factor(a, 1600, 0.0) == 0.0
    factors = [bench.lr_factor(a, s, 0.0) for s in range(bench.WARMUP, 1601, 50)]
    assert all(x >= y for x, y in zip(factors, factors[1:]))  # never rises after the warm-up


def test_a_run_cut_by_minutes_decays_by_the_time_spent(bench):
    a = _args(bench, "warmup_cosine", max_steps=10**9, minutes=10.0)
    assert bench.lr_factor(a, 300, 300.0) == pytest.approx(0.5, abs=5e-3)  # half the minutes, half the decay
    assert bench.lr_factor(a, 300, 600.0) == 0.0
    # whichever limit is nearer sets the progress
    b = dataclasses.replace(a, max_steps=400)
    assert bench.lr_factor(b, 300, 60.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)), abs=5e-3)


def test_the_constant_schedule_is_the_old_warm_up_lambda(bench):
    a = _args(bench, "constant_with_warmup")
    for s in (0, 57, 199, 200, 1599):
        assert bench.lr_factor(a, s, 123.0) == min(1.0, (s + 1) / 200)
