"""Train Echolancer (text -> audio codec tokens); the recipe is ``training/echolancer.py``.

    python train.py --model_config config/model.yaml --train_config config/train.yaml \
        --train_data_dir ./data/train --val_data_dir ./data/val --output_dir outputs/run1 [--create_dummy]
    torchrun --nproc_per_node 8 train.py ...                     # one process per GPU (DDP)
    python train.py ... --resume                                # newest checkpoint of OUTPUT_DIR/ckpt
    python train.py ... --resume outputs/run1/ckpt/ckpt_000001000.pt
    python train.py ... --init_from outputs/run1/export --output_dir outputs/ft1   # fine-tune: weights only
    python train.py ... --set training.max_steps=100 --set model.decoder.layer=2
    python train.py --output_dir outputs/run1 --export [CKPT]   # only write the inference export

Everything the run writes goes under --output_dir: ckpt/ (training state, for resuming), export/
(echolancer.pt, the inference export), samples/, wandb/, train.log.
Exit status: 0 finished / early-stopped / out of training.max_minutes / stopped by a signal (saved),
1 failure (repeated non-finite losses: the last good state was saved; or a bug: traceback in
train.log), 2 bad config, data, checkpoint or output directory (one line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from data.dummy import create_dummy_data_files
from training.command import EXIT_FAILURE, EXIT_OK, add_common_args, run_cli, setup_logging
from training.echolancer import RunPaths, Trainer
from training.engine import set_threads
from training.resume import resolve_resume
from utils.config import ConfigError, load_configs
from utils.distributed import barrier, cleanup, init_distributed

log = logging.getLogger("echolancer.train")
PROG = "train.py"  # how its error lines begin

# --create_dummy writes random tokens, which teach a model nothing: such a run only shows that the
# machinery works. The spec's quick start uses the full config/model.yaml and config/train.yaml,
# whose 100 epochs took over half an hour of a 2-core CPU; these bound it to a few minutes.
DUMMY_MAX_STEPS = 40  # applied only when training.max_steps is not set (in the file or by --set)
DUMMY_MAX_TEXT_LEN = 20  # characters; about 4 codec tokens each, so utterances of 15-100 tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train Echolancer (text -> audio codec tokens).")
    p.add_argument("--model_config", default="config/model.yaml")
    p.add_argument("--train_config", default="config/train.yaml")
    p.add_argument("--train_data_dir", default=None, help="directory of .pt utterance files (required to train)")
    p.add_argument("--val_data_dir", default=None, help="validation .pt files (no validation if omitted)")
    p.add_argument("--output_dir", default="outputs/echolancer", help="checkpoints, export, samples, W&B run, logs")
    add_common_args(p, export_help="only write OUTPUT_DIR/export/echolancer.pt (inference export) from CKPT, "
                                   "or bare: from OUTPUT_DIR/ckpt/best.pt (else the newest checkpoint); no training")
    p.add_argument("--init_from", default=None, metavar="RUN_OR_EXPORT",
                   help="start a new run from trained weights only (not optimizer, step or RNG): an inference "
                        "export (file or export/ directory), a checkpoint file or a ckpt/ directory (newest); "
                        "model.n_speaker and model.vocab_size may grow, the rest of the architecture must match")
    p.add_argument("--create_dummy", action="store_true",
                   help="write random valid data into empty --train_data_dir / --val_data_dir first; without a "
                        f"training.max_steps the run stops after {DUMMY_MAX_STEPS} steps")
    p.add_argument("--dummy_files", type=int, default=64, help="training files written by --create_dummy")
    p.add_argument("--bert_model", default=None, help="BERT hub name or directory (test interval emotion)")
    p.add_argument("--pre_encoder_dir", default=None, help="exported pre-encoder (codec tokens -> mel)")
    p.add_argument("--istftnet_dir", default=None, help="exported ISTFTNet vocoder (mel -> waveform)")
    p.add_argument("--test_sentences", nargs="*", default=None, help="sentences for the test interval")
    p.add_argument("--test_speakers", nargs="*", type=int, default=None, help="speaker ids for the test interval")
    return p.parse_args(argv)


def make_dummy_data(args: argparse.Namespace, model_cfg) -> None:
    """Fill empty data directories with dummy files (rank 0 only; the others wait)."""
    for directory, n, seed in ((args.train_data_dir, args.dummy_files, 0),
                               (args.val_data_dir, max(4, args.dummy_files // 4), 1)):
        if directory is None:
            continue
        if os.path.isdir(directory) and any(n.endswith(".pt") for n in os.listdir(directory)):
            log.info("--create_dummy: %s already has .pt files; leaving them", directory)
            continue
        create_dummy_data_files(directory, model_cfg, n_files=n, max_text_len=DUMMY_MAX_TEXT_LEN, seed=seed)
        log.info("--create_dummy: wrote %d dummy files to %s", n, directory)


def cap_dummy_run(train_cfg) -> None:
    """Bound a --create_dummy run that has no step limit of its own, and say so before it starts."""
    tc = train_cfg.training
    if tc.max_steps is not None:
        log.info("--create_dummy: training.max_steps = %d, as set", tc.max_steps)
        return
    tc.max_steps = DUMMY_MAX_STEPS
    log.info("--create_dummy: random data teaches nothing, so this run stops after %d steps (training.max_steps "
             "is null; --set training.max_steps=N trains longer)", DUMMY_MAX_STEPS)


def export_only(args: argparse.Namespace) -> int:
    from model.pretrained import export_echolancer, load_echolancer

    ckpt_dir = os.path.join(args.output_dir, "ckpt")
    source = args.export
    if source == "auto":
        source = os.path.join(ckpt_dir, "best.pt") if os.path.isfile(os.path.join(ckpt_dir, "best.pt")) else ckpt_dir
    loaded = load_echolancer(source)
    path = export_echolancer(loaded.model, loaded.model_config, loaded.tokenizer,
                             os.path.join(args.output_dir, "export"), loaded.step)
    log.info("wrote %s (step %s, from %s)", path, loaded.step, loaded.path)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export is not None:
        setup_logging(args.output_dir)
        return run_cli(lambda: export_only(args), prog=PROG)
    # Rank from the launcher's environment: the device check below can fail before the group exists.
    setup_logging(args.output_dir, int(os.environ.get("RANK", "0")) == 0)

    def body() -> int:
        dist_info = init_distributed(args.device)
        set_threads(args.threads)
        if not args.train_data_dir:
            raise ConfigError("--train_data_dir is required for training")
        model_cfg, train_cfg = load_configs(args.model_config, args.train_config, args.overrides)
        if args.create_dummy:
            cap_dummy_run(train_cfg)
            if dist_info.is_main:
                make_dummy_data(args, model_cfg)
            barrier()
        paths = RunPaths(
            args.train_data_dir, args.val_data_dir, args.output_dir, resolve_resume(args.resume, args.output_dir),
            args.bert_model, args.pre_encoder_dir, args.istftnet_dir, args.test_sentences or [],
            args.test_speakers or [], overwrite=args.overwrite, init_from=args.init_from,
        )
        result = Trainer(model_cfg, train_cfg, paths, dist_info).train()
        barrier()  # every rank is done with collectives before any tears the group down
        log.info("%s at step %d (epoch %d); best val loss %s; last checkpoint %s", result.status, result.step,
                 result.epoch, result.best_val_loss, result.last_checkpoint)
        return EXIT_FAILURE if result.status == "nonfinite" else EXIT_OK

    try:
        return run_cli(body, prog=PROG)
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
