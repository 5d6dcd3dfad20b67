"""The pre-encoder recipe: train the FSQ mel codec on a folder of audio files and export it.

``train_preencoder.py`` is its command line. Mels come from :func:`utils.audio.mel_spectrogram` (the
one shared mel function) and are cached in ``<output_dir>/mel_cache.pt``. Training crops random
``segment_frames`` windows, minimises masked L1 + L2 reconstruction, validates on held-out whole
clips and checkpoints through the engine (``training/engine.py``: output-directory safety, signals,
the non-finite policy, resume checks). Resume is exact: batches are seeded by (seed, step). When
training ends it exports the best validated weights to ``<output_dir>/export/``: the TorchScript
files :class:`scripted_preencoder.ScriptedPreEncoder` loads (``model_cpu.pt``, ``model_cuda.pt``
with CUDA), ``model_config.yaml``, and ``weights.pt`` (tensors only), written and read back by
``model/preencoder_artifact.py``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from tqdm import tqdm

from model.preencoder import PreEncoder, lengths_to_mask, reconstruction_loss
from model.preencoder_artifact import export_preencoder, model_from_checkpoint
from training.engine import (
    NonFinitePolicy,
    StopSignals,
    apply_optimizer_settings,
    autocast,
    check_resume_compatible,
    prepare_output_dir,
    resolve_precision,
    seed_everything,
)
from utils.audio import griffin_lim, load_wav, mel_spectrogram
from utils.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    checkpoint_name,
    load_checkpoint,
    restore_rng_state,
)
from utils.config import config_from_dict, config_to_dict
from utils.config.preencoder import PreEncoderConfig
from utils.device import pick_device
from utils.logger import Logger
from utils.scheduler import build_scheduler

log = logging.getLogger("echolancer.train")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
MAX_VAL_FRAMES = 1000  # longer validation clips are cut (bounds memory and time)


# --------------------------------------------------------------------------------------------
# Data: whole-clip mels in memory, random crops per step
# --------------------------------------------------------------------------------------------


def find_audio_files(data_dir: str) -> list[str]:
    """All audio files under ``data_dir`` (recursive), sorted so every run sees the same order."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir}: no such directory")
    found = []
    for root, _, names in os.walk(data_dir):
        found += [os.path.join(root, n) for n in names if n.lower().endswith(AUDIO_EXTENSIONS)]
    if not found:
        raise FileNotFoundError(f"--data_dir {data_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return sorted(found)


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


def train(cfg: PreEncoderConfig, data_dir: str, output_dir: str, resume: Optional[str] = None,
          device: Optional[str] = None, overwrite: bool = False, export: bool = True) -> PreEncoderResult:
    """Train, checkpoint and (when it ends normally) export.

    Args:
        resume: a checkpoint file or directory to continue from (None: a fresh run).
        overwrite: a fresh run may replace another run's checkpoints in ``output_dir`` (moved aside).
    """
    t = cfg.training
    dev = pick_device(device)
    prepare_output_dir(output_dir, resume, overwrite)
    os.makedirs(output_dir, exist_ok=True)
    ckpt_dir = os.path.join(output_dir, "ckpt")
    seed_everything(t.seed)

    files = find_audio_files(data_dir)
    mels = load_mels(files, cfg, os.path.join(output_dir, "mel_cache.pt"))
    train_ids, val_ids = split_files(len(mels), cfg)

    model = PreEncoder.from_config(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, betas=tuple(t.betas), weight_decay=t.weight_decay)
    sched = build_scheduler(opt, "warmup_cosine", t.warmup_steps, t.max_steps, t.min_lr_ratio)
    manager = CheckpointManager(ckpt_dir, keep_last=t.keep_last, adopt_existing=resume is not None)
    nonfinite = NonFinitePolicy(t.max_nonfinite_steps)
    precision = resolve_precision(t.precision, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    step, run_id = 0, None
    if resume is not None:
        state = load_checkpoint(resume)  # raises clearly if there is nothing to resume
        if state.get("kind") != "preencoder":
            raise CheckpointError(f"{resume}: not a pre-encoder checkpoint (kind={state.get('kind')!r})")
        stored = config_from_dict(PreEncoderConfig, state["config"], f"{resume} (stored config)")
        check_resume_compatible(resume, {"model": (config_to_dict(stored.model), config_to_dict(cfg.model)),
                                         "audio": (config_to_dict(stored.audio), config_to_dict(cfg.audio))})
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        apply_optimizer_settings(resume, opt, sched, {"learning_rate": t.learning_rate, "weight_decay": t.weight_decay,
                                                      "betas": t.betas}, key_prefix="training")
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        nonfinite.total = int(state.get("nonfinite_total", 0))
        run_id = state.get("wandb_run_id")
        restore_rng_state(state["rng"])
        log.info("resumed from %s at step %d", resume, step)

    logger = Logger(output_dir, project=cfg.wandb.project, mode=cfg.wandb.mode, run_name=cfg.wandb.run_name,
                    entity=cfg.wandb.entity, config=config_to_dict(cfg), run_id=run_id)
    log.info("pre-encoder: %s parameters, %d training / %d validation clips, device %s",
             f"{sum(p.numel() for p in model.parameters()):,}", len(train_ids), len(val_ids), dev)
    last_checkpoint: Optional[str] = None

    def save(val_loss: Optional[float]) -> None:
        nonlocal last_checkpoint
        state = {"kind": "preencoder", "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "step": step, "config": config_to_dict(cfg),
                 "rng": capture_rng_state(), "wandb_run_id": logger.run_id, "nonfinite_total": nonfinite.total,
                 "scaler": scaler.state_dict()}
        last_checkpoint = manager.save(state, step, val_loss)
        log.info("saved %s", last_checkpoint)
        if cfg.wandb.log_checkpoints:
            logger.log_artifact(last_checkpoint, name="preencoder", type="model", aliases=[f"step_{step}"])

    status = "finished"
    bar = tqdm(total=t.max_steps, initial=step, desc="pre-encoder", unit="step", dynamic_ncols=True)
    try:
        with StopSignals() as signals:
            while step < t.max_steps:
                if signals.requested:
                    if last_checkpoint is None or not last_checkpoint.endswith(checkpoint_name(step)):
                        save(None)
                    status = "interrupted"
                    break
                batch, mask = sample_batch(mels, train_ids, step, cfg)
                batch, mask = batch.to(dev), mask.to(dev)
                with autocast(precision, dev):
                    recon, idx = model(batch, mask)
                loss, l1, l2 = reconstruction_loss(recon.float(), batch, mask, t.l1_weight, t.l2_weight)
                opt.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss))
                if finite:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_thresh)
                    finite = bool(torch.isfinite(grad_norm))
                nonfinite.record(finite)
                if finite:
                    scaler.step(opt)
                if scaler.is_enabled():
                    scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()  # a skipped step still advances the schedule (engine policy)
                step += 1
                bar.update(1)
                if nonfinite.should_stop:
                    save(None)
                    log.error("%s; last good state saved to %s", nonfinite.message(step), last_checkpoint)
                    status = "nonfinite"
                    break

                if finite and step % t.log_step == 0:
                    used = idx[~model.token_mask(mask)[:, 0]].unique().numel()  # tokens: frames / downsample
                    metrics = {"train/loss": loss.item(), "train/l1": l1.item(), "train/l2": l2.item(),
                               "train/grad_norm": float(grad_norm), "train/lr": sched.get_last_lr()[0],
                               "train/codes_used": used, "train/code_usage": used / model.codebook_size,
                               "train/nonfinite_skips": nonfinite.total}
                    logger.log(metrics, step)
                    bar.set_postfix(loss=f"{loss.item():.3f}", codes=used)
                val_loss = None
                if step % t.val_step == 0 or step == t.max_steps:
                    val = validate(model, mels, val_ids, cfg, dev)
                    if val is not None:
                        val_loss = val.loss
                        logger.log({"val/loss": val.loss, "val/l1": val.l1, "val/l2": val.l2}, step)
                        log.info("step %d: val loss %.4f (l1 %.4f, l2 %.4f)", step, val.loss, val.l1, val.l2)
                        image = torch.cat([val.first_target.T.flip(0), val.first_recon.T.flip(0)], dim=0)
                        logger.log_image("val/mel_target_over_recon", image.numpy(), step)
                        wav = griffin_lim(val.first_recon.T, cfg.audio)
                        logger.log_audio("val/recon_griffin_lim", wav.numpy(), cfg.audio.sampling_rate, step)
                if step % t.save_step == 0 or step == t.max_steps:
                    save(val_loss)
    finally:
        bar.close()
        logger.finish()

    export_dir = None
    if status == "finished" and export:
        export_dir = os.path.join(output_dir, "export")
        export_best(manager, model, cfg, export_dir)
    return PreEncoderResult(status, step, export_dir, last_checkpoint)


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
