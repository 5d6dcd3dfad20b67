"""Train the FSQ mel pre-encoder on a folder of audio files, and export it as TorchScript.

    python train_preencoder.py --config config/preencoder.yaml --data_dir ./wavs --output_dir ./runs/pe
    python train_preencoder.py --config config/preencoder.yaml --data_dir ./wavs --output_dir ./runs/pe --resume
    python train_preencoder.py --config config/preencoder.yaml --output_dir ./runs/pe \
        --export ./runs/pe/ckpt          # export only (a checkpoint file or directory)

Mels come from :func:`utils.audio.mel_spectrogram` (the one shared mel function) and are cached in
``<output_dir>/mel_cache.pt``. Training crops random ``segment_frames`` windows, minimises masked
L1 + L2 reconstruction, logs to W&B (offline by default), validates on held-out whole clips,
checkpoints through :mod:`utils.checkpoint` (resume restores model, optimiser, scheduler, step,
RNG and the W&B run) and, when it finishes, exports ``<output_dir>/export/`` in the format that
:class:`scripted_preencoder.ScriptedPreEncoder` loads (``model_cpu.pt``, ``model_cuda.pt`` when
CUDA is available, ``model_config.yaml``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import yaml
from torch import Tensor
from tqdm import tqdm

from model.preencoder import PreEncoder, lengths_to_mask, reconstruction_loss
from utils.audio import griffin_lim, load_wav, mel_spectrogram
from utils.checkpoint import CheckpointError, CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from utils.config import ConfigError, config_from_dict, config_to_dict, load_config
from utils.logger import Logger
from utils.preencoder_config import PreEncoderConfig
from utils.scheduler import build_scheduler

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
# Export
# --------------------------------------------------------------------------------------------


def export_preencoder(model: PreEncoder, cfg: PreEncoderConfig, out_dir: str) -> list[str]:
    """Write the TorchScript directory: ``model_cpu.pt`` (+ ``model_cuda.pt``) and ``model_config.yaml``.

    Each saved module is loaded back and must give the eager model's codes and mels on a probe
    batch, or this raises: an export that silently differs is worse than none.

    Returns:
        the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    eager = copy.deepcopy(model).float().cpu().eval()
    written = []
    targets = [("cpu", "model_cpu.pt")] + ([("cuda", "model_cuda.pt")] if torch.cuda.is_available() else [])
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 37, eager.mel_channels, generator=g) * cfg.model.generator.mel_std + cfg.model.generator.mel_mean
    probe_mask = lengths_to_mask(torch.tensor([37, 21]), 37)
    with torch.no_grad():
        ref_idx = eager.encode(probe, probe_mask)
        ref_mel = eager.decode(ref_idx, eager.token_mask(probe_mask))
    for device, name in targets:
        path = os.path.join(out_dir, name)
        scripted = torch.jit.script(copy.deepcopy(eager).to(device))
        torch.jit.save(scripted, path)
        loaded = torch.jit.load(path, map_location=device)
        with torch.no_grad():
            idx = loaded.encode(probe.to(device), probe_mask.to(device)).cpu()
            mel = loaded.decode(ref_idx.to(device), eager.token_mask(probe_mask).to(device)).cpu()
        # CUDA kernels may round differently, so only the CPU export must match bit for bit.
        same = torch.equal(idx, ref_idx) if device == "cpu" else float((idx == ref_idx).float().mean()) > 0.99
        if not same or not torch.allclose(mel, ref_mel, atol=1e-3, rtol=1e-4):
            raise RuntimeError(f"export check failed: {path} disagrees with the eager model on a probe batch")
        written.append(path)
    cfg_path = os.path.join(out_dir, "model_config.yaml")
    with open(cfg_path, "w", encoding="utf-8") as f:
        f.write("# Exported FSQ pre-encoder; load with scripted_preencoder.ScriptedPreEncoder(<this dir>).\n")
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
    written.append(cfg_path)
    return written


