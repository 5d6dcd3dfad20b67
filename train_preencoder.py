"""Train the FSQ mel pre-encoder (codec) on a folder of audio files; the recipe is ``training/preencoder.py``.

    python train_preencoder.py --config config/preencoder.yaml --data_dir ./wavs --output_dir ./runs/pe
    python train_preencoder.py --config config/preencoder.yaml --data_dir ./wavs --output_dir ./runs/pe --resume
    python train_preencoder.py --output_dir ./runs/pe --export [CKPT]     # only export (no training)

Writes OUTPUT_DIR/ckpt/ (training state), OUTPUT_DIR/export/ (TorchScript + weights.pt, written when
training ends), wandb/, mel_cache.pt and train.log. Exit status: 0 done (or stopped by a signal after
saving), 1 failure (non-finite losses after saving, or a bug: traceback in train.log), 2 bad config,
data, checkpoint or output directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from model.preencoder_artifact import export_preencoder, model_from_checkpoint
from training.command import EXIT_FAILURE, EXIT_OK, add_common_args, run_cli, setup_logging
from training.engine import set_threads
from training.preencoder import train
from training.resume import resolve_resume
from utils.config import ConfigError, load_config
from utils.config.preencoder import PreEncoderConfig

log = logging.getLogger("echolancer.train")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the FSQ mel pre-encoder and export it.")
    p.add_argument("--config", default="config/preencoder.yaml", help="pre-encoder YAML (utils/config/preencoder.py)")
    p.add_argument("--data_dir", help="folder of audio files (searched recursively); required to train")
    p.add_argument("--output_dir", required=True, help="ckpt/, export/, wandb/, train.log and the mel cache go here")
    add_common_args(p, export_help="only export CKPT (file or ckpt directory), or bare: OUTPUT_DIR/ckpt/best.pt "
                                   "(else the newest checkpoint), to OUTPUT_DIR/export; no training")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.output_dir)

    def body() -> int:
        set_threads(args.threads)
        if args.export is not None:
            source = args.export
            if source == "auto":
                best = os.path.join(args.output_dir, "ckpt", "best.pt")
                source = best if os.path.isfile(best) else os.path.join(args.output_dir, "ckpt")
            model, cfg, step = model_from_checkpoint(source)
            for path in export_preencoder(model, cfg, os.path.join(args.output_dir, "export")):
                log.info("wrote %s (step %d)", path, step)
            return EXIT_OK
        if not args.data_dir:
            raise ConfigError("--data_dir is required for training")
        cfg = load_config(args.config, args.overrides, schema=PreEncoderConfig)
        result = train(cfg, args.data_dir, args.output_dir, resume=resolve_resume(args.resume, args.output_dir),
                       device=args.device, overwrite=args.overwrite)
        log.info("%s at step %d; last checkpoint %s; export %s", result.status, result.step, result.last_checkpoint,
                 result.export_dir)
        return EXIT_FAILURE if result.status == "nonfinite" else EXIT_OK

    return run_cli(body, prog="train_preencoder.py")


if __name__ == "__main__":
    sys.exit(main())
