"""ISTFTNet front end: mel (B, n_mels, T) -> waveform (B, T * hop), loaded from its exported directory.

    fe = ISTFTNetFE.load_ts("exports/istftnet", "cuda")   # unusable CUDA is an error, not the CPU
    wav = fe(mel)                                          # (B, T * 256) float32 in about [-1, 1]
    pcm = fe.infer(mel)                                    # int16 numpy, ready for a WAV file

The directory format (``istft_cpu.pt`` / ``istft_cuda.pt`` and ``config.json``, also the original
iSTFTNet exports), its export and its loading live in ``model/istftnet_artifact.py``. The inverse
STFT itself is not traced: it runs through ``torch.istft`` here (:class:`model.istftnet.ISTFT`),
on the generator's device or on the CPU.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from model.istftnet import ISTFT
from model.istftnet_artifact import load_istftnet
from utils.audio import audio_mismatch
from utils.config import AudioConfig, ConfigError
from utils.device import Device

INT16_SCALE = 32767.0


class _ClassOrInstanceMethod:
    """``ISTFTNetFE.load_ts(dir, dev)`` builds a new front end; ``fe.load_ts(dir, dev)`` (the seed's
    style, on an ``ISTFTNetFE(None, None)``) loads into ``fe``. Both return the loaded front end."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type):
        target = owner(None, None) if obj is None else obj
        return self.fn.__get__(target, owner)


class ISTFTNetFE(nn.Module):
    """Vocoder front end: a generator mel -> (magnitude, phase) followed by an inverse STFT.

    Args:
        gen: an eager :class:`~model.istftnet.ISTFTNetGenerator` or a loaded TorchScript generator
            (None until :meth:`load_ts`).
        stft: the :class:`~model.istftnet.ISTFT` matching the generator (None until loaded).
        audio: the mel settings the generator expects (sample rate included); None = unknown.
    """

    def __init__(self, gen: Optional[nn.Module], stft: Optional[ISTFT], audio: Optional[AudioConfig] = None) -> None:
        super().__init__()
        self.gen = gen
        self.stft = stft
        self.audio = audio
        self.sampling_rate: Optional[int] = audio.sampling_rate if audio is not None else None

    # ---------------------------------------------------------------------------------- running

    @property
    def device(self) -> torch.device:
        self._require_loaded()
        param = next(self.gen.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _require_loaded(self) -> None:
        if self.gen is None or self.stft is None:
            raise RuntimeError("ISTFTNetFE: no generator loaded; pass one to the constructor or call load_ts()")

    def _check_mel(self, mel: Tensor) -> None:
        if mel.dim() != 3:
            raise ValueError(f"ISTFTNetFE: mel must be (B, n_mels, T), got shape {tuple(mel.shape)}")
        if self.audio is not None and mel.shape[1] != self.audio.n_mels:
            raise ValueError(
                f"ISTFTNetFE: mel has {mel.shape[1]} channels but this vocoder expects n_mels={self.audio.n_mels} "
                "(the vocoder speaks (B, C, T); the pre-encoder's output (B, T, C) must be transposed)"
            )

    @torch.no_grad()
    def forward(self, mel: Tensor) -> Tensor:
        """Args: mel (B, n_mels, T) log-mel. Returns (B, T * hop) float32 waveform on the generator's device."""
        self._require_loaded()
        self._check_mel(mel)
        magnitude, phase = self.gen(mel.to(self.device, torch.float32))
        return self.stft(magnitude, phase)

    @staticmethod
    def _to_int16(wav: Tensor) -> np.ndarray:
        # Clamp first: 1.0 * 32768 would wrap around to -32768 in int16.
        pcm = (wav.float().clamp(-1.0, 1.0) * INT16_SCALE).round().to(torch.int16)
        pcm = pcm.cpu().numpy()
        return pcm[0] if pcm.shape[0] == 1 else pcm

    def infer(self, mel: Tensor) -> np.ndarray:
        """Args: mel (B, n_mels, T). Returns int16 numpy (T * hop,) for B = 1, else (B, T * hop)."""
        return self._to_int16(self(mel))

    @torch.no_grad()
    def infer_cpuistft(self, mel: Tensor) -> np.ndarray:
        """Like :meth:`infer`, but the inverse STFT runs on the CPU (the generator stays where it is).

        Useful where ``torch.istft`` is slow or missing on the accelerator; ``self.stft`` is not moved.
        """
        self._require_loaded()
        self._check_mel(mel)
        magnitude, phase = self.gen(mel.to(self.device, torch.float32))
        cpu_stft = ISTFT(self.stft.n_fft, self.stft.hop_length, self.stft.win_length)
        return self._to_int16(cpu_stft(magnitude.cpu(), phase.cpu()))

    # ---------------------------------------------------------------------------------- loading

    @_ClassOrInstanceMethod
    def load_ts(self, in_dir: str | os.PathLike, device: Device = "cpu") -> ISTFTNetFE:
        """Load an exported directory (ours or an original iSTFTNet export).

        ``ISTFTNetFE.load_ts(dir, device)`` returns a new front end; ``fe.load_ts(dir, device)``
        loads into ``fe`` and returns it. Errors and the device policy are
        :func:`model.istftnet_artifact.load_istftnet`'s: a CUDA device this machine cannot use is
        an error; a device whose file is missing loads the other file onto it, with a warning.

        Args:
            in_dir: the export directory.
            device: "auto", "cpu", "cuda" or "cuda:N" (:func:`utils.device.pick_device`).
        """
        self.gen, self.stft, self.audio = load_istftnet(in_dir, device)
        self.sampling_rate = self.audio.sampling_rate
        return self


def check_vocoder_audio(fe: ISTFTNetFE, expected: AudioConfig, what: str = "ISTFTNet directory") -> None:
    """Raise if the vocoder's mel settings differ from ``expected`` (e.g. the pre-encoder's)."""
    if fe.audio is None:
        raise ConfigError(f"{what}: the vocoder's mel settings are unknown")
    diffs = audio_mismatch(expected, fe.audio)
    if diffs:
        raise ConfigError(f"{what}: mel settings differ ({'; '.join(diffs)}); the vocoder would receive mels "
                         "it was not trained on")