def model_from_checkpoint(path_or_dir: str) -> tuple[PreEncoder, PreEncoderConfig, int]:
    """Rebuild the eager model from a training checkpoint (file or directory: newest)."""
    state = load_checkpoint(path_or_dir)
    if state.get("kind") != "preencoder":
        raise ValueError(f"{path_or_dir}: not a pre-encoder checkpoint (kind={state.get('kind')!r})")
    cfg = config_from_dict(PreEncoderConfig, state["config"], f"{path_or_dir} (stored config)")
    model = PreEncoder.from_config(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, int(state["step"])


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


def train(cfg: PreEncoderConfig, data_dir: str, output_dir: str, resume: bool = False,
          device: Optional[str] = None) -> str:
    """Train, checkpoint and export. Returns the export directory."""
    t = cfg.training
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(output_dir, exist_ok=True)
    ckpt_dir = os.path.join(output_dir, "ckpt")
    torch.manual_seed(t.seed)

    files = find_audio_files(data_dir)
    mels = load_mels(files, cfg, os.path.join(output_dir, "mel_cache.pt"))
    train_ids, val_ids = split_files(len(mels), cfg)

    model = PreEncoder.from_config(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, betas=tuple(t.betas), weight_decay=t.weight_decay)
    sched = build_scheduler(opt, "warmup_cosine", t.warmup_steps, t.max_steps, t.min_lr_ratio)
    manager = CheckpointManager(ckpt_dir, keep_last=t.keep_last)

    step, run_id = 0, None
    if resume:
        state = load_checkpoint(ckpt_dir)  # raises clearly if there is nothing to resume
        stored = config_from_dict(PreEncoderConfig, state["config"], f"{ckpt_dir} (stored config)")
        if config_to_dict(stored.model) != config_to_dict(cfg.model) or config_to_dict(stored.audio) != config_to_dict(cfg.audio):
            raise ConfigError(f"--resume: the model/audio settings of {ckpt_dir} differ from --config; "
                              "resume with the config the run was started with")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        run_id = state.get("wandb_run_id")
        restore_rng_state(state["rng"])
        print(f"resumed from step {step} ({ckpt_dir})")

    logger = Logger(output_dir, project=cfg.wandb.project, mode=cfg.wandb.mode, run_name=cfg.wandb.run_name,
                    entity=cfg.wandb.entity, config=config_to_dict(cfg), run_id=run_id)
    print(f"pre-encoder: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train_ids)} training / {len(val_ids)} validation clips, device {dev}")

    def save(val_loss: Optional[float]) -> None:
        state = {"kind": "preencoder", "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "step": step, "config": config_to_dict(cfg),
                 "rng": capture_rng_state(), "wandb_run_id": logger.run_id}
        path = manager.save(state, step, val_loss)
        if cfg.wandb.log_checkpoints:
            logger.log_artifact(path, name="preencoder", type="model", aliases=[f"step_{step}"])

    nonfinite = 0
    bar = tqdm(total=t.max_steps, initial=step, desc="pre-encoder", unit="step", dynamic_ncols=True)
    while step < t.max_steps:
        batch, mask = sample_batch(mels, train_ids, step, cfg)
        batch, mask = batch.to(dev), mask.to(dev)
        recon, idx = model(batch, mask)
        loss, l1, l2 = reconstruction_loss(recon, batch, mask, t.l1_weight, t.l2_weight)
        if not torch.isfinite(loss):
            nonfinite += 1
            opt.zero_grad(set_to_none=True)
            if nonfinite >= t.max_nonfinite_steps:
                raise RuntimeError(f"{nonfinite} consecutive non-finite losses at step {step}; "
                                   "lower training.learning_rate or check the data")
            step += 1
            bar.update(1)
            continue
        nonfinite = 0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_thresh)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)

        if step % t.log_step == 0:
            used = idx[~mask[:, 0]].unique().numel()
            metrics = {"train/loss": loss.item(), "train/l1": l1.item(), "train/l2": l2.item(),
                       "train/grad_norm": float(grad_norm), "train/lr": sched.get_last_lr()[0],
                       "train/codes_used": used, "train/code_usage": used / model.codebook_size}
            logger.log(metrics, step)
            bar.set_postfix(loss=f"{loss.item():.3f}", codes=used)
        val_loss = None
        if step % t.val_step == 0 or step == t.max_steps:
            val = validate(model, mels, val_ids, cfg, dev)
            if val is not None:
                val_loss = val.loss
                logger.log({"val/loss": val.loss, "val/l1": val.l1, "val/l2": val.l2}, step)
                image = torch.cat([val.first_target.T.flip(0), val.first_recon.T.flip(0)], dim=0)
                logger.log_image("val/mel_target_over_recon", image.numpy(), step)
                wav = griffin_lim(val.first_recon.T, cfg.audio)
                logger.log_audio("val/recon_griffin_lim", wav.numpy(), cfg.audio.sampling_rate, step)
        if step % t.save_step == 0 or step == t.max_steps:
            save(val_loss)
    bar.close()

    best = manager.best_path
    final = model
    if best is not None:  # export the best validated weights, not merely the last ones
        final, _, best_step = model_from_checkpoint(best)
        print(f"exporting the best checkpoint (step {best_step}, val loss {manager.best_loss:.4f})")
    export_dir = os.path.join(output_dir, "export")
    for path in export_preencoder(final, cfg, export_dir):
        print(f"wrote {path}")
    logger.finish()
    return export_dir


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="config/preencoder.yaml", help="pre-encoder YAML (utils/preencoder_config.py)")
    p.add_argument("--data_dir", help="folder of audio files (searched recursively)")
    p.add_argument("--output_dir", required=True, help="ckpt/, export/, wandb/ and the mel cache go here")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.batch_size=8 (repeatable)")
    p.add_argument("--export", metavar="CKPT", help="only export this checkpoint (file or directory) to output_dir/export")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Exit status: 0 done, 2 on a bad config, data folder or checkpoint (message on stderr)."""
    args = parse_args(argv)
    try:
        if args.export:
            model, cfg, step = model_from_checkpoint(args.export)
            for path in export_preencoder(model, cfg, os.path.join(args.output_dir, "export")):
                print(f"wrote {path} (step {step})")
            return 0
        if not args.data_dir:
            raise ConfigError("--data_dir is required for training")
        cfg = load_config(args.config, args.overrides, schema=PreEncoderConfig)
        train(cfg, args.data_dir, args.output_dir, resume=args.resume, device=args.device)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
