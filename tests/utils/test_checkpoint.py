"""Checkpoint files: atomic writes, rotation that keeps the best, safe loading, RNG round trips."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from utils import checkpoint as ck
from utils.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def test_save_and_load_round_trip_tensors_and_plain_values(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "step": 7, "cfg": {"a": [1, 2], "b": None}}
    save_checkpoint(state, tmp_path / "x.pt")
    back = load_checkpoint(tmp_path / "x.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["step"] == 7 and back["cfg"] == {"a": [1, 2], "b": None}


def test_a_crash_while_saving_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_000000001.pt"
    save_checkpoint({"step": 1}, path)

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # bytes reach the temporary file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt_000000001.pt"]


def test_directory_resolves_to_the_highest_step_not_the_newest_mtime(tmp_path):
    save_checkpoint({"step": 20}, tmp_path / "ckpt_000000020.pt")
    save_checkpoint({"step": 3}, tmp_path / "ckpt_000000003.pt")  # written later
    assert latest_checkpoint(tmp_path).endswith("ckpt_000000020.pt")
    assert load_checkpoint(tmp_path)["step"] == 20
    assert latest_checkpoint(tmp_path / "missing") is None


def test_missing_empty_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "ckpt_000000001.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="ckpt_000000001.pt"):
        load_checkpoint(bad)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(p)


def test_manager_keeps_last_n_plus_the_best_and_survives_restart(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: None, 5: 1.5}
    for step, vl in losses.items():
        m.save({"step": step}, step, val_loss=vl)
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("ckpt_"))
    assert names == ["ckpt_000000002.pt", "ckpt_000000004.pt", "ckpt_000000005.pt"]
    assert m.best_step == 2 and load_checkpoint(m.best_path)["step"] == 2
    # A new manager on the same directory (a resumed run) knows the best and still protects it.
    m2 = CheckpointManager(tmp_path, keep_last=2)
    assert (m2.best_step, m2.best_loss) == (2, 1.0)
    m2.save({"step": 6}, 6, val_loss=1.2)
    assert os.path.exists(tmp_path / "ckpt_000000002.pt")
    assert not os.path.exists(tmp_path / "ckpt_000000004.pt")


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's legacy state
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.randn(), torch.rand(3))
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert expected[0] == got[0] and expected[1] == got[1] and torch.equal(expected[2], got[2])
