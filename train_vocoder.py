"""Train the iSTFTNet vocoder (mel -> waveform) on audio files; the recipe is ``training/vocoder.py``.

    python train_vocoder.py --config config/istftnet.yaml --data_dir WAV_DIR --output_dir OUT
    python train_vocoder.py --config config/istftnet.yaml --data_dir WAV_DIR --output_dir OUT --resume [CKPT]
    python train_vocoder.py --output_dir OUT --export [CKPT]             # only export (no training)

Writes OUT/ckpt/ (training state), OUT/export/ (istft_cpu.pt, config.json, weights.pt; written when
training ends), samples/, wandb/, config.yaml and train.log. Exit status: 0 done (or stopped by a
signal after saving), 1 failure (non-finite losses after saving, or a bug: traceback in train.log),
2 bad config, data, checkpoint or output directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

import torch

from training.command import EXIT_FAILURE, EXIT_OK, add_common_args, run_cli, setup_logging
from training.engine import set_threads
from training.resume import resolve_resume
from training.vocoder import VocoderTrainer, train
from utils.checkpoint import load_checkpoint
from utils.config import ConfigError, config_from_dict, load_config
from utils.config.vocoder import VocoderConfig

log = logging.getLogger("echolancer.train")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the iSTFTNet vocoder on a directory of audio files.")
    p.add_argument("--config", default="config/istftnet.yaml", help="vocoder YAML, e.g. config/istftnet_tiny.yaml")
    p.add_argument("--data_dir", help="directory of .wav/.flac/.ogg files (searched recursively); required to train")
    p.add_argument("--output_dir", required=True, help="checkpoints, samples, W&B run, train.log and export go here")
    add_common_args(p, export_help="only export CKPT (file or ckpt directory), or bare: OUTPUT_DIR/ckpt/best.pt "
                                   "(else the newest checkpoint), to OUTPUT_DIR/export; no training")
    return p.parse_args(argv)


def export_only(source: str, output_dir: str) -> None:
    if source == "auto":
        best = os.path.join(output_dir, "ckpt", "best.pt")
        source = best if os.path.isfile(best) else os.path.join(output_dir, "ckpt")
    state = load_checkpoint(source)
    cfg = config_from_dict(VocoderConfig, state.get("config", {}), f"{source} (stored config)")
    trainer = VocoderTrainer(cfg, torch.device("cpu"))
    trainer.load_state_dict(state, source)
    for path in trainer.export(os.path.join(output_dir, "export")):
        log.info("wrote %s (step %d)", path, trainer.step)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.output_dir)

    def body() -> int:
        set_threads(args.threads)
        if args.export is not None:
            export_only(args.export, args.output_dir)
            return EXIT_OK
        if not args.data_dir:
            raise ConfigError("--data_dir is required for training")
        cfg = load_config(args.config, args.overrides, schema=VocoderConfig)
        result = train(cfg, args.data_dir, args.output_dir, resume=resolve_resume(args.resume, args.output_dir),
                       device=args.device, overwrite=args.overwrite)
        log.info("%s at step %d; last checkpoint %s; export %s", result.status, result.trainer.step,
                 result.last_checkpoint, result.export_dir)
        return EXIT_FAILURE if result.status == "nonfinite" else EXIT_OK

    return run_cli(body, prog="train_vocoder.py")


if __name__ == "__main__":
    sys.exit(main())
