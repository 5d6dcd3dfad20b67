"""The W&B wrapper: offline runs under output_dir, read back; one row per step; disabled ranks."""

import os

import numpy as np
import pytest

from utils.logger import Logger, find_run_dir, read_offline_history


def test_offline_run_writes_under_output_dir_and_metrics_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = Logger(str(tmp_path), config={"train": {"lr": 1.0e-3}})
    lg.log({"train/loss": 2.5}, step=1)
    lg.log({"train/lr": 0.1}, step=1)  # same step: merged into one row
    lg.log({"train/loss": 2.0}, step=2)
    lg.log_audio("test/audio", np.zeros(2205, np.float32), 22050, step=2)
    lg.finish()
    run_dir = find_run_dir(str(tmp_path))
    assert run_dir.startswith(str(tmp_path / "wandb"))
    rows = read_offline_history(run_dir)
    assert [r["_step"] for r in rows] == [1, 2]
    assert rows[0]["train/loss"] == 2.5 and rows[0]["train/lr"] == 0.1
    assert rows[1]["train/loss"] == 2.0 and rows[1]["test/audio/_type"] == "audio-file"


def test_an_earlier_step_is_never_logged_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = Logger(str(tmp_path))
    lg.log({"a": 1.0}, step=5)
    lg.log({"a": 2.0}, step=6)
    with pytest.warns(UserWarning, match="already written"):
        lg.log({"a": 3.0}, step=5)
    lg.finish()
    rows = read_offline_history(find_run_dir(str(tmp_path)))
    assert [(r["_step"], r["a"]) for r in rows] == [(5, 1.0), (6, 2.0)]


def test_disabled_logger_and_disabled_mode_write_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    lg = Logger(str(tmp_path / "rank1"), enabled=False)
    lg.log({"a": 1.0}, 1)
    lg.finish()
    assert not os.path.exists(tmp_path / "rank1")
    lg2 = Logger(str(tmp_path / "off"), mode="disabled")
    lg2.log({"a": 1.0}, 1)
    assert lg2.run_dir is None
    lg2.finish()
    assert not os.path.exists(tmp_path / "off" / "wandb")


def test_environment_mode_wins_and_bad_modes_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert Logger(str(tmp_path), mode="online").mode == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="online, offline, disabled"):
        Logger(str(tmp_path))


def test_a_new_logger_gets_its_own_run_while_another_is_unfinished(tmp_path, monkeypatch):
    # Before: W&B's default returned the still-open run, so the second Logger wrote into the first
    # run's folder and its own folder stayed without a transaction log.
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = Logger(str(tmp_path / "first"))
    first.log({"a": 1.0}, step=1)
    second = Logger(str(tmp_path / "second"))
    second.log({"b": 2.0}, step=3)
    second.finish()
    rows = read_offline_history(find_run_dir(str(tmp_path / "second")))
    assert [(r["_step"], r.get("b")) for r in rows] == [(3, 2.0)]
    first.finish()
    rows = read_offline_history(find_run_dir(str(tmp_path / "first")))
    assert [(r["_step"], r.get("a"), "b" in r) for r in rows] == [(1, 1.0, False)]
