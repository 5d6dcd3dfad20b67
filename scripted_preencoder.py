"""Load an exported (TorchScript) pre-encoder directory: mel (B, T, C) <-> codec tokens (B, T').

    pe = ScriptedPreEncoder("runs/pe/export", device="cuda")   # CPU fallback with a warning
    tokens = pe.encode(mel, lengths)                          # (B, T') long in [0, codebook_size)
    mel = pe.decode(tokens, token_lengths)                    # (B, T' * downsample, C)

A directory (docs/DESIGN.md "Exported component formats") holds ``model_cpu.pt`` (and optionally
``model_cuda.pt``) plus ``model_config.yaml`` with at least ``model.mel_channels`` and
``model.generator.fsq_levels``. The project's exports (``train_preencoder.py``) also record the
audio settings under ``audio`` and ``model.generator.downsample``; the original exports do not, so
those fall back to the shared defaults (with a warning for the audio settings).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Optional

import torch
import yaml
from torch import Tensor

from utils.audio import make_audio_config
from utils.config import AudioConfig, ConfigError

CONFIG_NAME = "model_config.yaml"


class PreEncoderDirError(ValueError):
    """A pre-encoder directory that cannot be used as it is; the message names the file and key."""


def _lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    return (torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None])[:, None, :]


def _get(raw: dict, dotted: str, path: str):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PreEncoderDirError(f"{path}: missing key '{dotted}'")
        node = node[part]
    return node


def read_preencoder_config(model_dir: str) -> tuple[int, list[int], int, AudioConfig]:
    """``(mel_channels, fsq_levels, downsample, audio)`` from ``<model_dir>/model_config.yaml``."""
    path = os.path.join(model_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise PreEncoderDirError(f"{model_dir}: no {CONFIG_NAME} (expected model_cpu.pt and {CONFIG_NAME})")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise PreEncoderDirError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise PreEncoderDirError(f"{path}: expected a mapping at the top level")
    mel_channels = _get(raw, "model.mel_channels", path)
    levels = _get(raw, "model.generator.fsq_levels", path)
    if isinstance(mel_channels, bool) or not isinstance(mel_channels, int) or mel_channels <= 0:
        raise PreEncoderDirError(f"{path}: 'model.mel_channels' must be a positive integer, got {mel_channels!r}")
    if not isinstance(levels, list) or not levels or not all(isinstance(v, int) and v >= 2 for v in levels):
        raise PreEncoderDirError(f"{path}: 'model.generator.fsq_levels' must be a list of integers >= 2, got {levels!r}")
    downsample = raw["model"]["generator"].get("downsample", 1)
    # The project's exports write ``audio``; a model-config style ``preprocessing.audio`` is accepted too.
    audio_raw = raw.get("audio")
    if audio_raw is None and isinstance(raw.get("preprocessing"), dict):
        audio_raw = raw["preprocessing"].get("audio")
    if audio_raw is None:
        warnings.warn(f"{path}: no audio settings recorded; assuming the shared defaults "
                      f"({AudioConfig()}); a pre-encoder trained on other mels will sound wrong", stacklevel=3)
        audio = AudioConfig(n_mels=mel_channels)
    else:
        try:
            audio = make_audio_config(audio_raw, f"{path} (audio)")
        except ConfigError as e:
            raise PreEncoderDirError(str(e)) from None
    if audio.n_mels != mel_channels:
        raise PreEncoderDirError(f"{path}: audio.n_mels ({audio.n_mels}) differs from model.mel_channels ({mel_channels})")
    return mel_channels, list(levels), int(downsample), audio


class ScriptedPreEncoder:
    """An exported pre-encoder, ready for inference.

    Args:
        model_dir: the export directory.
        device: where to run; a CUDA device without CUDA falls back to the CPU with a warning.

    Attributes:
        mel_channels, fsq_levels, codebook_size (= prod(fsq_levels)), downsample, audio, device.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        model_dir = os.fspath(model_dir)
        if not os.path.isdir(model_dir):
            raise PreEncoderDirError(f"pre-encoder directory not found: {model_dir}")
        self.model_dir = model_dir
        self.mel_channels, self.fsq_levels, self.downsample, self.audio = read_preencoder_config(model_dir)
        self.codebook_size = math.prod(self.fsq_levels)

        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(f"{model_dir}: CUDA requested but not available; using the CPU", stacklevel=2)
            dev = torch.device("cpu")
        self.device = dev
        cuda_file = os.path.join(model_dir, "model_cuda.pt")
        cpu_file = os.path.join(model_dir, "model_cpu.pt")
        path = cuda_file if dev.type == "cuda" and os.path.isfile(cuda_file) else cpu_file
        if not os.path.isfile(path):
            raise PreEncoderDirError(f"{model_dir}: missing model_cpu.pt (the TorchScript pre-encoder)")
        try:
            self.module = torch.jit.load(path, map_location=dev).eval()
        except RuntimeError as e:
            raise PreEncoderDirError(f"{path}: not a loadable TorchScript file ({str(e).splitlines()[0]})") from e
        for method in ("encode", "decode"):
            if not hasattr(self.module, method):
                raise PreEncoderDirError(f"{path}: the scripted module has no '{method}' method")
        # Our own exports carry their levels; a disagreement with the YAML means a mixed-up directory.
        stored = getattr(self.module, "fsq_levels", None)
        if stored is not None and list(stored) != self.fsq_levels:
            raise PreEncoderDirError(f"{model_dir}: {CONFIG_NAME} says fsq_levels {self.fsq_levels} but "
                                     f"{os.path.basename(path)} was exported with {list(stored)}")

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
        mask = None if lengths is None else _lengths_to_mask(lengths.to(self.device), mel.shape[1])
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
        mask = None if lengths is None else _lengths_to_mask(lengths.to(self.device), indices.shape[1])
        valid = indices if mask is None else indices[~mask[:, 0]]
        if valid.numel() and bool(((valid < 0) | (valid >= self.codebook_size)).any()):
            bad = valid[(valid < 0) | (valid >= self.codebook_size)]
            raise ValueError(f"ScriptedPreEncoder.decode: token ids must be in [0, {self.codebook_size}); "
                             f"got {bad[:5].tolist()} (BOS/EOS/PAD must be stripped before decoding)")
        return self.module.decode(indices, mask)
