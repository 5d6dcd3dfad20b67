"""The vocoder recipe: train the iSTFTNet vocoder (mel -> waveform) on audio files, then export it.

``train_vocoder.py`` is its command line. HiFi-GAN's recipe (Kong et al. 2020) with the iSTFTNet
C8C8I generator (Kaneko et al. 2022): random ``training.segment_size``-sample segments; per step one
discriminator update (LSGAN) and one generator update (LSGAN + 2 x feature matching + 45 x mel L1).
Mels come from ``utils.audio``'s one mel function, so the vocoder hears exactly what the pre-encoder
and Echolancer produce. The shared loop (``training/loop.py``) resumes, saves, handles signals,
the non-finite policy and the cadence; the engine (``training/engine.py``) gives precision and
resume checks.

Output directory:
    OUT/config.yaml                   the resolved config
    OUT/ckpt/ckpt_<step>.pt           generator, discriminators, both optimizers and schedulers,
                                      GradScaler, RNG states, W&B run id (best.pt = lowest val mel L1)
    OUT/samples/step_<step>/*.wav     validation resyntheses
    OUT/wandb/                        the W&B run (offline by default)
    OUT/export/                       when training ends (best validated weights): istft_cpu.pt
                                      (+ istft_cuda.pt) and config.json, loadable with
                                      ``ISTFTNetFE.load_ts``, and weights.pt (tensors only)

A usable vocoder needs a GPU (hundreds of thousands of steps); on a CPU this is a smoke test.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from torch.utils.data import DataLoader

from model.istftnet import (
    ISTFT,
    Discriminators,
    ISTFTNetGenerator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from model.istftnet_artifact import export_istftnet
from training.audio_files import find_audio_files
from training.engine import amp_dtype, build_adam, resolve_optimizer_impl, resolve_precision
from training.loop import Cadence, Recipe, RunPlace, Validation
from training.nonfinite import NonFinitePolicy
from training.resume import apply_optimizer_settings, check_resume_compatible
from training.vocoder_data import make_loader, split_files
from utils.audio import load_wav, mel_spectrogram, save_wav
from utils.checkpoint import CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state
from utils.config import config_from_dict, config_to_dict
from utils.config.vocoder import VocoderConfig
from utils.device import pick_device
from utils.logger import Logger

# Sections that define the weights: a resumed run must not change them.
ARCHITECTURE_SECTIONS = ("generator", "discriminator", "audio")
log = logging.getLogger("echolancer.train")


# --------------------------------------------------------------------------------------------
# The GAN trainer
# --------------------------------------------------------------------------------------------


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
        # auto: fused on CUDA, foreach elsewhere (the engine's one meaning; logged at start-up).
        self.optimizer_impl = resolve_optimizer_impl(o.impl, device)

        def adamw(params) -> torch.optim.AdamW:
            return build_adam("adamw", params, self.optimizer_impl, lr=o.learning_rate, betas=tuple(o.betas),
                              weight_decay=o.weight_decay)

        self.opt_g = adamw(self.generator.parameters())
        self.opt_d = adamw(self.discriminators.parameters())
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, o.lr_decay_every, o.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, o.lr_decay_every, o.lr_decay)
        self.precision = resolve_precision(cfg.training.precision, device)
        self.amp_dtype = amp_dtype(self.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.epoch = 0
        self.nonfinite = NonFinitePolicy(cfg.training.max_nonfinite_steps)

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

    def _skip_nonfinite(self, name: str, loss: Tensor) -> dict[str, float]:
        """The engine's policy: no update, but the step and the schedules advance; the loop stops
        (after saving) once ``training.max_nonfinite_steps`` steps in a row were non-finite."""
        self.nonfinite.record(False)
        log.warning("step %d: non-finite %s (%s); update skipped (%d in a row)", self.step, name, loss.item(),
                    self.nonfinite.streak)
        if self.scaler.is_enabled():
            self.scaler.update()
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        self.sched_d.step()
        self.sched_g.step()
        self.step += 1
        return {"skipped_nonfinite": 1.0}

    def train_step(self, wav: Tensor) -> dict[str, float]:
        """One discriminator and one generator update on a batch of segments.

        Args:
            wav: (B, segment_size) float waveform.
        Returns:
            the step's losses and gradient norms as floats, or ``{"skipped_nonfinite": 1.0}`` for a
            step with a non-finite loss (skipped; the discriminators may already have been updated
            when only the generator's loss is non-finite). ``self.nonfinite.should_stop`` tells the
            loop to save and stop.
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
        if not torch.isfinite(loss_d):
            return self._skip_nonfinite("loss_d", loss_d)
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
        if not torch.isfinite(loss_g):
            return self._skip_nonfinite("loss_g", loss_g)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        grad_g = self._clip_and_step(self.opt_g, self.generator.parameters())
        self.scaler.update()
        self.sched_d.step()
        self.sched_g.step()
        self.nonfinite.record(True)
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
            "nonfinite_total": self.nonfinite.total,
        }

    def load_state_dict(self, state: dict, source: str) -> None:
        if state.get("kind") != "istftnet":
            raise CheckpointError(f"{source}: not an iSTFTNet checkpoint (kind={state.get('kind')!r})")
        saved = config_from_dict(VocoderConfig, state["config"], f"{source} (stored config)")
        check_resume_compatible(source, {s: (config_to_dict(getattr(saved, s)), config_to_dict(getattr(self.cfg, s)))
                                         for s in ARCHITECTURE_SECTIONS})
        self.generator.load_state_dict(state["generator"])
        self.discriminators.load_state_dict(state["discriminators"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.nonfinite.total = int(state.get("nonfinite_total", 0))
        # Policy (docs/DESIGN.md, "Resuming"): changed optimizer keys are applied and logged.
        o = self.cfg.optimizer
        for opt, sched in ((self.opt_g, self.sched_g), (self.opt_d, self.sched_d)):
            apply_optimizer_settings(source, opt, sched, {"learning_rate": o.learning_rate,
                                                          "weight_decay": o.weight_decay, "betas": o.betas})
            if (sched.step_size, sched.gamma) != (o.lr_decay_every, o.lr_decay):
                log.warning("%s: resuming with a changed LR decay, applied from the next step: "
                            "optimizer.lr_decay_every %s -> %s, optimizer.lr_decay %s -> %s", source,
                            sched.step_size, o.lr_decay_every, sched.gamma, o.lr_decay)
                sched.step_size, sched.gamma = o.lr_decay_every, o.lr_decay
                for g, base in zip(opt.param_groups, sched.base_lrs):
                    g["lr"] = base * o.lr_decay ** (sched.last_epoch // o.lr_decay_every)
        restore_rng_state(state["rng"])

    def export(self, out_dir: str) -> list[str]:
        """Write the export directory of the current generator (``model/istftnet_artifact.py``):
        the TorchScript files, ``config.json`` and ``weights.pt`` (with this config and step)."""
        return export_istftnet(self.generator, self.istft, self.audio, out_dir, self.audio.sampling_rate,
                               cfg=self.cfg, step=self.step)


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def _log_samples(logger: Logger, out_dir: str, outputs, step: int, sr: int, with_real: bool) -> None:
    sample_dir = os.path.join(out_dir, "samples", f"step_{step:07d}")
    for name, real, fake in outputs[:2]:
        save_wav(os.path.join(sample_dir, f"{name}.wav"), fake, sr)
        logger.log_audio(f"val/audio_{name}", fake.numpy(), sr, step)
        if with_real:
            logger.log_audio(f"val/real_{name}", real.numpy(), sr, step)


@dataclass
class VocoderResult:
    status: str  # "finished", "interrupted", "nonfinite"
    trainer: VocoderTrainer
    export_dir: Optional[str]
    last_checkpoint: Optional[str]


class VocoderRecipe(Recipe):
    """The vocoder's recipe for the shared loop (``training/loop.py``): the GAN steps of
    :class:`VocoderTrainer` over epochs of random segments, validation by resynthesis.

    Args:
        cfg: the validated vocoder config.
        data_dir: the audio files (searched recursively).
        place: where the run writes and how it starts (resume, overwrite, export).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (None: the local GPU if any).
    """

    name = "vocoder"

    def __init__(self, cfg: VocoderConfig, data_dir: str, place: RunPlace, device: Optional[str] = None) -> None:
        super().__init__(place)
        self.cfg, self.data_dir = cfg, data_dir
        t = cfg.training
        self.device = pick_device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed segment size: autotuned kernels pay off
        self.seed, self.keep_last, self.wandb = t.seed, t.keep_last, cfg.wandb
        self.map_location = self.device
        self._loader: Optional[DataLoader] = None
        self.start()

    # The GAN trainer keeps the counters its checkpoints hold.
    @property
    def step(self) -> int:
        return self.gan.step

    @property
    def epoch(self) -> int:
        return self.gan.epoch

    def build(self) -> None:
        t = self.cfg.training
        files = find_audio_files(self.data_dir)
        self.train_files, self.val_files = split_files(files, t.val_fraction, t.max_val_files, t.seed)
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(f"# resolved config of: {' '.join(sys.argv)}\n")
            yaml.safe_dump(config_to_dict(self.cfg), f, sort_keys=False)
        self.gan = VocoderTrainer(self.cfg, self.device)
        self.nonfinite = self.gan.nonfinite
        self.cadence = Cadence(t.log_step, t.val_step, t.save_step, max_steps=t.max_steps, at_the_last_step=True)

    def ready(self) -> None:
        gan = self.gan
        log.info("%d training / %d validation files; device %s, precision %s, %s AdamW (optimizer.impl = %s); "
                 "generator %.2fM params, discriminators %.2fM", len(self.train_files), len(self.val_files),
                 self.device, gan.precision, gan.optimizer_impl, self.cfg.optimizer.impl,
                 sum(p.numel() for p in gan.generator.parameters()) / 1e6,
                 sum(p.numel() for p in gan.discriminators.parameters()) / 1e6)

    def wandb_config(self) -> dict:
        return config_to_dict(self.cfg)

    def begin(self) -> None:
        self._last: dict[str, float] = {}
        self._last_log = (time.time(), self.step)

    def batches(self) -> DataLoader:
        if self._loader is None:
            # Seeded by the epoch reached: a resumed run draws fresh segments rather than a replay.
            self._loader = make_loader(self.train_files, self.cfg, self.cfg.training.seed + self.epoch,
                                       self.device.type == "cuda")
        return self._loader

    def train_step(self, batch: Tensor) -> dict[str, float]:
        return self.gan.train_step(batch)

    def record(self, metrics: dict[str, float]) -> None:
        self._last = metrics

    def log_train(self) -> Optional[dict[str, str]]:
        metrics = self._last
        if "loss_g" not in metrics:  # a skipped (non-finite) step has no losses to log
            return None
        now = time.time()
        metrics["steps_per_s"] = (self.step - self._last_log[1]) / max(now - self._last_log[0], 1e-9)
        self._last_log = (now, self.step)
        self.logger.log({f"train/{k}": v for k, v in metrics.items()}, self.step)
        return {"mel": f"{metrics['loss_mel']:.3f}", "g": f"{metrics['loss_g']:.2f}", "d": f"{metrics['loss_d']:.2f}"}

    def end_epoch(self) -> None:
        self.gan.epoch += 1

    def validate(self) -> Optional[Validation]:
        if not self.val_files:
            return None
        loss, outputs = self.gan.validate(self.val_files, self.cfg.training.val_max_seconds)
        return Validation(loss, {"val/mel_l1": loss}, details=outputs)

    def report_validation(self, val: Validation) -> None:
        step = self.step
        self.logger.log(val.metrics, step)
        log.info("step %d: val mel L1 %.4f", step, val.loss)
        _log_samples(self.logger, self.output_dir, val.details, step, self.cfg.audio.sampling_rate,
                     with_real=step == self.cfg.training.val_step)

    def checkpoint_state(self, rng: Optional[dict] = None) -> dict:
        state = self.gan.state_dict()
        if rng is not None:
            state["rng"] = rng
        return state

    def load_state_dict(self, state: dict, source: str) -> None:
        self.gan.load_state_dict(state, source)

    def checkpoint_artifact(self, val_loss: Optional[float]) -> dict:
        return {"name": "istftnet-checkpoint", "type": "model", "aliases": [f"step-{self.step}"]}

    def export(self) -> Optional[str]:
        """Export the best validated generator (``best.pt``) when there is one, like the other recipes."""
        if not self.place.export:
            return None
        export_dir = os.path.join(self.output_dir, "export")
        best = self.ckpt.best_path
        if best is not None:
            self.gan.load_state_dict(load_checkpoint(best, map_location=self.device), best)
            log.info("exporting the best checkpoint (step %d, val mel L1 %.4f)", self.step, self.ckpt.best_loss)
        for path in self.gan.export(export_dir):
            log.info("wrote %s", path)
        return export_dir


def train(cfg: VocoderConfig, data_dir: str, output_dir: str, resume: Optional[str] = None,
          device: Optional[str] = None, overwrite: bool = False, export: bool = True) -> VocoderResult:
    """Train, checkpoint and (when it ends normally) export the best validated generator."""
    recipe = VocoderRecipe(cfg, data_dir, RunPlace(output_dir, resume, overwrite, export), device)
    status = recipe.run()
    return VocoderResult(status, recipe.gan, recipe.export_dir, recipe.last_checkpoint)
