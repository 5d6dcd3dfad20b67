"""The command-line frame of every trainer: common flags, logging to stderr and ``train.log``, and
the exit codes (0 done, 1 failure, 2 bad input: one line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Optional

from utils.checkpoint import CheckpointError
from utils.cli import EXIT_BAD_INPUT, error_line
from utils.config import ConfigError

# Exit codes of every command-line trainer (README "Exit codes").
EXIT_OK = 0  # finished, early-stopped, or stopped by a signal after saving
EXIT_FAILURE = 1  # training failed (non-finite losses, a bug: the traceback is in the log)
# EXIT_BAD_INPUT (2, from utils.cli): bad config, data, checkpoint, output directory or device: one line


def _for_the_console(record: logging.LogRecord) -> bool:
    # run_cli prints a bad-input error on stderr itself, in the form every command uses; the log
    # record of it is for train.log only, so stderr shows the error once.
    return getattr(record, "console", True)


def setup_logging(output_dir: Optional[str], is_main: bool = True, filename: str = "train.log") -> None:
    """INFO to stderr and (main process) ``<output_dir>/<filename>``; other ranks log warnings only."""
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_for_the_console)
    handlers: list[logging.Handler] = [console]
    if is_main and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, filename)))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")


def add_common_args(p: argparse.ArgumentParser, export_help: str) -> None:
    """The flags every trainer has, with one meaning."""
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue a run: bare = the newest checkpoint in OUTPUT_DIR/ckpt, or this checkpoint "
                        "file / ckpt directory")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUTPUT_DIR that holds checkpoints (they are moved aside)")
    p.add_argument("--export", nargs="?", const="auto", default=None, metavar="CKPT", help=export_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.max_steps=100 (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the local GPU if any)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad config, data, checkpoint, path or device: one line, exit status 2.

    The one list every command uses (with ``utils.cli``); anything else is a bug and keeps its
    traceback."""
    from data.dataset import DataError
    from model.istftnet_artifact import ISTFTNetDirError
    from model.preencoder_artifact import PreEncoderDirError
    from pipeline import PipelineError
    from utils.device import CudaUnavailableError
    from utils.phonemes import G2PUnavailable

    return (ConfigError, CheckpointError, DataError, PipelineError, PreEncoderDirError, ISTFTNetDirError,
            CudaUnavailableError, G2PUnavailable, FileNotFoundError, NotADirectoryError)


def run_cli(body: Callable[[], int], extra_bad_input: Iterable[type[BaseException]] = (),
            prog: Optional[str] = None) -> int:
    """Run a trainer's body with the documented exit codes.

    Bad input prints one line, ``prog: error: message``, on stderr (exit 2; train.log gets it too);
    any other exception is a bug or a failure and keeps its traceback in the log (exit 1).
    """
    bad = bad_input_errors() + tuple(extra_bad_input)
    prog = prog or os.path.basename(sys.argv[0])
    log_ = logging.getLogger("echolancer")
    try:
        return body()
    except bad as e:
        if getattr(e, "bug", False):  # a PipelineError wrapping an unexpected exception
            log_.exception("failed")
            return EXIT_FAILURE
        line = error_line(prog, e)
        if logging.getLogger().handlers:  # without any, logging would print the record on stderr too
            log_.error("%s", line, extra={"console": False})
        print(line, file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception:
        log_.exception("failed")
        return EXIT_FAILURE
