"""Train the iSTFTNet vocoder (mel -> waveform) on a directory of audio files, then export it.

    python train_vocoder.py --config config/istftnet.yaml --data_dir WAV_DIR --output_dir OUT \
        [--resume [CKPT]] [--set training.batch_size=8 ...] [--export]

HiFi-GAN's recipe (Kong et al. 2020) with the iSTFTNet C8C8I generator (Kaneko et al. 2022): random
``training.segment_size``-sample segments; per step one discriminator update (LSGAN) and one
generator update (LSGAN + 2 x feature matching + 45 x mel L1). Mels come from ``utils.audio``'s one
mel function, so the vocoder hears exactly what the pre-encoder and Echolancer produce.

Output directory:
    OUT/config.yaml                   the resolved config
    OUT/ckpt/ckpt_<step>.pt    generator, discriminators, both optimizers and schedulers,
                                      GradScaler, RNG states, W&B run id (best.pt = lowest val mel L1)
    OUT/samples/step_<step>/*.wav     validation resyntheses
    OUT/wandb/                        the W&B run (offline by default)
    OUT/export/                       with --export: istft_cpu.pt (+ istft_cuda.pt) and config.json,
                                      loadable with ``ISTFTNetFE.load_ts``

``--resume`` continues from the newest checkpoint in OUT/ckpt (or the given file); the
architecture and audio sections must match the checkpoint's. A resumed run that has already reached
``training.max_steps`` trains no further, so ``--resume --export`` just exports.
A usable vocoder needs a GPU (hundreds of thousands of steps); on a CPU this is a smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from istftnetfe import ISTFTNetFE
from model.istftnet import (
    ISTFT,
    Discriminators,
    ISTFTNetGenerator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from utils.audio import load_wav, mel_spectrogram, save_wav
from utils.checkpoint import CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from utils.config import ConfigError, config_from_dict, config_to_dict, load_config
from utils.logger import Logger
from utils.vocoder_config import VocoderConfig

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# Sections that define the weights: a resumed run must not change them.
ARCHITECTURE_SECTIONS = ("generator", "discriminator", "audio")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def find_audio_files(data_dir: str) -> list[str]:
    """Every audio file under ``data_dir`` (recursive), sorted so the split is reproducible."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir}: no such directory")
    files = []
    for root, _, names in os.walk(data_dir):
        files.extend(os.path.join(root, n) for n in names if n.lower().endswith(AUDIO_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"--data_dir {data_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return sorted(files)


def split_files(files: list[str], val_fraction: float, max_val: int, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``val_fraction`` of the files (at least one, at most ``max_val``) for validation.

    With a single file there is nothing to hold out: it is used for both.
    """
    if len(files) < 2 or val_fraction == 0:
        return list(files), list(files[:1]) if val_fraction > 0 else []
    order = list(files)
    random.Random(seed).shuffle(order)
    n_val = min(max_val, max(1, round(len(files) * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


class SegmentDataset(Dataset):
    """One random ``segment_size``-sample segment per file per epoch (zero-padded if shorter).

    Args:
        files: audio files.  sampling_rate: target rate (other rates are resampled).
        segment_size: samples per item.
    Returns (per item): (segment_size,) float32 waveform.
    """

    def __init__(self, files: list[str], sampling_rate: int, segment_size: int) -> None:
        self.files = files
        self.sampling_rate = sampling_rate
        self.segment_size = segment_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        wav = load_wav(self.files[i], self.sampling_rate)
        if wav.numel() >= self.segment_size:
            # torch's RNG: seeded per worker by the DataLoader, so runs are reproducible.
            start = int(torch.randint(0, wav.numel() - self.segment_size + 1, ()))
            return wav[start : start + self.segment_size]
        return F.pad(wav, (0, self.segment_size - wav.numel()))


def make_loader(files: list[str], cfg: VocoderConfig, seed: int, pin_memory: bool) -> DataLoader:
    t = cfg.training
    ds = SegmentDataset(files, cfg.audio.sampling_rate, t.segment_size)
    # Fewer files than a batch (tiny datasets, tests): draw with replacement to fill one batch.
    sampler = RandomSampler(
        ds, replacement=len(ds) < t.batch_size, num_samples=max(len(ds), t.batch_size),
        generator=torch.Generator().manual_seed(seed),
    )
    return DataLoader(
        ds, batch_size=t.batch_size, sampler=sampler, drop_last=True, num_workers=t.num_workers,
        pin_memory=pin_memory, persistent_workers=t.num_workers > 0,
    )


# --------------------------------------------------------------------------------------------
# The GAN trainer
# --------------------------------------------------------------------------------------------


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = fp32). ``auto``: bf16 on a GPU that supports it, else fp32."""
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision != "auto":
            raise ConfigError(f"training.precision '{precision}' needs a CUDA device; use fp32 or auto on the CPU")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class VocoderTrainer:
    """Generator, discriminators, their AdamW optimizers and step-wise exponential LR decay.

    Args:
        cfg: the validated vocoder config.
        device: where to train.
    """

    def __init__(self, cfg: VocoderConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.audio = cfg.audio
        # The loss mel spans the whole band unless configured (HiFi-GAN's fmax_for_loss = None).
        fmax = cfg.loss.mel_loss_fmax or cfg.audio.sampling_rate / 2
        self.loss_audio = dataclasses.replace(cfg.audio, fmax=float(fmax))
        g = cfg.generator
        self.generator = ISTFTNetGenerator(g, cfg.audio.n_mels).to(device)
        self.istft = ISTFT(g.gen_istft_n_fft, g.gen_istft_hop_size).to(device)
        self.discriminators = Discriminators(cfg.discriminator).to(device)
        o = cfg.optimizer

        def adamw(params) -> torch.optim.AdamW:
            return torch.optim.AdamW(params, lr=o.learning_rate, betas=tuple(o.betas), weight_decay=o.weight_decay)

        self.opt_g = adamw(self.generator.parameters())
        self.opt_d = adamw(self.discriminators.parameters())
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, o.lr_decay_every, o.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, o.lr_decay_every, o.lr_decay)
        self.amp_dtype = resolve_precision(cfg.training.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.epoch = 0
        self.nonfinite_in_a_row = 0

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def synthesize(self, mel: Tensor) -> Tensor:
        """Args: mel (B, n_mels, T). Returns (B, T * hop) float32 waveform (with autograd)."""
        with self._autocast():
            magnitude, phase = self.generator(mel)
        return self.istft(magnitude, phase)

    def mel_l1(self, wav: Tensor, wav_hat: Tensor) -> Tensor:
        """Mel L1 between two (B, N) waveforms, in fp32 with the loss mel settings."""
        return F.l1_loss(mel_spectrogram(wav_hat, self.loss_audio), mel_spectrogram(wav, self.loss_audio))

    def _clip_and_step(self, opt: torch.optim.Optimizer, params) -> Tensor:
        self.scaler.unscale_(opt)
        thresh = self.cfg.training.grad_clip_thresh
        norm = torch.nn.utils.clip_grad_norm_(params, thresh if thresh is not None else float("inf"))
        self.scaler.step(opt)
        return norm

    def _finite(self, name: str, loss: Tensor) -> bool:
        """False for a non-finite loss (the update is skipped); raises after too many in a row."""
        if torch.isfinite(loss):
            return True
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= self.cfg.training.max_nonfinite_steps:
            raise FloatingPointError(
                f"step {self.step}: {self.nonfinite_in_a_row} non-finite losses in a row ({name}={loss.item()}); "
                "lower optimizer.learning_rate, set training.grad_clip_thresh or use training.precision=fp32"
            )
        return False

    def train_step(self, wav: Tensor) -> dict[str, float]:
        """One discriminator and one generator update on a batch of segments.

        Args:
            wav: (B, segment_size) float waveform.
        Returns:
            the step's losses and gradient norms as floats.
        Raises:
            FloatingPointError: after ``training.max_nonfinite_steps`` non-finite losses in a row
                (a non-finite step is skipped: the discriminators may already have been updated
                when only the generator's loss is non-finite).
        """
        self.generator.train()
        self.discriminators.train()
        wav = wav.to(self.device, non_blocking=True).float()
        with torch.no_grad():
            mel = mel_spectrogram(wav, self.audio)  # (B, n_mels, segment / hop): the generator's input
        wav_hat = self.synthesize(mel)

        # Discriminator step: real -> 1, generated (detached) -> 0.
        with self._autocast():
            real_logits, _ = self.discriminators(wav)
            fake_logits, _ = self.discriminators(wav_hat.detach())
        loss_d = discriminator_loss(real_logits, fake_logits)
        if not self._finite("loss_d", loss_d):
            return {"skipped_nonfinite": 1.0}
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        grad_d = self._clip_and_step(self.opt_d, self.discriminators.parameters())

        # Generator step, against the freshly updated discriminators (HiFi-GAN's order). Real
        # feature maps are targets only, so they need no graph.
        loss_mel = self.mel_l1(wav, wav_hat)
        with self._autocast():
            with torch.no_grad():
                _, real_fmaps = self.discriminators(wav)
            fake_logits, fake_fmaps = self.discriminators(wav_hat)
        loss_adv = generator_adversarial_loss(fake_logits)
        loss_fm = feature_matching_loss(real_fmaps, fake_fmaps)
        lw = self.cfg.loss
        loss_g = loss_adv + lw.feature_weight * loss_fm + lw.mel_weight * loss_mel
        if not self._finite("loss_g", loss_g):
            self.scaler.update()
            return {"skipped_nonfinite": 1.0}
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        grad_g = self._clip_and_step(self.opt_g, self.generator.parameters())
        self.scaler.update()
        self.sched_d.step()
        self.sched_g.step()
        self.nonfinite_in_a_row = 0
        self.step += 1
        return {
            "loss_g": loss_g.item(), "loss_d": loss_d.item(), "loss_mel": loss_mel.item(),
            "loss_adv": loss_adv.item(), "loss_fm": loss_fm.item(),
            "grad_norm_g": grad_g.item(), "grad_norm_d": grad_d.item(), "lr": self.sched_g.get_last_lr()[0],
        }

    @torch.no_grad()
    def validate(self, files: list[str], max_seconds: float) -> tuple[float, list[tuple[str, Tensor, Tensor]]]:
        """Resynthesise each file (cut to ``max_seconds``) from its mel.

        Returns:
            the mean mel L1, and (name, real, generated) waveforms (CPU, (N,)) per file.
        """
        self.generator.eval()
        hop = self.audio.hop_length
        max_len = int(max_seconds * self.audio.sampling_rate) // hop * hop
        losses, outputs = [], []
        for path in files:
            wav = load_wav(path, self.audio.sampling_rate)[:max_len]
            wav = wav[: wav.numel() // hop * hop].to(self.device)
            if wav.numel() < 2 * hop or wav.numel() <= self.audio.n_fft // 2:
                continue  # too short to make a mel from
            wav_hat = self.synthesize(mel_spectrogram(wav, self.audio))[0]
            losses.append(self.mel_l1(wav[None], wav_hat[None]).item())
            outputs.append((os.path.splitext(os.path.basename(path))[0], wav.cpu(), wav_hat.float().cpu()))
        self.generator.train()
        if not losses:
            raise ValueError("validation: every validation file is shorter than two mel frames")
        return float(np.mean(losses)), outputs

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "kind": "istftnet",
            "step": self.step,
            "epoch": self.epoch,
            "config": config_to_dict(self.cfg),
            "generator": self.generator.state_dict(),
            "discriminators": self.discriminators.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, state: dict, source: str) -> None:
        if state.get("kind") != "istftnet":
            raise ValueError(f"{source}: not an iSTFTNet checkpoint (kind={state.get('kind')!r})")
        saved = config_from_dict(VocoderConfig, state["config"], f"{source} (stored config)")
        for section in ARCHITECTURE_SECTIONS:
            a, b = config_to_dict(getattr(saved, section)), config_to_dict(getattr(self.cfg, section))
            diff = [k for k in a if a[k] != b.get(k)]
            if diff:
                raise ConfigError(
                    f"{source}: '{section}.{diff[0]}' is {a[diff[0]]!r} in the checkpoint but "
                    f"{b.get(diff[0])!r} in the config; a resumed run keeps the architecture and audio settings"
                )
        self.generator.load_state_dict(state["generator"])
        self.discriminators.load_state_dict(state["discriminators"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        restore_rng_state(state["rng"])

    def export(self, out_dir: str) -> list[str]:
        """Write the TorchScript directory (``istftnetfe.py`` format) of the current generator."""
        fe = ISTFTNetFE(self.generator, self.istft, self.audio)
        return fe.export_ts(out_dir, self.audio.sampling_rate)


# --------------------------------------------------------------------------------------------
# Main loop
# --------------------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the iSTFTNet vocoder on a directory of audio files.")
    p.add_argument("--config", required=True, help="vocoder YAML, e.g. config/istftnet.yaml")
    p.add_argument("--data_dir", required=True, help="directory of .wav/.flac/.ogg files (searched recursively)")
    p.add_argument("--output_dir", required=True, help="checkpoints, samples, W&B run and export go here")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the newest checkpoint in OUTPUT_DIR/ckpt, or from this file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.batch_size=8 (repeatable)")
    p.add_argument("--export", action="store_true", help="write OUTPUT_DIR/export (TorchScript) when done")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    return p.parse_args(argv)


def _log_samples(logger: Logger, out_dir: str, outputs, step: int, sr: int, with_real: bool) -> None:
    sample_dir = os.path.join(out_dir, "samples", f"step_{step:07d}")
    for name, real, fake in outputs[:2]:
        save_wav(os.path.join(sample_dir, f"{name}.wav"), fake, sr)
        logger.log_audio(f"val/audio_{name}", fake.numpy(), sr, step)
        if with_real:
            logger.log_audio(f"val/real_{name}", real.numpy(), sr, step)


def train(args: argparse.Namespace) -> VocoderTrainer:
    cfg: VocoderConfig = load_config(args.config, args.set, schema=VocoderConfig)
    t = cfg.training
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed segment size: autotuned kernels pay off
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)

    files = find_audio_files(args.data_dir)
    train_files, val_files = split_files(files, t.val_fraction, t.max_val_files, t.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(f"# resolved config of: {' '.join(sys.argv)}\n")
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)

    trainer = VocoderTrainer(cfg, device)
    manager = CheckpointManager(os.path.join(args.output_dir, "ckpt"), t.keep_last)
    run_id = None
    if args.resume is not None:
        source = manager.ckpt_dir if args.resume == "auto" else args.resume
        state = load_checkpoint(source, map_location=device)
        trainer.load_state_dict(state, source)
        run_id = state.get("wandb_run_id")
        print(f"resumed from {source} at step {trainer.step}")

    logger = Logger(args.output_dir, project=cfg.wandb.project, mode=cfg.wandb.mode, run_name=cfg.wandb.run_name,
                    entity=cfg.wandb.entity, config=config_to_dict(cfg), run_id=run_id)
    print(f"{len(train_files)} training / {len(val_files)} validation files; device {device}; "
          f"generator {sum(p.numel() for p in trainer.generator.parameters()) / 1e6:.2f}M params, "
          f"discriminators {sum(p.numel() for p in trainer.discriminators.parameters()) / 1e6:.2f}M")

    def save(val_loss: Optional[float]) -> None:
        state = trainer.state_dict()
        state["wandb_run_id"] = logger.run_id
        path = manager.save(state, trainer.step, val_loss)
        if cfg.wandb.log_checkpoints:
            logger.log_artifact(path, name="istftnet-checkpoint", type="model", aliases=[f"step-{trainer.step}"])

    bar = tqdm(total=t.max_steps, initial=trainer.step, desc="vocoder", dynamic_ncols=True)
    last_time, last_step = time.time(), trainer.step
    try:
        # Seeded by the epoch reached: a resumed run draws fresh segments rather than a replay.
        loader = make_loader(train_files, cfg, t.seed + trainer.epoch, device.type == "cuda")
        while trainer.step < t.max_steps:
            for wav in loader:
                metrics = trainer.train_step(wav)
                bar.update(1 if "loss_g" in metrics else 0)
                step = trainer.step
                if "loss_g" in metrics and step % t.log_step == 0:
                    now = time.time()
                    metrics["steps_per_s"] = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    logger.log({f"train/{k}": v for k, v in metrics.items()}, step)
                    bar.set_postfix(mel=f"{metrics['loss_mel']:.3f}", g=f"{metrics['loss_g']:.2f}",
                                    d=f"{metrics['loss_d']:.2f}")
                val_loss = None
                if val_files and (step % t.val_step == 0 or step == t.max_steps):
                    val_loss, outputs = trainer.validate(val_files, t.val_max_seconds)
                    logger.log({"val/mel_l1": val_loss}, step)
                    _log_samples(logger, args.output_dir, outputs, step, cfg.audio.sampling_rate,
                                 with_real=step == t.val_step)
                if step % t.save_step == 0 or step == t.max_steps:
                    save(val_loss)
                if step >= t.max_steps:
                    break
            else:
                trainer.epoch += 1
    finally:
        bar.close()
        logger.finish()

    if args.export:
        paths = trainer.export(os.path.join(args.output_dir, "export"))
        print("exported:", ", ".join(paths))
    return trainer


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    except (ConfigError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
