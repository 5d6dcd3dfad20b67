"""Early stopping on validation loss, with a state that is saved in checkpoints."""

from __future__ import annotations

import math
from typing import Optional


class EarlyStopping:
    """Stops training after ``patience`` validations without an improvement of more than ``min_delta``.

    Args:
        patience: validations without improvement tolerated before :attr:`should_stop` is True.
        min_delta: a loss must be below ``best - min_delta`` to count as an improvement.
        enabled: False never stops (but still tracks the best loss).
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0, enabled: bool = True) -> None:
        if patience < 1:
            raise ValueError(f"early_stopping.patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"early_stopping.min_delta must be >= 0, got {min_delta}")
        self.patience = patience
        self.min_delta = min_delta
        self.enabled = enabled
        self.best_loss: Optional[float] = None
        self.best_step: Optional[int] = None
        self.bad_validations = 0

    def step(self, val_loss: float, step: int) -> bool:
        """Record a validation loss; returns True if it is a new best."""
        if not math.isfinite(val_loss):
            self.bad_validations += 1
            return False
        if self.best_loss is None or val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step = float(val_loss), int(step)
            self.bad_validations = 0
            return True
        self.bad_validations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad_validations >= self.patience

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss = None if state["best_loss"] is None else float(state["best_loss"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.bad_validations = int(state["bad_validations"])
