"""Shared test setup: repository root on sys.path, offline libraries, deterministic threads."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# The test models are tiny: one thread avoids oversubscription when CI's two cores are shared.
torch.set_num_threads(1)


import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def restore_logging():
    """The scripts under test configure the root logger (stderr and a train.log file handler in
    their output dir); every test gets the root logger back as it was."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    for h in logging.root.handlers:
        if h not in handlers:
            h.close()
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)
