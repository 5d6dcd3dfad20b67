"""The validated schema of ``config/istftnet.yaml`` (the iSTFTNet vocoder and its GAN training).

    from utils.config import load_config
    from utils.config.vocoder import VocoderConfig
    cfg = load_config("config/istftnet.yaml", ["training.batch_size=8"], schema=VocoderConfig)

Consistency that would otherwise surface as a shape error deep inside training is checked here:
the generator must turn one mel frame into exactly ``audio.hop_length`` samples
(prod(upsample_rates) x gen_istft_hop_size), and training segments must be whole mel frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from utils.config.audio import AudioConfig
from utils.config.core import require
from utils.config.train import WandbConfig


@dataclass
class GeneratorConfig:
    """iSTFTNet C8C8I (Kaneko et al. 2022): a HiFi-GAN V1 stack cut after two x8 upsamplings."""

    upsample_rates: list[int] = field(default_factory=lambda: [8, 8])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16])
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    gen_istft_n_fft: int = 16
    gen_istft_hop_size: int = 4

    def check(self) -> None:
        require(len(self.upsample_rates) > 0, "upsample_rates must not be empty")
        require(
            len(self.upsample_rates) == len(self.upsample_kernel_sizes),
            f"upsample_rates ({self.upsample_rates}) and upsample_kernel_sizes "
            f"({self.upsample_kernel_sizes}) must have the same length",
        )
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            require(u > 0 and k >= u and (k - u) % 2 == 0,
                    f"each upsample kernel must be >= its rate with an even difference, got rate {u}, kernel {k}")
        require(
            self.upsample_initial_channel % (2 ** len(self.upsample_rates)) == 0,
            f"upsample_initial_channel ({self.upsample_initial_channel}) must be divisible by "
            f"2**len(upsample_rates) = {2 ** len(self.upsample_rates)} (channels halve per upsampling)",
        )
        require(
            len(self.resblock_kernel_sizes) == len(self.resblock_dilation_sizes) > 0,
            "resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and the same length",
        )
        require(all(k % 2 == 1 for k in self.resblock_kernel_sizes), "resblock_kernel_sizes must be odd")
        require(self.gen_istft_n_fft > 0 and self.gen_istft_n_fft % 2 == 0, "gen_istft_n_fft must be even")
        require(0 < self.gen_istft_hop_size <= self.gen_istft_n_fft,
                "gen_istft_hop_size must be in (0, gen_istft_n_fft]")

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * self.gen_istft_hop_size


@dataclass
class DiscriminatorConfig:
    """HiFi-GAN's multi-period (MPD) and multi-scale (MSD) discriminators.

    ``width`` scales every discriminator channel count (1.0 = HiFi-GAN's); tiny test models use
    a small width so a GAN step costs little.
    """

    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    msd_scales: int = 3
    width: float = 1.0

    def check(self) -> None:
        require(len(self.periods) > 0 and all(p > 1 for p in self.periods), "periods must be integers > 1")
        require(self.msd_scales >= 0, "msd_scales must be >= 0 (0 disables the multi-scale discriminator)")
        require(0.0 < self.width <= 4.0, f"width must be in (0, 4], got {self.width}")


@dataclass
class VocoderLossConfig:
    mel_weight: float = 45.0
    feature_weight: float = 2.0
    # The mel of the L1 loss covers the whole band (HiFi-GAN's fmax_for_loss = None) unless set;
    # the input mel keeps audio.fmax.
    mel_loss_fmax: Optional[float] = None

    def check(self) -> None:
        require(self.mel_weight >= 0 and self.feature_weight >= 0, "loss weights must be >= 0")


@dataclass
class VocoderOptimizerConfig:
    """AdamW for both generator and discriminators, decayed exponentially (HiFi-GAN: 0.999/epoch)."""

    learning_rate: float = 2.0e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.01
    lr_decay: float = 0.999
    lr_decay_every: int = 1000  # steps between multiplications by lr_decay (about one LJSpeech epoch)
    impl: Literal["auto", "fused", "foreach"] = "auto"  # AdamW kernel: auto = fused on CUDA, foreach elsewhere

    def check(self) -> None:
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two values in [0, 1)")
        require(0 < self.lr_decay <= 1, "lr_decay must be in (0, 1]")
        require(self.lr_decay_every > 0, "lr_decay_every must be > 0")


@dataclass
class VocoderTrainingSection:
    batch_size: int = 16
    segment_size: int = 8192  # samples per random training segment (32 mel frames)
    max_steps: int = 500000
    num_workers: int = 2
    seed: int = 1234
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: as every trainer (training/engine.py)
    grad_clip_thresh: Optional[float] = None  # HiFi-GAN trains unclipped; set e.g. 1000.0 to guard spikes
    log_step: int = 10
    val_step: int = 1000
    save_step: int = 5000
    keep_last: int = 3
    val_fraction: float = 0.02  # files held out for validation (at least 1 when there are >= 2 files)
    max_val_files: int = 8
    val_max_seconds: float = 10.0  # longer validation clips are cut (bounds memory and time)
    max_nonfinite_steps: int = 5  # consecutive non-finite losses before training stops with an error

    def check(self) -> None:
        for name in ("batch_size", "segment_size", "max_steps", "log_step", "val_step", "save_step",
                     "keep_last", "max_val_files", "max_nonfinite_steps"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(self.num_workers >= 0, "num_workers must be >= 0")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")
        require(self.val_max_seconds > 0, "val_max_seconds must be > 0")


@dataclass
class VocoderConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: VocoderLossConfig = field(default_factory=VocoderLossConfig)
    optimizer: VocoderOptimizerConfig = field(default_factory=VocoderOptimizerConfig)
    training: VocoderTrainingSection = field(default_factory=VocoderTrainingSection)
    audio: AudioConfig = field(default_factory=AudioConfig)
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="echolancer-vocoder"))

    def check(self) -> None:
        spf = self.generator.samples_per_frame
        require(
            spf == self.audio.hop_length,
            f"generator: prod(upsample_rates) x gen_istft_hop_size = {spf} must equal audio.hop_length "
            f"({self.audio.hop_length}) so that one mel frame becomes one hop of samples",
        )
        require(
            self.training.segment_size % self.audio.hop_length == 0,
            f"training.segment_size ({self.training.segment_size}) must be a multiple of audio.hop_length "
            f"({self.audio.hop_length})",
        )
        require(
            self.training.segment_size > self.audio.n_fft,
            f"training.segment_size ({self.training.segment_size}) must exceed audio.n_fft ({self.audio.n_fft})",
        )
        fmax = self.loss.mel_loss_fmax
        if fmax is not None:
            require(self.audio.fmin < fmax <= self.audio.sampling_rate / 2,
                    f"loss.mel_loss_fmax ({fmax}) must be in (audio.fmin, sampling_rate/2]")
