"""Training: the one loop (loop.py), the helpers every recipe shares (engine.py, signals.py, metrics.py, resume.py, command.py) and one recipe per model (echolancer.py, preencoder.py, vocoder.py)."""
