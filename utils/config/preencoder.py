"""The validated schema of ``config/preencoder.yaml`` (the FSQ mel codec and its training).

    from utils.config import load_config
    from utils.config.preencoder import PreEncoderConfig
    cfg = load_config("config/preencoder.yaml", ["training.batch_size=8"], schema=PreEncoderConfig)

The exported ``model_config.yaml`` is this config written out in full (``model``, ``audio``,
``training``; merged with its ``base:``, if any), so the keys the original exports carry
(``model.mel_channels``, ``model.generator.fsq_levels``) sit where
:class:`scripted_preencoder.ScriptedPreEncoder` looks for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from utils.config.audio import AudioConfig
from utils.config.core import require
from utils.config.train import WandbConfig


@dataclass
class PreEncoderGeneratorConfig:
    """The autoencoder around the FSQ bottleneck.

    ``downsample`` merges that many mel frames into one token (1 = one token per frame, the
    Echolancer default); ``mel_mean``/``mel_std`` are fixed per-frame input normalisation constants
    (a statistic over time would make codes depend on padding; see docs/DESIGN.md "Codec and vocoder facts").
    """

    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    hidden: int = 256
    encoder_blocks: int = 4
    decoder_blocks: int = 4
    kernel_size: int = 5
    downsample: int = 1
    dropout: float = 0.0
    mel_mean: float = -5.0
    mel_std: float = 2.5

    def check(self) -> None:
        require(len(self.fsq_levels) > 0 and all(lv >= 2 for lv in self.fsq_levels),
                f"fsq_levels must be a non-empty list of integers >= 2, got {self.fsq_levels}")
        require(self.hidden > 0, "hidden must be > 0")
        require(self.encoder_blocks >= 0 and self.decoder_blocks >= 0, "encoder_blocks/decoder_blocks must be >= 0")
        require(self.kernel_size % 2 == 1, f"kernel_size must be odd (same-length convolutions), got {self.kernel_size}")
        require(self.downsample in (1, 2, 4, 8), f"downsample must be one of 1, 2, 4, 8, got {self.downsample}")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.mel_std > 0, "mel_std must be > 0")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.fsq_levels)


@dataclass
class PreEncoderModelSection:
    mel_channels: int = 80
    generator: PreEncoderGeneratorConfig = field(default_factory=PreEncoderGeneratorConfig)


@dataclass
class PreEncoderTrainingSection:
    batch_size: int = 16
    segment_frames: int = 128  # random crop per clip, in mel frames (~1.5 s)
    max_steps: int = 100000
    learning_rate: float = 2.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.1
    grad_clip_thresh: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    seed: int = 1234
    log_step: int = 50
    val_step: int = 1000
    save_step: int = 5000
    keep_last: int = 3
    val_fraction: float = 0.02  # files held out for validation (at least 1 when there are >= 2 files)
    max_val_files: int = 16
    max_nonfinite_steps: int = 5
    # auto: bf16 on a GPU that has it, fp16 on other GPUs, fp32 on the CPU (training/engine.py). The
    # default stays fp32: the FSQ rounding is where reduced precision would change codes.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"

    def check(self) -> None:
        for name in ("batch_size", "segment_frames", "max_steps", "log_step", "val_step", "save_step",
                     "keep_last", "max_val_files", "max_nonfinite_steps"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two values in [0, 1)")
        require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")
        require(self.l1_weight >= 0 and self.l2_weight >= 0 and self.l1_weight + self.l2_weight > 0,
                "l1_weight and l2_weight must be >= 0 and not both 0")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")


@dataclass
class PreEncoderConfig:
    model: PreEncoderModelSection = field(default_factory=PreEncoderModelSection)
    audio: AudioConfig = field(default_factory=AudioConfig)
    training: PreEncoderTrainingSection = field(default_factory=PreEncoderTrainingSection)
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="echolancer-preencoder"))

    def check(self) -> None:
        require(
            self.model.mel_channels == self.audio.n_mels,
            f"model.mel_channels ({self.model.mel_channels}) must equal audio.n_mels ({self.audio.n_mels})",
        )
        ds = self.model.generator.downsample
        require(
            self.training.segment_frames % ds == 0,
            f"training.segment_frames ({self.training.segment_frames}) must be a multiple of "
            f"model.generator.downsample ({ds})",
        )

