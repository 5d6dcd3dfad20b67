"""Load an exported (TorchScript) pre-encoder directory: mel (B, T, C) <-> codec tokens (B, T').

    pe = ScriptedPreEncoder("runs/pe/export", device="cuda")   # unusable CUDA is an error, not the CPU
    tokens = pe.encode(mel, lengths)                          # (B, T') long in [0, codebook_size)
    mel = pe.decode(tokens, token_lengths)                    # (B, T' * downsample, C)

The directory format, its export and its loading live in ``model/preencoder_artifact.py``
(docs/DESIGN.md "Exported component formats"); this is the front end that checks inputs and runs
the loaded module. Original exports load too (their missing settings take the shared defaults).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

from model.preencoder import lengths_to_mask
from model.preencoder_artifact import load_preencoder


class ScriptedPreEncoder:
    """An exported pre-encoder, ready for inference.

    Args:
        model_dir: the export directory.
        device: where to run ("auto", "cpu", "cuda", "cuda:N"; :func:`utils.device.pick_device`).
            A CUDA device this machine cannot use is an error.

    Attributes:
        mel_channels, fsq_levels, codebook_size (= prod(fsq_levels)), downsample, audio, device.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        loaded = load_preencoder(model_dir, device)
        self.model_dir = os.fspath(model_dir)
        self.mel_channels, self.fsq_levels = loaded.mel_channels, loaded.fsq_levels
        self.downsample, self.audio = loaded.downsample, loaded.audio
        self.codebook_size = math.prod(self.fsq_levels)
        self.device = loaded.device
        self.module = loaded.module

    def __repr__(self) -> str:
        return (f"ScriptedPreEncoder({self.model_dir!r}, levels={self.fsq_levels}, codebook={self.codebook_size}, "
                f"downsample={self.downsample}, device={self.device})")

    @torch.no_grad()
    def encode(self, spectrogram: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Mel frames -> token ids.

        Args:
            spectrogram: (B, T, C) log-mel from :func:`utils.audio.mel_spectrogram` (transposed).
            lengths: (B,) valid frames per row, or None (all valid).
        Returns:
            (B, ceil(T / downsample)) long; 0 at padded tokens.
        """
        if spectrogram.dim() != 3 or spectrogram.shape[-1] != self.mel_channels:
            raise ValueError(f"ScriptedPreEncoder.encode: spectrogram must be (B, T, {self.mel_channels}), "
                             f"got shape {tuple(spectrogram.shape)}")
        mel = spectrogram.to(self.device, torch.float32)
        mask = None if lengths is None else lengths_to_mask(lengths.to(self.device), mel.shape[1])
        return self.module.encode(mel, mask)

    @torch.no_grad()
    def decode(self, indices: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Token ids -> mel frames.

        Args:
            indices: (B, T') ids in ``[0, codebook_size)`` (anything after each row's length).
            lengths: (B,) valid tokens per row, or None (all valid).
        Returns:
            (B, T' * downsample, C) log-mel; silence (log 1e-5) at padded frames.
        """
        if indices.dim() != 2:
            raise ValueError(f"ScriptedPreEncoder.decode: indices must be (B, T'), got shape {tuple(indices.shape)}")
        indices = indices.to(self.device).long()
        mask = None if lengths is None else lengths_to_mask(lengths.to(self.device), indices.shape[1])
        valid = indices if mask is None else indices[~mask[:, 0]]
        if valid.numel() and bool(((valid < 0) | (valid >= self.codebook_size)).any()):
            bad = valid[(valid < 0) | (valid >= self.codebook_size)]
            raise ValueError(f"ScriptedPreEncoder.decode: token ids must be in [0, {self.codebook_size}); "
                             f"got {bad[:5].tolist()} (BOS/EOS/PAD must be stripped before decoding)")
        return self.module.decode(indices, mask)
