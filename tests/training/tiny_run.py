"""What the trainer tests share: the tiny configs, quick-run overrides and dummy data."""

from __future__ import annotations

import os
from typing import Optional

from data.dummy import create_dummy_data_files
from utils.config import load_configs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_CFG = os.path.join(ROOT, "config/model_tiny.yaml")
TRAIN_CFG = os.path.join(ROOT, "config/train_tiny.yaml")
# A few steps a run, logged every step; validation, saving and the test interval out of the way.
BASE = ["training.batch_size=4", "training.log_step=1", "training.val_step=1000", "training.save_step=1000",
        "training.test_step=1000", "training.epochs=10", "scheduler.warmup_steps=2", "scheduler.total_steps=8",
        "early_stopping.restore_best=false"]


def dummy_data(root, n_train: int, n_val: int = 0, overrides: tuple[str, ...] = ()) -> tuple[str, Optional[str]]:
    """Dummy training (and validation) files for the tiny model under ``root``; their directories."""
    mcfg, _ = load_configs(MODEL_CFG, TRAIN_CFG, list(overrides))
    create_dummy_data_files(str(root / "train"), mcfg, n_files=n_train, max_text_len=20, seed=0)
    if not n_val:
        return str(root / "train"), None
    create_dummy_data_files(str(root / "val"), mcfg, n_files=n_val, max_text_len=20, seed=1)
    return str(root / "train"), str(root / "val")
