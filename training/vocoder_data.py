"""The vocoder's data: a held-out split of the audio files and random fixed-size segments of them."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from training.signals import worker_init_fn
from utils.audio import load_wav
from utils.config.vocoder import VocoderConfig


def split_files(files: list[str], val_fraction: float, max_val: int, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``val_fraction`` of the files (at least one, at most ``max_val``) for validation.

    With a single file there is nothing to hold out: it is used for both.
    """
    if len(files) < 2 or val_fraction == 0:
        return list(files), list(files[:1]) if val_fraction > 0 else []
    order = list(files)
    random.Random(seed).shuffle(order)
    n_val = min(max_val, max(1, round(len(files) * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


class SegmentDataset(Dataset):
    """One random ``segment_size``-sample segment per file per epoch (zero-padded if shorter).

    Args:
        files: audio files.  sampling_rate: target rate (other rates are resampled).
        segment_size: samples per item.
    Returns (per item): (segment_size,) float32 waveform.
    """

    def __init__(self, files: list[str], sampling_rate: int, segment_size: int) -> None:
        self.files = files
        self.sampling_rate = sampling_rate
        self.segment_size = segment_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        wav = load_wav(self.files[i], self.sampling_rate)
        if wav.numel() >= self.segment_size:
            # torch's RNG: seeded per worker by the DataLoader, so runs are reproducible.
            start = int(torch.randint(0, wav.numel() - self.segment_size + 1, ()))
            return wav[start : start + self.segment_size]
        return F.pad(wav, (0, self.segment_size - wav.numel()))


def make_loader(files: list[str], cfg: VocoderConfig, seed: int, pin_memory: bool) -> DataLoader:
    t = cfg.training
    ds = SegmentDataset(files, cfg.audio.sampling_rate, t.segment_size)
    # Fewer files than a batch (tiny datasets, tests): draw with replacement to fill one batch.
    sampler = RandomSampler(
        ds, replacement=len(ds) < t.batch_size, num_samples=max(len(ds), t.batch_size),
        generator=torch.Generator().manual_seed(seed),
    )
    return DataLoader(
        ds, batch_size=t.batch_size, sampler=sampler, drop_last=True, num_workers=t.num_workers,
        pin_memory=pin_memory, persistent_workers=t.num_workers > 0,
        worker_init_fn=worker_init_fn if t.num_workers > 0 else None,
    )
