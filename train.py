"""Train Echolancer.

    python train.py --model_config config/model.yaml --train_config config/train.yaml \
        --train_data_dir ./data/train --val_data_dir ./data/val --output_dir outputs/run1 [--create_dummy]
    torchrun --nproc_per_node 8 train.py ...                     # one process per GPU (DDP)
    python train.py ... --resume outputs/run1/ckpt              # newest checkpoint of a run
    python train.py ... --set training.max_steps=100 --set model.decoder.layer=2

Everything the run writes goes under --output_dir: ckpt/, samples/, wandb/, train.log.
Exit status: 0 finished / early-stopped / interrupted by a signal (a checkpoint was saved),
1 on repeated non-finite losses (the last good state was saved), 2 on a bad config or data.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from data.dataset import DataError
from data.dummy import create_dummy_data_files
from pipeline import PipelineError
from training.trainer import RunPaths, Trainer
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, load_configs
from utils.distributed import barrier, cleanup, init_distributed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train Echolancer (text -> audio codec tokens).")
    p.add_argument("--model_config", default="config/model.yaml")
    p.add_argument("--train_config", default="config/train.yaml")
    p.add_argument("--train_data_dir", required=True, help="directory of .pt utterance files")
    p.add_argument("--val_data_dir", default=None, help="validation .pt files (no validation if omitted)")
    p.add_argument("--output_dir", default="outputs/echolancer", help="checkpoints, samples, W&B run, logs")
    p.add_argument("--resume", default=None, help="a checkpoint file, or a ckpt/ directory (its newest)")
    p.add_argument("--create_dummy", action="store_true",
                   help="write random valid data into empty --train_data_dir / --val_data_dir first")
    p.add_argument("--dummy_files", type=int, default=64, help="training files written by --create_dummy")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="dotted.key=value",
                   help="override a key of either config, e.g. --set training.max_steps=100 (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the local GPU if any)")
    p.add_argument("--bert_model", default=None, help="BERT hub name or directory (test interval emotion)")
    p.add_argument("--pre_encoder_dir", default=None, help="exported pre-encoder (codec tokens -> mel)")
    p.add_argument("--istftnet_dir", default=None, help="exported ISTFTNet vocoder (mel -> waveform)")
    p.add_argument("--test_sentences", nargs="*", default=None, help="sentences for the test interval")
    p.add_argument("--test_speakers", nargs="*", type=int, default=None, help="speaker ids for the test interval")
    return p.parse_args(argv)


def setup_logging(output_dir: str, is_main: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log")))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")


def make_dummy_data(args: argparse.Namespace, model_cfg) -> None:
    """Fill empty data directories with dummy files (rank 0 only; the others wait)."""
    for directory, n, seed in ((args.train_data_dir, args.dummy_files, 0),
                               (args.val_data_dir, max(4, args.dummy_files // 4), 1)):
        if directory is None:
            continue
        if os.path.isdir(directory) and any(n.endswith(".pt") for n in os.listdir(directory)):
            logging.info("--create_dummy: %s already has .pt files; leaving them", directory)
            continue
        create_dummy_data_files(directory, model_cfg, n_files=n, seed=seed)
        logging.info("--create_dummy: wrote %d dummy files to %s", n, directory)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dist_info = init_distributed(args.device)
    setup_logging(args.output_dir, dist_info.is_main)
    try:
        model_cfg, train_cfg = load_configs(args.model_config, args.train_config, args.overrides)
        if args.create_dummy:
            if dist_info.is_main:
                make_dummy_data(args, model_cfg)
            barrier()
        paths = RunPaths(
            args.train_data_dir, args.val_data_dir, args.output_dir, args.resume, args.bert_model,
            args.pre_encoder_dir, args.istftnet_dir, args.test_sentences or [], args.test_speakers or [],
        )
        result = Trainer(model_cfg, train_cfg, paths, dist_info).train()
        barrier()  # every rank is done with collectives before any tears the group down
    except (ConfigError, DataError, CheckpointError, PipelineError) as e:
        logging.error("%s", e)
        return 2
    finally:
        cleanup()
    logging.info("%s at step %d (epoch %d); best val loss %s; last checkpoint %s", result.status, result.step,
                 result.epoch, result.best_val_loss, result.last_checkpoint)
    return 1 if result.status == "nonfinite" else 0


if __name__ == "__main__":
    sys.exit(main())
