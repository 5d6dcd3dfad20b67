"""The Echolancer recipe: text -> codec tokens, on the shared loop (``training/loop.py``).

One *step* is one optimizer update made of up to ``grad_acc_step`` micro-batches (fewer at the end
of an epoch). The loss of every micro-batch is a sum over valid target tokens divided by the token
count of the whole step (all micro-batches, all processes), so 2 micro-batches of 16 give the same
gradient as one batch of 32.

Exact resume: a checkpoint holds the state *at a step boundary*: weights, optimizer, scheduler,
scaler, step, epoch, the number of global batches of the epoch already consumed, early stopping and
the RNG states captured at that boundary. A stop requested in the middle of an accumulation cycle
(SIGINT/SIGTERM) throws the partial gradients away and saves the boundary state, so the resumed run
recomputes those micro-batches and ends bitwise identical to an uninterrupted one (CPU,
``num_workers=0``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from data.dataset import Collate, EcholancerDataset, recorded_codec_levels
from data.sampler import BucketBatchSampler
from model.alignment import (
    alignment_image,
    alignment_loss,
    alignment_prior,
    cross_attention_maps,
    diagonality,
    prior_weight,
)
from model.echolancer import Echolancer
from model.generation_defaults import configure_generation, length_ratio_stats
from model.loss import EcholancerLoss, text_ctc_loss
from model.pretrained import export_echolancer
from pipeline import PipelineError
from training.engine import (
    autocast,
    build_adam,
    resolve_optimizer_impl,
    resolve_precision,
    seed_everything,
    training_attention,
)
from training.init_from import freeze_parts, init_from_pretrained
from training.loop import Cadence, Recipe, RunPlace, Validation
from training.metrics import MetricWindow, StepMetrics
from training.nonfinite import GuardedUpdate, NonFinitePolicy
from training.resume import apply_optimizer_settings, check_resume_compatible
from training.signals import worker_init_fn
from training.test_interval import TestInterval
from utils.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state
from utils.config import ConfigError, ModelConfig, TrainConfig, config_from_dict, config_to_dict
from utils.distributed import DistInfo, all_gather_objects, all_reduce_max, all_reduce_sum
from utils.early_stopping import EarlyStopping
from utils.phonemes import make_tokenizer
from utils.scheduler import build_scheduler

log = logging.getLogger("echolancer.train")
FORMAT_VERSION = 1
BATCH_KEYS = ("speakers", "texts", "src_lens", "mels", "mel_lens", "em_hidden", "vq_tokens", "vq_token_lens")
# A step's metrics computed on the device (read to the host once per log line, MetricWindow).
DEVICE_METRICS = ("train/loss", "train/ce", "train/stop", "train/align_loss", "train/accuracy", "train/grad_norm",
                  "train/tokens_per_s", "train/skipped", "train/text_ctc")


@dataclass
class RunPaths:
    """Where the data is, where the run writes, and the optional test-interval components."""

    train_data_dir: str
    val_data_dir: Optional[str]
    output_dir: str
    resume: Optional[str] = None
    bert_model: Optional[str] = None
    pre_encoder_dir: Optional[str] = None
    istftnet_dir: Optional[str] = None
    test_sentences: list[str] = field(default_factory=list)
    test_speakers: list[int] = field(default_factory=list)
    overwrite: bool = False  # a fresh run may replace another run's checkpoints (moved aside)
    init_from: Optional[str] = None  # a new run from these trained weights (training/init_from.py)
    export: bool = True  # write <output_dir>/export/echolancer.pt when training ends


@dataclass
class TrainResult:
    status: str  # "finished", "early_stopped", "time_budget", "interrupted", "nonfinite"
    step: int
    epoch: int
    best_val_loss: Optional[float]
    last_checkpoint: Optional[str]


class Trainer(Recipe):
    """The Echolancer recipe on the shared loop (``training/loop.py``): builds everything from the two
    configs (resuming when asked); :meth:`train` runs it.

    Args:
        model_cfg, train_cfg: validated configs (``utils.config.load_configs``).
        paths: data, output and test-interval locations.
        dist_info: this process's rank / world size / device (``utils.distributed.init_distributed``).
    """

    name = "train"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, paths: RunPaths, dist_info: DistInfo) -> None:
        super().__init__(RunPlace(paths.output_dir, paths.resume, paths.overwrite, paths.export, dist_info.is_main,
                                  paths.init_from))
        self.mcfg, self.tcfg, self.paths, self.dist = model_cfg, train_cfg, paths, dist_info
        tc = train_cfg.training
        self.device = dist_info.device
        self.seed, self.keep_last, self.wandb = tc.seed, tc.keep_last, train_cfg.wandb
        self.epoch_position = 0  # global batches of the current epoch already consumed (in checkpoints)
        self._resumed_rng: Optional[dict] = None
        self.start()

    # ---- construction ---------------------------------------------------------------------------

    def build(self) -> None:
        tc = self.tcfg.training
        self.precision = resolve_precision(tc.precision, self.device)
        self.tokenizer = make_tokenizer(self.mcfg.model.text_frontend)
        if self.mcfg.model.vocab_size < len(self.tokenizer):
            raise ConfigError(
                f"model.vocab_size ({self.mcfg.model.vocab_size}) must be >= the tokenizer's size "
                f"({len(self.tokenizer)})"
            )
        self._build_model()
        self._build_data()
        self._build_optimization()
        es = self.tcfg.early_stopping
        self.early_stopping = EarlyStopping(es.patience, es.min_delta, es.enabled)
        self.nonfinite = NonFinitePolicy(tc.max_nonfinite_steps)  # the engine's one policy
        self.update = GuardedUpdate(self.optimizer, self.scaler, self.nonfinite, on_device=self.deferred_nonfinite)
        max_steps = tc.max_steps if tc.max_steps is not None else math.inf
        self.cadence = Cadence(tc.log_step, tc.val_step, tc.save_step, max_steps=max_steps, max_epochs=tc.epochs,
                               check_step=tc.check_step, max_minutes=tc.max_minutes, validate_each_epoch=True)

    def _build_model(self) -> None:
        tc, dist = self.tcfg.training, self.dist
        # Same initial weights on every rank (DDP also broadcasts rank 0's), then per-rank RNG streams.
        seed_everything(tc.seed)
        self.model = Echolancer.from_config(self.mcfg).to(self.device)
        seed_everything(tc.seed + dist.rank)
        # The weights' source, saved in every checkpoint (a resumed run reads it back) and the W&B config.
        self.init_from: Optional[str] = None
        grown: dict = {}
        if self.paths.init_from:
            source = init_from_pretrained(self.model, self.mcfg, self.tokenizer, self.paths.init_from,
                                          self.paths.output_dir)
            self.init_from, grown = source.path, source.grown
            if dist.is_main:
                log.info("%s", source.describe())
        n_frozen = freeze_parts(self.model, tc.freeze, grown)
        if tc.freeze and dist.is_main:
            log.info("training.freeze: %s held fixed (%d of %d parameters; not in the optimizer)",
                     ", ".join(tc.freeze), n_frozen, self.model.num_parameters())

    def _build_data(self) -> None:
        tc, paths, dist = self.tcfg.training, self.paths, self.dist
        self.train_set = EcholancerDataset(paths.train_data_dir, self.mcfg, seed=tc.seed)
        levels, report = recorded_codec_levels(paths.train_data_dir)
        if self.mcfg.model.code_levels and levels is not None and levels != self.mcfg.model.code_levels:
            raise ConfigError(f"model.code_levels is {self.mcfg.model.code_levels}, but {report} says the codec that "
                              f"wrote this data has fsq_levels {levels}: set model.code_levels={levels} (or [])")
        self.val_set = EcholancerDataset(paths.val_data_dir, self.mcfg, seed=tc.seed) if paths.val_data_dir else None
        # Audio-per-text ratios of the training data: saved with checkpoints and exports, they bound
        # generation (model config ``generation``) in the test interval and at inference.
        self.length_stats = length_ratio_stats(self.train_set.text_lens, self.train_set.audio_lens)
        configure_generation(self.model, self.mcfg.generation, self.length_stats)
        self.collate = Collate(self.model.pad_id, pad_multiple=tc.pad_multiple)
        self.sampler = BucketBatchSampler(
            self.train_set.lengths(), tc.batch_size, tc.max_tokens, shuffle=True, seed=tc.seed,
            num_replicas=dist.world_size, rank=dist.rank,
        )
        self.steps_per_epoch = math.ceil(math.ceil(self.sampler.epoch_global_len() / dist.world_size)
                                         / tc.grad_acc_step)
        self.total_steps = self.tcfg.scheduler.total_steps or tc.max_steps or tc.epochs * self.steps_per_epoch
        self._train_loader: Optional[DataLoader] = None

    def _build_optimization(self) -> None:
        self.optimizer_impl = resolve_optimizer_impl(self.tcfg.optimizer.impl, self.device)
        self.optimizer = self._build_optimizer()
        # A fused optimizer skips a non-finite step on the device (its found_inf input): the step's
        # finiteness is then read with the metrics, not every step (docs/DESIGN.md, "Host syncs";
        # training/nonfinite.py, GuardedUpdate).
        self.deferred_nonfinite = self.optimizer_impl == "fused"
        self._attention, self._attention_what = training_attention(self.device)
        sc = self.tcfg.scheduler
        self.scheduler = build_scheduler(self.optimizer, sc.type, sc.warmup_steps, self.total_steps, sc.min_lr_ratio)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.criterion = EcholancerLoss(self.tcfg.loss.pos_weight, self.tcfg.loss.stop_weight)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        oc = self.tcfg.optimizer
        # No weight decay on biases, norms and embeddings' gains (1-D parameters). Frozen parameters
        # (training.freeze) stay out: weight decay would otherwise still move them.
        trained = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trained if p.dim() >= 2]
        no_decay = [p for p in trained if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": oc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return build_adam(oc.type, groups, self.optimizer_impl, lr=oc.learning_rate, betas=tuple(oc.betas),
                          eps=oc.eps)

    def ready(self) -> None:
        """The training module (DDP, compile), the start-up line, the test interval; the RNG last."""
        tc, dist = self.tcfg.training, self.dist
        # The module that runs the training forward: DDP wrapper and/or compiled graph.
        self.train_model: nn.Module = self.model
        self.ddp: Optional[DDP] = None
        if dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = self.train_model = DDP(self.model, device_ids=ids)
        if tc.compile:
            # Dynamic shapes: one graph for every batch length (the collate rounds lengths to
            # training.pad_multiple), not a recompile per new bucket.
            self.train_model = torch.compile(self.train_model, dynamic=True)
        if dist.is_main:
            log.info("optimizer: %s, %s implementation (optimizer.impl = %s); %s; %s", self.tcfg.optimizer.type,
                     self.optimizer_impl, self.tcfg.optimizer.impl, self._attention_what,
                     f"torch.compile (dynamic shapes, lengths padded to multiples of {tc.pad_multiple})"
                     if tc.compile else "not compiled")
        self.tester = None
        if dist.is_main:
            p = self.paths
            self.tester = TestInterval(
                self.model, self.tokenizer, p.output_dir, p.test_sentences or tc.test_sentences,
                p.test_speakers or tc.test_speakers, p.bert_model, p.pre_encoder_dir, p.istftnet_dir, self.device,
                seed=tc.seed, gen_kwargs={"max_length": tc.test_max_length, "temperature": tc.test_temperature},
                audio=self.mcfg.audio, score_with_asr=tc.eval_step is not None,
            )
        if self._resumed_rng is not None:  # last, so nothing above (W&B, DataLoader, compile) shifts the streams
            self._restore_rng(self._resumed_rng)

    def wandb_config(self) -> dict:
        return {"model": config_to_dict(self.mcfg), "train": config_to_dict(self.tcfg),
                "n_parameters": self.model.num_parameters(), "world_size": self.dist.world_size,
                "precision": self.precision, "optimizer_impl": self.optimizer_impl, "init_from": self.init_from}

    def _loader(self, dataset: EcholancerDataset, sampler: BucketBatchSampler, persistent: bool = False) -> DataLoader:
        nw = self.tcfg.training.num_workers
        # An explicit generator keeps DataLoader seeding off the global RNG (exact resume).
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.collate, num_workers=nw,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(self.tcfg.training.seed),
            worker_init_fn=worker_init_fn if nw > 0 else None, persistent_workers=persistent and nw > 0,
        )

    def train_loader(self) -> DataLoader:
        """The training DataLoader, built once: its workers persist across epochs (``iter()`` reads the
        sampler's epoch and position again; the dataset's epoch is in shared memory)."""
        if self._train_loader is None:
            self._train_loader = self._loader(self.train_set, self.sampler, persistent=True)
        return self._train_loader

    def _autocast(self):
        return autocast(self.precision, self.device)

    # ---- checkpoints ----------------------------------------------------------------------------

    def state_dict(self, rng: dict) -> dict:
        m = self.model
        return {
            "format_version": FORMAT_VERSION,
            "model": m.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "early_stopping": self.early_stopping.state_dict(),
            "rng": rng,
            "sampler": {"epoch": self.epoch, "position": self.epoch_position, "seed": self.sampler.seed,
                        "world_size": self.dist.world_size},
            "total_steps": self.total_steps,
            "nonfinite_total": self.nonfinite.total,
            "wandb_run_id": self.wandb_run_id,
            "model_config": config_to_dict(self.mcfg),
            "train_config": config_to_dict(self.tcfg),
            "tokenizer": self.tokenizer.to_dict(),
            "special_tokens": {"codebook_size": m.codebook_size, "bos_id": m.bos_id, "eos_id": m.eos_id,
                               "pad_id": m.pad_id},
            "length_stats": self.length_stats,
            "init_from": self.init_from,
        }

    def checkpoint_state(self, rng: Optional[dict] = None) -> Optional[dict]:
        """Every rank calls (RNG states are gathered from all of them); rank 0 gets the state."""
        self.resolve_nonfinite()  # the checkpoint's non-finite count is exact
        states = all_gather_objects(rng if rng is not None else capture_rng_state())
        if not self.dist.is_main:
            return None
        return self.state_dict({**states[0], "per_rank": states})

    def checkpoint_artifact(self, val_loss: Optional[float]) -> Optional[dict]:
        if val_loss is None or self.ckpt.best_step != self.step:
            return None
        return {"name": f"echolancer-{self.logger.run_id}", "aliases": ["best", f"step-{self.step}"]}

    def load_state_dict(self, ck: dict, where: str) -> None:
        """Load a checkpoint into model, optimizer, scheduler, scaler and counters (its RNG states are
        restored last, in :meth:`ready`)."""
        self._check_resumable(ck, where)
        self.init_from = ck.get("init_from")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        saved_total = ck.get("total_steps")
        if saved_total is not None and int(saved_total) != self.total_steps:
            log.warning("%s: the schedule's total_steps changes from %s to %d (from scheduler.total_steps, "
                        "training.max_steps or epochs); set scheduler.total_steps to keep the old schedule",
                        where, saved_total, self.total_steps)
        self.scheduler.load_state_dict(ck["scheduler"])
        oc = self.tcfg.optimizer
        # Policy (docs/DESIGN.md, "Resuming"): changed optimizer keys are applied and logged.
        apply_optimizer_settings(where, self.optimizer, self.scheduler, {
            "learning_rate": oc.learning_rate, "weight_decay": oc.weight_decay, "betas": oc.betas, "eps": oc.eps})
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch = int(ck["step"]), int(ck["epoch"])
        self.epoch_position = int(ck["sampler"]["position"])
        self.early_stopping.load_state_dict(ck["early_stopping"])
        self.nonfinite.total = int(ck.get("nonfinite_total", 0))
        self._resumed_rng = ck["rng"]

    def _check_resumable(self, ck: dict, where: str) -> None:
        """Refuse a checkpoint whose model or frozen parts differ from the configs."""
        if ck.get("model_config") is not None:
            # Read through the schema, so keys added since the checkpoint was written take their
            # defaults (ModelConfig.check_saved refuses the ones whose default would change the model).
            saved = config_to_dict(config_from_dict(ModelConfig, ck["model_config"], f"{where} (model_config)"))["model"]
            current = config_to_dict(self.mcfg)["model"]
            # The attention kernel computes the same function with the same weights: it may change.
            for section in (saved, current):
                section.pop("attention_backend", None)
            check_resume_compatible(where, {"model": (saved, current)})
        # The optimizer's parameter groups depend on what is frozen: a change would not load.
        saved_freeze = list((ck.get("train_config") or {}).get("training", {}).get("freeze", []))
        if saved_freeze != list(self.tcfg.training.freeze):
            raise ConfigError(f"{where}: training.freeze was {saved_freeze} in the checkpoint and is "
                              f"{list(self.tcfg.training.freeze)} now; a resumed run keeps what it froze")

    def resume_detail(self) -> str:
        return f" (epoch {self.epoch}, {self.epoch_position} batches into it)"

    def _restore_rng(self, rng: dict) -> None:
        per_rank = rng.get("per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            restore_rng_state(per_rank[self.dist.rank])
        elif self.dist.rank == 0:
            restore_rng_state(rng)
        else:  # a different world size: fresh, distinct streams for the other ranks
            seed_everything(self.tcfg.training.seed + 1000 * self.dist.rank + self.step)

    # ---- one step ---------------------------------------------------------------------------------

    def batches(self) -> Iterator[list[dict]]:
        """The rest of the current epoch, one step's micro-batches at a time (from the saved position)."""
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_position(self.epoch_position)
        self.train_set.set_epoch(self.epoch)
        it = iter(self.train_loader())
        while True:
            # A step cut short saves the RNG states of its start: the resumed run redoes it exactly.
            self.boundary_rng = capture_rng_state()
            micro = [b for _, b in zip(range(self.tcfg.training.grad_acc_step), it)]
            if not micro:
                return
            yield micro

    def end_epoch(self) -> None:
        self.epoch += 1
        self.epoch_position = 0

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k in BATCH_KEYS}

    def prior_weight(self) -> float:
        """The alignment prior's weight at the current step (training config ``alignment``)."""
        ac = self.tcfg.alignment
        return prior_weight(self.step, ac.prior, ac.prior_hold_steps, ac.prior_anneal_steps)

    def _forward_loss(self, model: nn.Module, batch: dict, normalizer, training: bool = False):
        # The alignment aids shape training only: validation measures the model as inference runs it.
        ac = self.tcfg.alignment
        bias = None
        if training:
            bias = alignment_prior(batch["src_lens"], batch["mel_lens"], batch["texts"].shape[1],
                                   batch["mels"].shape[1], ac.prior_scale, self.prior_weight())
        aligned = training and ac.loss_on
        with self._autocast():
            out = model(**batch, cross_bias=bias, return_cross_weights=aligned)
        lo = self.criterion(out, normalizer=normalizer)
        if aligned:
            lo.align = alignment_loss(out.cross_weights, batch["src_lens"], batch["mel_lens"] + 1, ac, normalizer)
            lo.total = lo.total + lo.align
        if training and out.text_logits is not None:
            weight = self.mcfg.model.decoder.text_ctc_weight
            lo.text_ctc = weight * text_ctc_loss(out.text_logits, batch["texts"], batch["src_lens"],
                                                 batch["mel_lens"] + 1, normalizer)
            lo.total = lo.total + lo.text_ctc
        return lo

    def train_step(self, micro: list[dict]) -> Optional[StepMetrics]:
        """One optimizer step over the micro-batches ``micro`` (CPU batches, as the loader gives them).

        Returns:
            the step's metrics (kept on the device until read, see :class:`StepMetrics`), or None if a
            stop was requested mid-accumulation (nothing applied).
        """
        with self._attention():  # the pinned SDPA backends (engine.TRAINING_SDPA_BACKENDS)
            metrics = self._train_step(micro)
        if metrics is not None:
            self.epoch_position += len(micro) * self.dist.world_size
        return metrics

    def _train_step(self, micro: list[dict]) -> Optional[StepMetrics]:
        t0 = time.perf_counter()
        # Token count from the CPU batch, before it moves: no device read. + EOS per row.
        n_local = sum(sum(b["mel_lens"].tolist()) + len(b["mel_lens"]) for b in micro)
        batches = [self._to_device(b) for b in micro]
        # torch.full is a fill kernel; torch.tensor(x, device=cuda) would be a blocking copy (a sync).
        n_global = all_reduce_sum(torch.full((), float(n_local), device=self.device))
        totals = self._accumulate(batches, n_global)
        if totals is None:
            return None
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.training.grad_clip_thresh)
        # (loss non-finite, gradient non-finite) on this rank, then on any rank: on the device.
        flags = all_reduce_max(torch.stack([~torch.isfinite(totals[0]), ~torch.isfinite(grad_norm)]).float())
        skipped = flags.amax()
        self.update.apply(flags, skipped)  # nothing applied on a non-finite step
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this update used
        prior_w = self.prior_weight()  # the weight this update used
        # The LR is a function of the step; a skipped step still advances it (it consumed data).
        self.scheduler.step()
        self.step += 1
        all_reduce_sum(totals)
        dt = time.perf_counter() - t0
        # float64, so the window's device sums equal the host sums of the per-step floats bit for bit.
        t64, n64 = totals.double(), n_global.double()
        values = torch.stack([t64[0], t64[1], t64[2], t64[3], t64[4] / n64.clamp_min(1.0), grad_norm.detach().double(),
                              n64 / max(dt, 1e-9), skipped.double(), t64[5]])
        return StepMetrics(DEVICE_METRICS, values, {"train/lr": lr, "train/align_prior_weight": prior_w})

    def _accumulate(self, batches: list[dict], n_global: torch.Tensor) -> Optional[torch.Tensor]:
        """Forward and backward of every micro-batch; returns the summed (loss, ce, stop, align,
        correct tokens, text CTC), or None when a stop request came between micro-batches (gradients dropped)."""
        # DDP averages gradients over ranks; multiply back so the step is sum / n_global overall.
        scale = float(self.dist.world_size)
        totals = torch.zeros(6, device=self.device)
        zero = torch.zeros((), device=self.device)
        for i, b in enumerate(batches):
            last = i == len(batches) - 1
            # Only the last micro-batch all-reduces gradients (the DDP module, even under torch.compile).
            sync = nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync:
                lo = self._forward_loss(self.train_model, b, n_global, training=True)
                self.scaler.scale(lo.total * scale).backward()
            totals += torch.stack([
                lo.total.detach().float(), lo.ce.detach().float(),
                (lo.stop.detach().float() if lo.stop is not None else zero),
                (lo.align.detach().float() if lo.align is not None else zero),
                lo.accuracy.detach().float() * lo.n_tokens,
                (lo.text_ctc.detach().float() if lo.text_ctc is not None else zero),
            ])
            if self.stop_requested and not last and not self.dist.enabled:
                self.optimizer.zero_grad(set_to_none=True)
                return None
        return totals

    def resolve_nonfinite(self) -> None:
        self.update.resolve()

    # ---- logging and validation -------------------------------------------------------------------

    def begin(self) -> None:
        self._window = MetricWindow(last_keys=("train/lr",))
        self.model.train()

    def record(self, metrics: StepMetrics) -> None:
        self._window.add(metrics)  # stays on the device until the log step reads the window

    def log_train(self) -> Optional[dict[str, str]]:
        avg = self._window.mean()  # the window's one host read: means over its steps, the last LR
        avg["train/nonfinite_skips"] = float(self.nonfinite.total)  # resolved by the loop: as of this step
        avg["train/epoch"] = float(self.epoch)
        self.logger.log(avg, self.step)
        self._window.clear()
        return {"loss": f"{avg['train/loss']:.3f}", "lr": f"{avg['train/lr']:.2e}",
                "tok_s": f"{avg['train/tokens_per_s']:.0f}"}

    @torch.no_grad()
    def validate(self) -> Optional[Validation]:
        """Token-weighted loss and accuracy over the whole validation set (all ranks together)."""
        if self.val_set is None:
            return None
        tc = self.tcfg.training
        sampler = BucketBatchSampler(self.val_set.lengths(), tc.batch_size, tc.max_tokens, shuffle=False,
                                     num_replicas=self.dist.world_size, rank=self.dist.rank)
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(4, device=self.device)  # loss*n, ce*n, correct, n
        for batch in self._loader(self.val_set, sampler):
            b = self._to_device(batch)
            lo = self._forward_loss(self.model, b, None)
            n = lo.n_tokens.float()
            sums += torch.stack([lo.total.float() * n, lo.ce.float() * n, lo.accuracy.float() * n, n])
        self.model.train(was_training)
        all_reduce_sum(sums)
        n = max(float(sums[3]), 1.0)
        metrics = {"val/loss": float(sums[0]) / n, "val/ce": float(sums[1]) / n, "val/accuracy": float(sums[2]) / n}
        # One notion of "best" (improvement by more than min_delta) for early stopping, best.pt and
        # the weights restored at the end; the loss is all-reduced, so every rank decides the same.
        # Validation runs without the alignment prior, so while the prior still shapes training its
        # loss says little about the final model (it rises while the prior carries the alignment:
        # measured on the speech recipe); such validations neither count nor make a best.
        return Validation(metrics["val/loss"], metrics, counts=self.prior_weight() == 0.0)

    def report_validation(self, val: Validation) -> None:
        """Log a validation with the best loss so far and the alignment picture."""
        vl, es = val.loss, self.early_stopping
        best = es.best_loss
        metrics = {**val.metrics, "val/best_loss": vl if best is None else best}
        if self.dist.is_main and self.val_set is not None and len(self.val_set) > 0:
            metrics["val/align_diagonality"] = self._log_alignment()
        self.logger.log(metrics, self.step)
        if self.dist.is_main:  # through logging, so train.log has it too
            log.info("step %d epoch %d: val loss %.4f ce %.4f acc %.3f diagonality %.2f (best %.4f, %s)",
                     self.step, self.epoch, vl, metrics["val/ce"], metrics["val/accuracy"],
                     metrics.get("val/align_diagonality", float("nan")), metrics["val/best_loss"],
                     f"{es.bad_validations}/{es.patience} without improvement"
                     if val.counts else "alignment prior on: not counted for early stopping")

    @torch.no_grad()
    def _log_alignment(self, n: int = 4) -> float:
        """Cross-attention of the first ``n`` validation utterances: a picture and how diagonal it is.

        Returns the mean diagonality of the most diagonal decoder layer (``model.alignment``); the
        picture is that layer's map of the first utterance.
        """
        items = [self.val_set[i] for i in range(min(n, len(self.val_set)))]
        batch = self._to_device(self.collate(items))
        with self._autocast():
            maps = cross_attention_maps(self.model, batch)
        tgt_lens = batch["mel_lens"] + 1  # + EOS
        scores = [float(diagonality(m, batch["src_lens"], tgt_lens).mean()) for m in maps]
        best = max(range(len(scores)), key=scores.__getitem__)
        image = alignment_image(maps[best][0], int(batch["src_lens"][0]), int(tgt_lens[0]))
        self.logger.log_image("val/alignment", image.cpu().numpy(), self.step,
                              caption=f"layer {best}: text upward, audio steps to the right")
        return scores[best]

    # ---- the run --------------------------------------------------------------------------------

    def planned_steps(self) -> float:
        return min(self.cadence.max_steps, self.tcfg.training.epochs * self.steps_per_epoch)

    @property
    def distributed(self) -> bool:
        return self.dist.enabled

    def any_rank(self, flag: bool) -> bool:
        if not self.dist.enabled:
            return flag
        return bool(all_reduce_max(torch.tensor(float(flag), device=self.device)) > 0)

    def train(self) -> TrainResult:
        """Run the loop; the result says how it ended."""
        status = self.run()
        return TrainResult(status, self.step, self.epoch, self.early_stopping.best_loss, self.last_checkpoint)

    def after_step(self) -> None:
        tc = self.tcfg.training
        score = tc.eval_step is not None and self.step % tc.eval_step == 0
        if self.step % tc.test_step == 0 or score:
            self._test_interval(score)

    def _test_interval(self, score: bool) -> None:
        """Synthesise the test sentences (rank 0). A failure is never skipped and never loses the run:
        every rank learns of it (the save gathers from all ranks), the step is saved, then it raises."""
        error: Optional[BaseException] = None
        if self.tester is not None:
            try:
                self.tester.run(self.step, self.logger, score=score)
            except Exception as e:
                error = e
        if not self.any_rank(error is not None):
            return
        if self.saved_step != self.step:
            self.save()
        if error is None:  # another rank's failure (rank 0 runs the test interval)
            raise PipelineError("test interval", f"failed on rank 0 at step {self.step}; see its log")
        log.error("test interval failed at step %d; state saved to %s", self.step, self.last_checkpoint)
        raise error

    def export(self) -> Optional[str]:
        """Restore the best weights (``early_stopping.restore_best``), then write the inference export."""
        self._restore_best()
        if not (self.paths.export and self.dist.is_main):
            return None
        path = export_echolancer(self.model, self.mcfg, self.tokenizer, os.path.join(self.paths.output_dir, "export"),
                                 self.step, length_stats=self.length_stats)
        log.info("inference export: %s", path)
        return path

    def _restore_best(self) -> None:
        if not self.tcfg.early_stopping.restore_best or self.ckpt is None or self.ckpt.best_path is None:
            return
        best = load_checkpoint(self.ckpt.best_path, map_location=self.device)
        self.model.load_state_dict(best["model"])
        log.info("restored the best weights (step %s, val loss %.4f) from %s", self.ckpt.best_step,
                 self.ckpt.best_loss, self.ckpt.best_path)

    def close(self, status: str) -> None:
        self.logger.summary({"final_step": self.step, "status": status,
                             "best_val_loss": self.early_stopping.best_loss})
        self.logger.finish()
        if self.dist.is_main:  # how far the run got against its plan, for the recipe's summary
            self._write_result(status)

    def _write_result(self, status: str) -> None:
        """``OUTPUT/train_result.json``: status, steps reached and planned, minutes, best validation."""
        max_steps = self.cadence.max_steps
        result = {"status": status, "step": self.step,
                  "max_steps": None if math.isinf(max_steps) else int(max_steps),
                  "minutes": round((time.perf_counter() - self.started) / 60, 2),
                  "max_minutes": self.tcfg.training.max_minutes, "best_val_loss": self.early_stopping.best_loss}
        with open(os.path.join(self.paths.output_dir, "train_result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
