"""``get_data_loader``: the seed's one-call way to iterate over a data directory (``.pt`` files or a
packed corpus, see :mod:`data.packed`: the directory decides)."""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import DataLoader

from data.dataset import PAD_MULTIPLE, Collate, EcholancerDataset
from data.sampler import BucketBatchSampler
from utils.config import ModelConfig


def get_data_loader(
    data_dir: str,
    model_cfg: ModelConfig,
    batch_size: int,
    max_tokens: Optional[int] = None,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    pad_multiple: int = PAD_MULTIPLE,
) -> DataLoader:
    """A DataLoader of length-bucketed, padded batches (see :class:`data.dataset.Collate`).

    Args:
        data_dir: directory of ``.pt`` utterance files (validated once, errors name the file), or a
            packed corpus (``python -m data.packed convert``).
        model_cfg: the model config (vocabulary, codebook, emotion width, dataset limits).
        batch_size: utterances per batch.  max_tokens: optional padded audio-token budget.
        shuffle: shuffle across buckets (deterministic for ``seed``).
        num_workers: loader processes (0 = in this process, needed for bitwise-exact resume); they
            persist across epochs.
        pad_multiple: padded text/audio lengths are rounded up to a multiple of this (see ``Collate``).

    ``loader.batch_sampler.set_epoch(e)`` reshuffles for a new epoch.
    """
    dataset = EcholancerDataset(data_dir, model_cfg, seed=seed)
    sampler = BucketBatchSampler(dataset.lengths(), batch_size, max_tokens, shuffle=shuffle, seed=seed)
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collate(model_cfg.model.pad_id, pad_multiple=pad_multiple),
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        # An explicit generator keeps loader seeding off the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed),
    )
