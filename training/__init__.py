"""Training: the shared engine (engine.py) and one recipe per model (echolancer.py, preencoder.py, vocoder.py)."""

from training.echolancer import RunPaths, Trainer, TrainResult

__all__ = ["RunPaths", "TrainResult", "Trainer"]
