"""The pre-encoder recipe: train the FSQ mel codec on a folder of audio files and export it.

``train_preencoder.py`` is its command line. Mels come from :func:`utils.audio.mel_spectrogram` (the
one shared mel function) and are cached in ``<output_dir>/mel_cache.pt``. Training crops random
``segment_frames`` windows, minimises masked L1 + L2 reconstruction, validates on held-out whole
clips; the shared loop (``training/loop.py``) resumes, saves, handles signals and the non-finite
policy. Resume is exact: batches are seeded by (seed, step). When
training ends it exports the best validated weights to ``<output_dir>/export/``: the TorchScript
files :class:`scripted_preencoder.ScriptedPreEncoder` loads (``model_cpu.pt``, ``model_cuda.pt``
with CUDA), ``model_config.yaml``, and ``weights.pt`` (tensors only), written and read back by
``model/preencoder_artifact.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from tqdm import tqdm

from model.preencoder import PreEncoder, lengths_to_mask, reconstruction_loss
from model.preencoder_artifact import export_preencoder, model_from_checkpoint
from training.audio_files import find_audio_files
from training.engine import autocast, resolve_precision
from training.loop import Cadence, Recipe, RunPlace, Validation
from training.nonfinite import NonFinitePolicy
from training.resume import apply_optimizer_settings, check_resume_compatible
from utils.audio import griffin_lim, load_wav, mel_spectrogram
from utils.checkpoint import CheckpointError, CheckpointManager, capture_rng_state, restore_rng_state
from utils.config import config_from_dict, config_to_dict
from utils.config.preencoder import PreEncoderConfig
from utils.device import pick_device
from utils.scheduler import build_scheduler

log = logging.getLogger("echolancer.train")

MAX_VAL_FRAMES = 1000  # longer validation clips are cut (bounds memory and time)


# --------------------------------------------------------------------------------------------
# Data: whole-clip mels in memory, random crops per step
# --------------------------------------------------------------------------------------------


def load_mels(files: list[str], cfg: PreEncoderConfig, cache_path: Optional[str]) -> list[Tensor]:
    """Mel of every file as (T, n_mels) float32, from the cache when it matches files and settings."""
    key = {"files": [os.path.abspath(f) for f in files], "mtimes": [os.path.getmtime(f) for f in files],
           "audio": config_to_dict(cfg.audio)}
    if cache_path and os.path.isfile(cache_path):
        cached = torch.load(cache_path, weights_only=True)
        if cached.get("key") == key:
            return list(cached["mels"])
    mels = []
    for f in tqdm(files, desc="mels", unit="file", leave=False):
        wav = load_wav(f, cfg.audio.sampling_rate)
        if wav.numel() < cfg.audio.n_fft:
            raise ValueError(f"{f}: {wav.numel()} samples is shorter than one FFT window ({cfg.audio.n_fft})")
        mels.append(mel_spectrogram(wav, cfg.audio)[0].T.contiguous())
    if cache_path:
        torch.save({"key": key, "mels": mels}, cache_path)
    return mels


def split_files(n: int, cfg: PreEncoderConfig) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of ``n`` clips (seeded permutation)."""
    t = cfg.training
    n_val = 0
    if n >= 2 and t.val_fraction > 0:
        n_val = min(max(1, round(n * t.val_fraction)), t.max_val_files, n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def pad_batch(mels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """List of (T_i, C) -> (B, T_max, C) padded with zeros, mask (B, 1, T_max) True = pad."""
    lengths = torch.tensor([m.shape[0] for m in mels])
    out = torch.zeros(len(mels), int(lengths.max()), mels[0].shape[1])
    for i, m in enumerate(mels):
        out[i, : m.shape[0]] = m
    return out, lengths_to_mask(lengths, out.shape[1])


def sample_batch(mels: list[Tensor], train_ids: list[int], step: int, cfg: PreEncoderConfig) -> tuple[Tensor, Tensor]:
    """Random clips and random ``segment_frames`` crops for ``step``.

    The generator is seeded from (seed, step), so a resumed run draws exactly the batches an
    uninterrupted one would have, without saving sampler state.
    """
    t = cfg.training
    g = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
    picks = torch.randint(len(train_ids), (t.batch_size,), generator=g).tolist()
    crops = []
    for p in picks:
        m = mels[train_ids[p]]
        start = int(torch.randint(max(1, m.shape[0] - t.segment_frames + 1), (1,), generator=g))
        crops.append(m[start: start + t.segment_frames])
    return pad_batch(crops)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class ValResult:
    loss: float
    l1: float
    l2: float
    first_target: Tensor  # (T, C) of the first validation clip
    first_recon: Tensor


@torch.no_grad()
def validate(model: PreEncoder, mels: list[Tensor], ids: list[int], cfg: PreEncoderConfig,
             device: torch.device) -> Optional[ValResult]:
    """Masked reconstruction loss over held-out whole clips (frame-weighted mean)."""
    if not ids:
        return None
    model.eval()
    t = cfg.training
    tot = l1s = l2s = 0.0
    frames = 0
    first = None
    for i in range(0, len(ids), t.batch_size):
        batch, mask = pad_batch([mels[j][:MAX_VAL_FRAMES] for j in ids[i: i + t.batch_size]])
        batch, mask = batch.to(device), mask.to(device)
        recon, _ = model(batch, mask)
        loss, l1, l2 = reconstruction_loss(recon, batch, mask, t.l1_weight, t.l2_weight)
        n = int((~mask).sum())
        tot, l1s, l2s, frames = tot + float(loss) * n, l1s + float(l1) * n, l2s + float(l2) * n, frames + n
        if first is None:
            length = int((~mask[0, 0]).sum())
            first = (batch[0, :length].cpu(), recon[0, :length].cpu())
    model.train()
    return ValResult(tot / frames, l1s / frames, l2s / frames, first[0], first[1])


@dataclass
class PreEncoderResult:
    status: str  # "finished", "interrupted", "nonfinite"
    step: int
    export_dir: Optional[str]
    last_checkpoint: Optional[str]


class PreEncoderRecipe(Recipe):
    """The codec's recipe for the shared loop (``training/loop.py``): random crops seeded by the step,
    one AdamW step of masked L1 + L2 each, validation on whole held-out clips.

    Args:
        cfg: the validated pre-encoder config.
        data_dir: the audio files (searched recursively).
        place: where the run writes and how it starts (resume, overwrite, export).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (None: the local GPU if any).
    """

    name = "pre-encoder"
    bar_unit = "step"

    def __init__(self, cfg: PreEncoderConfig, data_dir: str, place: RunPlace, device: Optional[str] = None) -> None:
        super().__init__(place)
        self.cfg, self.data_dir = cfg, data_dir
        t = cfg.training
        self.device = pick_device(device)
        self.seed, self.keep_last, self.wandb = t.seed, t.keep_last, cfg.wandb
        self._last: Optional[dict] = None
        self.start()

    def build(self) -> None:
        t, dev = self.cfg.training, self.device
        os.makedirs(self.output_dir, exist_ok=True)
        files = find_audio_files(self.data_dir)
        self.mels = load_mels(files, self.cfg, os.path.join(self.output_dir, "mel_cache.pt"))
        self.train_ids, self.val_ids = split_files(len(self.mels), self.cfg)
        self.model = PreEncoder.from_config(self.cfg).to(dev).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.learning_rate, betas=tuple(t.betas),
                                     weight_decay=t.weight_decay)
        self.sched = build_scheduler(self.opt, "warmup_cosine", t.warmup_steps, t.max_steps, t.min_lr_ratio)
        self.nonfinite = NonFinitePolicy(t.max_nonfinite_steps)
        self.precision = resolve_precision(t.precision, dev)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.cadence = Cadence(t.log_step, t.val_step, t.save_step, max_steps=t.max_steps, at_the_last_step=True)

    def ready(self) -> None:
        log.info("pre-encoder: %s parameters, %d training / %d validation clips, device %s",
                 f"{sum(p.numel() for p in self.model.parameters()):,}", len(self.train_ids), len(self.val_ids),
                 self.device)

    def wandb_config(self) -> dict:
        return config_to_dict(self.cfg)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:  # crops drawn for the step they train (exact resume without sampler state)
            yield sample_batch(self.mels, self.train_ids, self.step, self.cfg)

    def train_step(self, batch: tuple[Tensor, Tensor]) -> dict:
        """One AdamW step on a (mels, pad mask) batch; a non-finite loss or gradient applies nothing."""
        t, dev, model, opt, scaler = self.cfg.training, self.device, self.model, self.opt, self.scaler
        mel, mask = batch[0].to(dev), batch[1].to(dev)
        with autocast(self.precision, dev):
            recon, idx = model(mel, mask)
        loss, l1, l2 = reconstruction_loss(recon.float(), mel, mask, t.l1_weight, t.l2_weight)
        opt.zero_grad(set_to_none=True)
        finite, grad_norm = bool(torch.isfinite(loss)), None
        if finite:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_thresh)
            finite = bool(torch.isfinite(grad_norm))
        self.nonfinite.record(finite)
        if finite:
            scaler.step(opt)
        if scaler.is_enabled():
            scaler.update()
        opt.zero_grad(set_to_none=True)
        self.sched.step()  # a skipped step still advances the schedule (engine policy)
        self.step += 1
        return {"finite": finite, "loss": loss, "l1": l1, "l2": l2, "grad_norm": grad_norm, "idx": idx, "mask": mask}

    def record(self, metrics: dict) -> None:
        self._last = metrics

    def log_train(self) -> Optional[dict[str, str]]:
        m = self._last
        if m is None or not m["finite"]:
            return None
        used = m["idx"][~self.model.token_mask(m["mask"])[:, 0]].unique().numel()  # tokens: frames / downsample
        self.logger.log({"train/loss": m["loss"].item(), "train/l1": m["l1"].item(), "train/l2": m["l2"].item(),
                         "train/grad_norm": float(m["grad_norm"]), "train/lr": self.sched.get_last_lr()[0],
                         "train/codes_used": used, "train/code_usage": used / self.model.codebook_size,
                         "train/nonfinite_skips": self.nonfinite.total}, self.step)
        return {"loss": f"{m['loss'].item():.3f}", "codes": str(used)}

    def validate(self) -> Optional[Validation]:
        val = validate(self.model, self.mels, self.val_ids, self.cfg, self.device)
        if val is None:
            return None
        return Validation(val.loss, {"val/loss": val.loss, "val/l1": val.l1, "val/l2": val.l2}, details=val)

    def report_validation(self, val: Validation) -> None:
        v, step = val.details, self.step
        self.logger.log(val.metrics, step)
        log.info("step %d: val loss %.4f (l1 %.4f, l2 %.4f)", step, v.loss, v.l1, v.l2)
        image = torch.cat([v.first_target.T.flip(0), v.first_recon.T.flip(0)], dim=0)
        self.logger.log_image("val/mel_target_over_recon", image.numpy(), step)
        wav = griffin_lim(v.first_recon.T, self.cfg.audio)
        self.logger.log_audio("val/recon_griffin_lim", wav.numpy(), self.cfg.audio.sampling_rate, step)

    def checkpoint_state(self, rng: Optional[dict] = None) -> dict:
        return {"kind": "preencoder", "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": self.step, "config": config_to_dict(self.cfg),
                "rng": rng if rng is not None else capture_rng_state(), "nonfinite_total": self.nonfinite.total,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict, source: str) -> None:
        if state.get("kind") != "preencoder":
            raise CheckpointError(f"{source}: not a pre-encoder checkpoint (kind={state.get('kind')!r})")
        cfg, t = self.cfg, self.cfg.training
        stored = config_from_dict(PreEncoderConfig, state["config"], f"{source} (stored config)")
        check_resume_compatible(source, {"model": (config_to_dict(stored.model), config_to_dict(cfg.model)),
                                         "audio": (config_to_dict(stored.audio), config_to_dict(cfg.audio))})
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        apply_optimizer_settings(source, self.opt, self.sched, {"learning_rate": t.learning_rate,
                                                                "weight_decay": t.weight_decay, "betas": t.betas},
                                 key_prefix="training")
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.nonfinite.total = int(state.get("nonfinite_total", 0))
        restore_rng_state(state["rng"])

    def checkpoint_artifact(self, val_loss: Optional[float]) -> dict:
        return {"name": "preencoder", "type": "model", "aliases": [f"step_{self.step}"]}

    def export(self) -> Optional[str]:
        if not self.place.export:
            return None
        export_dir = os.path.join(self.output_dir, "export")
        export_best(self.ckpt, self.model, self.cfg, export_dir)
        return export_dir


def train(cfg: PreEncoderConfig, data_dir: str, output_dir: str, resume: Optional[str] = None,
          device: Optional[str] = None, overwrite: bool = False, export: bool = True) -> PreEncoderResult:
    """Train, checkpoint and (when it ends normally) export.

    Args:
        resume: a checkpoint file or directory to continue from (None: a fresh run).
        overwrite: a fresh run may replace another run's checkpoints in ``output_dir`` (moved aside).
    """
    recipe = PreEncoderRecipe(cfg, data_dir, RunPlace(output_dir, resume, overwrite, export), device)
    status = recipe.run()
    return PreEncoderResult(status, recipe.step, recipe.export_dir, recipe.last_checkpoint)


def export_best(manager: CheckpointManager, model: PreEncoder, cfg: PreEncoderConfig, export_dir: str) -> list[str]:
    """Export the best validated weights (``best.pt``) when there are any, else ``model``'s."""
    final, best = model, manager.best_path
    if best is not None:
        final, _, best_step = model_from_checkpoint(best)
        log.info("exporting the best checkpoint (step %d, val loss %.4f)", best_step, manager.best_loss)
    written = export_preencoder(final, cfg, export_dir)
    for path in written:
        log.info("wrote %s", path)
    return written
