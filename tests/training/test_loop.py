"""training/loop.py on a toy recipe: the cadence, stop requests, the non-finite policy, the time budget,
early stopping and exact resume, with no model of the project in the way."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Optional

import pytest
import torch

import training.loop as loop
from training.loop import Cadence, Recipe, RunPlace, Validation
from training.nonfinite import NonFinitePolicy
from utils.checkpoint import capture_rng_state, list_checkpoints, load_checkpoint, restore_rng_state
from utils.early_stopping import EarlyStopping


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


class Toy(Recipe):
    """A random walk of one number: epochs of four steps, a validation loss from a list."""

    name = "toy"

    def __init__(self, out, cadence: Cadence, resume: Optional[str] = None, val_losses=(), patience=None,
                 nan_at=(), stop_at: Optional[int] = None) -> None:
        super().__init__(RunPlace(str(out), resume))
        self.seed, self.keep_last = 0, 5
        self.wandb = SimpleNamespace(project="toy", mode="disabled", run_name=None, entity=None,
                                     log_checkpoints=False)
        self._cadence, self.val_losses, self.patience, self.nan_at = cadence, list(val_losses), patience, set(nan_at)
        self.stop_at = stop_at  # a stop request during this step (as a signal handler makes it)
        self.events: list[tuple[str, int]] = []
        self.start()

    def build(self) -> None:
        self.w = torch.zeros(())
        self.nonfinite = NonFinitePolicy(2)
        self.cadence = self._cadence
        if self.patience is not None:
            self.early_stopping = EarlyStopping(self.patience)

    def batches(self):
        for _ in range(4):
            yield torch.randn(())

    def train_step(self, batch):
        finite = self.step + 1 not in self.nan_at
        self.nonfinite.record(finite)
        if finite:
            self.w = self.w + batch
        self.step += 1
        if self.step == self.stop_at:
            self.request_stop()
        return float(self.w)

    def log_train(self):
        self.events.append(("log", self.step))

    def validate(self) -> Validation:
        self.events.append(("val", self.step))
        return Validation(self.val_losses.pop(0) if self.val_losses else 1.0)

    def checkpoint_state(self, rng=None) -> dict:
        return {"step": self.step, "epoch": self.epoch, "w": self.w.clone(), "rng": rng or capture_rng_state()}

    def load_state_dict(self, state: dict, source: str) -> None:
        self.step, self.epoch, self.w = state["step"], state["epoch"], state["w"]
        restore_rng_state(state["rng"])

    def export(self) -> str:
        self.events.append(("export", self.step))
        return "exported"

    def wandb_config(self) -> dict:
        return {}


def saved(out) -> list[int]:
    return [s for s, _ in list_checkpoints(out / "ckpt")]


def of(kind: str, toy: Toy) -> list[int]:
    return [s for k, s in toy.events if k == kind]


def test_the_cadence_logs_validates_saves_and_exports_at_the_last_step(tmp_path):
    toy = Toy(tmp_path, Cadence(log_step=2, val_step=3, save_step=4, max_steps=6, at_the_last_step=True))
    assert toy.run() == "finished"
    assert (of("log", toy), of("val", toy), of("export", toy)) == ([2, 4, 6], [3, 6], [6])
    assert saved(tmp_path) == [4, 6] and toy.export_dir == "exported"
    assert toy.ckpt.best_step == 6  # the save at a validated step records its loss


def test_epoch_ends_validate_unless_the_step_just_did_and_the_epoch_limit_ends_the_run(tmp_path):
    toy = Toy(tmp_path, Cadence(log_step=100, val_step=3, save_step=100, max_epochs=2, validate_each_epoch=True))
    assert toy.run() == "finished"
    assert (toy.step, toy.epoch, of("val", toy)) == (8, 2, [3, 4, 6, 8])
    assert saved(tmp_path) == [8]  # the end saves the last state once


def test_a_stop_request_saves_the_step_and_skips_the_export(tmp_path):
    toy = Toy(tmp_path, Cadence(log_step=1, val_step=100, save_step=100, max_steps=10), stop_at=3)
    assert toy.run() == "interrupted"
    assert saved(tmp_path) == [3] and of("log", toy) == [1, 2] and not of("export", toy)


def test_non_finite_steps_in_a_row_save_and_stop(tmp_path):
    toy = Toy(tmp_path, Cadence(log_step=1, val_step=100, save_step=100, max_steps=10), nan_at=(3, 4))
    assert toy.run() == "nonfinite"
    assert toy.step == 4 and saved(tmp_path) == [4] and not of("export", toy)


def test_early_stopping_saves_each_best_and_stops_after_patience(tmp_path):
    toy = Toy(tmp_path, Cadence(log_step=100, val_step=1, save_step=100, max_steps=10), val_losses=[1.0, 2.0, 3.0],
              patience=2)
    assert toy.run() == "early_stopped"
    assert toy.step == 3 and saved(tmp_path) == [1, 3] and toy.ckpt.best_step == 1 and of("export", toy) == [3]


def test_the_time_budget_ends_the_run_as_if_finished(tmp_path, monkeypatch):
    clock = itertools.count(0, 40)  # every reading is 40 s later
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    toy = Toy(tmp_path, Cadence(log_step=100, val_step=100, save_step=100, max_steps=50, check_step=2,
                                max_minutes=1.0))
    assert toy.run() == "time_budget"
    assert toy.step == 4 and saved(tmp_path) == [4] and of("export", toy) == [4]  # checked at step 2 (40 s) and 4 (80 s)


def test_resume_continues_exactly(tmp_path):
    cadence = Cadence(log_step=100, val_step=100, save_step=4, max_steps=8)
    full = Toy(tmp_path / "full", cadence)
    full.run()
    Toy(tmp_path / "part", Cadence(log_step=100, val_step=100, save_step=4, max_steps=4)).run()
    resumed = Toy(tmp_path / "part", cadence, resume=str(tmp_path / "part" / "ckpt"))
    assert (resumed.step, resumed.saved_step) == (4, 4)
    resumed.run()
    assert torch.equal(resumed.w, full.w) and load_checkpoint(tmp_path / "part" / "ckpt")["step"] == 8
