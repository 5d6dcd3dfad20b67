"""The audio files of a training folder, for the recipes that train on audio (pre-encoder, vocoder)."""

from __future__ import annotations

import os

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def find_audio_files(data_dir: str) -> list[str]:
    """Every audio file under ``data_dir`` (recursive), sorted so the split is reproducible."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir}: no such directory")
    files = []
    for root, _, names in os.walk(data_dir):
        files.extend(os.path.join(root, n) for n in names if n.lower().endswith(AUDIO_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"--data_dir {data_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return sorted(files)
