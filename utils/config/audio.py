"""The one audio definition every config kind uses (model, pre-encoder, vocoder: top-level ``audio``)."""

from __future__ import annotations

from dataclasses import dataclass

from utils.config.core import require


@dataclass
class AudioConfig:
    """The one shared audio definition (docs/DESIGN.md): HiFi-GAN-style log-mel."""

    sampling_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0

    def check(self) -> None:
        require(self.win_length <= self.n_fft, "win_length must be <= n_fft")
        require(self.hop_length > 0 and self.n_mels > 0, "hop_length and n_mels must be positive")
        require(
            0 <= self.fmin < self.fmax <= self.sampling_rate / 2,
            f"need 0 <= fmin < fmax <= sampling_rate/2, got fmin={self.fmin}, fmax={self.fmax}",
        )
