"""The Echolancer training loop (``train.py`` is its command-line entry point)."""

from training.trainer import RunPaths, Trainer, TrainResult

__all__ = ["RunPaths", "TrainResult", "Trainer"]
