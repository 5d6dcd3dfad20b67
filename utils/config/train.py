"""The schema of ``config/train*.yaml``: how Echolancer is trained (also ``WandbConfig``, shared)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from utils.config.core import require

# Parts of the Echolancer model that ``training.freeze`` can hold fixed (training/init_from.py maps
# each to its submodules).
Freezable = Literal["encoder", "decoder", "text_embedding", "speaker_embedding"]

# --------------------------------------------------------------------------------------------
# Training config (config/train.yaml)
# --------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    type: Literal["adamw", "adam"] = "adamw"
    learning_rate: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1.0e-8
    weight_decay: float = 0.01
    # auto: fused on CUDA (one kernel; skips a non-finite step on the device, no host sync),
    # foreach elsewhere. fused also runs on the CPU.
    impl: Literal["auto", "fused", "foreach"] = "auto"

    def check(self) -> None:
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two values in [0, 1)")


@dataclass
class SchedulerConfig:
    type: Literal["warmup_cosine", "warmup_linear", "constant_with_warmup", "noam"] = "warmup_cosine"
    warmup_steps: int = 1000
    total_steps: Optional[int] = None  # defaults to training.max_steps, else epochs x steps/epoch
    min_lr_ratio: float = 0.0  # floor of cosine/linear decay, as a fraction of learning_rate

    def check(self) -> None:
        require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")


@dataclass
class LossConfig:
    pos_weight: float = 5.0  # weight of the positive (stop) class in the stop-head BCE
    stop_weight: float = 1.0  # weight of the stop-head term in the total


@dataclass
class AlignmentConfig:
    """Alignment aid: a beta-binomial prior on the decoder's cross-attention scores.

    The prior (as in RAD-TTS) says audio step t of T attends near text position t/T of S. Its log
    is added to every cross-attention score with weight 1 for ``prior_hold_steps`` optimizer steps,
    then the weight falls linearly to 0 over ``prior_anneal_steps``; after that training (and
    always inference) runs without it.

    The guided attention loss (``guided_weight`` > 0) trains the model's own cross-attention,
    without the prior, towards the diagonal band of width ``guided_sigma``, for the whole run.
    The forward-sum loss (``forward_sum_weight`` > 0, CTC over text positions) asks only that the
    attention visit the text in order, at any pace. Both may be on; their weighted sum is logged
    as ``train/align_loss``.
    """

    prior: bool = True
    prior_scale: float = 1.0  # beta-binomial concentration per audio step; smaller = wider prior
    prior_hold_steps: int = 1000
    prior_anneal_steps: int = 1000
    guided_weight: float = 1.0  # weight of the guided attention loss; 0 = off
    guided_sigma: float = 0.2  # band width g, as a fraction of text and audio length
    forward_sum_weight: float = 0.0  # weight of the forward-sum (CTC) alignment loss; 0 = off
    forward_sum_blank: float = -1.0  # log-score of its blank column (RAD-TTS: -1)

    @property
    def loss_on(self) -> bool:
        """Whether training needs the model's cross-attention weights (any alignment loss on)."""
        return self.guided_weight > 0 or self.forward_sum_weight > 0

    def check(self) -> None:
        require(self.prior_scale > 0, f"prior_scale must be > 0, got {self.prior_scale}")
        require(self.guided_weight >= 0, f"guided_weight must be >= 0, got {self.guided_weight}")
        require(self.guided_sigma > 0, f"guided_sigma must be > 0, got {self.guided_sigma}")
        require(self.forward_sum_weight >= 0, f"forward_sum_weight must be >= 0, got {self.forward_sum_weight}")
        require(self.prior_hold_steps >= 0 and self.prior_anneal_steps >= 0,
                "prior_hold_steps and prior_anneal_steps must be >= 0")


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    patience: int = 10  # validations without improvement before stopping
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class WandbConfig:
    project: str = "echolancer"
    entity: Optional[str] = None
    run_name: Optional[str] = None
    mode: Literal["online", "offline", "disabled"] = "offline"
    log_checkpoints: bool = True


@dataclass
class TrainingSection:
    batch_size: int = 16
    max_tokens: Optional[int] = None  # audio-token budget per batch (bucketed sampler)
    epochs: int = 100
    max_steps: Optional[int] = None
    # Wall-clock budget of one training process, in minutes: training stops there as if finished
    # (saves, restores the best weights, exports). The LR schedule still follows max_steps.
    max_minutes: Optional[float] = None
    grad_acc_step: int = 1
    grad_clip_thresh: float = 1.0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    compile: bool = False  # torch.compile with dynamic shapes
    pad_multiple: int = 16  # batches' text/audio lengths rounded up to a multiple (few shapes to compile)
    check_step: int = 10  # steps between host reads of the device-side stop/non-finite flags (see DESIGN.md)
    num_workers: int = 2
    seed: int = 1234
    log_step: int = 10
    val_step: int = 1000
    save_step: int = 1000
    test_step: int = 2000
    eval_step: Optional[int] = None
    keep_last: int = 3
    max_nonfinite_steps: int = 5
    test_sentences: list[str] = field(default_factory=list)
    test_speakers: list[int] = field(default_factory=lambda: [0])
    test_max_length: int = 1000  # codec tokens per test utterance (bounds generation time)
    test_temperature: float = 1.0  # 0 = greedy
    # Parts kept fixed (no gradient, not in the optimizer): mostly for fine-tuning (train.py --init_from).
    freeze: list[Freezable] = field(default_factory=list)

    def check(self) -> None:
        require(len(set(self.freeze)) == len(self.freeze), f"freeze names a part twice: {self.freeze}")
        require(self.batch_size > 0, "batch_size must be > 0")
        require(self.grad_acc_step >= 1, "grad_acc_step must be >= 1")
        require(self.epochs >= 1, "epochs must be >= 1")
        require(self.max_steps is None or self.max_steps >= 1,
                f"max_steps must be >= 1 (or null: train for epochs), got {self.max_steps}")
        require(self.max_minutes is None or self.max_minutes > 0,
                f"max_minutes must be > 0 (or null: no time budget), got {self.max_minutes}")
        require(self.test_temperature >= 0.0, "test_temperature must be >= 0")
        require(self.eval_step is None or self.eval_step > 0, "eval_step must be > 0 or null")
        for name in ("log_step", "val_step", "save_step", "test_step", "keep_last", "test_max_length",
                     "max_nonfinite_steps", "pad_multiple", "check_step"):
            require(getattr(self, name) > 0, f"{name} must be > 0")


@dataclass
class TrainConfig:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    training: TrainingSection = field(default_factory=TrainingSection)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
