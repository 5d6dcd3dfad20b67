"""What every trainer shares: precision, seeding, signals, the non-finite policy, the
resume-compatibility check, output-directory safety, logging and the command-line frame.

A recipe (``training/echolancer.py``, ``training/preencoder.py``, ``training/vocoder.py``) builds
its model, data and optimizers and calls these helpers; nothing here knows a model. The contracts
are written down in ``docs/DESIGN.md`` ("Training engine").
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any, Optional

import numpy as np
import torch

from utils.checkpoint import BEST_NAME, CheckpointError, list_checkpoints
from utils.cli import EXIT_BAD_INPUT, error_line
from utils.config import ConfigError

log = logging.getLogger("echolancer.train")

# Exit codes of every command-line trainer (README "Exit codes").
EXIT_OK = 0  # finished, early-stopped, or stopped by a signal after saving
EXIT_FAILURE = 1  # training failed (non-finite losses, a bug: the traceback is in the log)
# EXIT_BAD_INPUT (2, from utils.cli): bad config, data, checkpoint, output directory or device: one line


# --------------------------------------------------------------------------------------------
# Precision, seeding (the device comes from utils/device.py, the policy of every command)
# --------------------------------------------------------------------------------------------


def resolve_precision(requested: str, device: torch.device) -> str:
    """The one meaning of ``auto`` for all trainers: bf16 on a GPU that supports it, fp16 on other
    GPUs, fp32 on the CPU. An explicit ``fp16`` needs CUDA."""
    if requested != "auto":
        if requested == "fp16" and device.type != "cuda":
            raise ConfigError(f"training.precision: fp16 needs a CUDA device, got {device}; use bf16 or fp32")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def amp_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a resolved precision (None = fp32, no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(precision: str, device: torch.device):
    dtype = amp_dtype(precision)
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM.

    Schedulers, ``timeout`` and Ctrl-C signal the whole process group. A worker killed by that
    signal makes the main process's next batch raise ("DataLoader worker ... killed by signal")
    before it can save; so the workers ignore it, the main process saves once and shuts them down.
    They still exit when the main process dies (PyTorch's worker watchdog).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopSignals:
    """SIGINT/SIGTERM ask a run to save and stop at the next safe point; a second one acts at once.

    Use as a context manager; ``requested`` turns True on the first signal (logged once).
    """

    def __init__(self, on_stop: Optional[Callable[[], None]] = None) -> None:
        self.requested = False
        self._on_stop = on_stop
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked child that inherited the handler: not ours
            return
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = True
        if self._on_stop is not None:
            self._on_stop()
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal acts immediately

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._previous.items():
            signal.signal(sig, h)


# --------------------------------------------------------------------------------------------
# Non-finite steps
# --------------------------------------------------------------------------------------------


class NonFinitePolicy:
    """One policy for every trainer.

    A step whose loss or gradient is not finite applies no update, but still counts as a step
    (the step counter and the learning-rate schedule advance: it consumed its data). After
    ``limit`` such steps in a row the run saves its last good state and stops with exit status 1.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.total = 0
        # Latched when the streak reaches the limit: a recipe that learns of its steps' finiteness
        # late (flags kept on the device, read every few steps) still stops when a later finite step
        # reset the streak in the meantime.
        self.tripped = False

    def record(self, finite: bool) -> None:
        if finite:
            self.streak = 0
        else:
            self.streak += 1
            self.total += 1
            self.tripped = self.tripped or self.streak >= self.limit

    @property
    def should_stop(self) -> bool:
        return self.tripped or self.streak >= self.limit

    def message(self, step: int, key: str = "training.max_nonfinite_steps") -> str:
        n = max(self.streak, self.limit) if self.tripped else self.streak
        return (f"stopping at step {step}: {n} steps in a row had a non-finite loss or gradient "
                f"({key} = {self.limit}); lower the learning rate, clip gradients or use fp32")


# --------------------------------------------------------------------------------------------
# Optimizer, attention backends, metrics without host syncs
# --------------------------------------------------------------------------------------------


def resolve_optimizer_impl(requested: str, device: torch.device) -> str:
    """``auto``: ``fused`` on CUDA (one kernel per step, and it can skip a step on the device through
    its ``found_inf`` input, without a host sync), ``foreach`` elsewhere. ``fused`` is also valid on
    the CPU (torch has a CPU fused Adam); ``foreach`` and ``fused`` are otherwise what they say."""
    if requested == "auto":
        return "fused" if device.type == "cuda" else "foreach"
    return requested


def build_adam(kind: str, params: Any, impl: str, **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` (``kind="adamw"``) or ``Adam`` with the resolved implementation ``impl``."""
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}}[impl]
    return cls(params, **flags, **kwargs)


# Scaled-dot-product-attention kernels a training step may use. cuDNN attention is left out on
# purpose: it has open reports of NaN gradients in the backward pass for some sequence lengths on
# Hopper (H100/H200), and with an ALiBi float bias training otherwise runs the memory-efficient
# kernel while evaluation could pick cuDNN. Flash, memory-efficient and math cover every case
# (math is the always-available fallback); the CPU has none of the excluded kernels, so pinning
# changes nothing there.
TRAINING_SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def sdpa_kernel(backends: list) -> Any:
    """``torch.nn.attention.sdpa_kernel`` (a module-level name so tests can watch it)."""
    from torch.nn.attention import sdpa_kernel as _sdpa_kernel

    return _sdpa_kernel(backends)


def training_attention(device: torch.device) -> tuple[Callable[[], Any], str]:
    """A context factory that pins the SDPA backends for training steps, and its description for the
    start-up log."""
    from torch.nn.attention import SDPBackend

    backends = [getattr(SDPBackend, name) for name in TRAINING_SDPA_BACKENDS]
    names = ", ".join(n.lower().replace("_attention", "") for n in TRAINING_SDPA_BACKENDS)
    what = f"SDPA backends pinned for training on {device.type}: {names} (cuDNN attention excluded)"
    return (lambda: sdpa_kernel(backends)), what


class StepMetrics(Mapping):
    """One step's metrics, kept where they were computed.

    ``device``: a float64 tensor on the training device, one value per name in ``device_keys``
    (nothing is read to the host while training runs); ``host``: plain floats. Reading a key
    (``m["train/loss"]``) reads the device values to the host: one sync, for tests and callers that
    want numbers now. :class:`MetricWindow` adds them up on the device instead.
    """

    def __init__(self, device_keys: tuple[str, ...], device: torch.Tensor, host: dict[str, float]) -> None:
        self.device_keys, self.device, self.host = device_keys, device, host
        self._read: Optional[dict[str, float]] = None

    def _all(self) -> dict[str, float]:
        if self._read is None:
            self._read = {**dict(zip(self.device_keys, self.device.tolist())), **self.host}
        return self._read

    def __getitem__(self, key: str) -> float:
        return self._all()[key]

    def __iter__(self):
        return iter((*self.device_keys, *self.host))

    def __len__(self) -> int:
        return len(self.device_keys) + len(self.host)


class MetricWindow:
    """The steps since the last log line: device values summed on the device, host values kept.

    :meth:`mean` reads the device sums once (one host sync per log line) and gives what averaging
    the steps' floats one by one gave: the device sums are float64 and added in step order, as
    Python's ``sum`` of floats does, so the logged numbers are the same bits. ``last_keys`` take the
    window's last value instead of its mean.
    """

    def __init__(self, last_keys: tuple[str, ...] = ()) -> None:
        self.last_keys = last_keys
        self.clear()

    def clear(self) -> None:
        self.n = 0
        self._sum: Optional[torch.Tensor] = None
        self._keys: tuple[str, ...] = ()
        self._host: list[dict[str, float]] = []

    def __len__(self) -> int:
        return self.n

    def add(self, m: StepMetrics) -> None:
        self._sum = m.device.clone() if self._sum is None else self._sum.add_(m.device)
        self._keys = m.device_keys
        self._host.append(m.host)
        self.n += 1

    def mean(self) -> dict[str, float]:
        if not self.n:
            return {}
        out = {k: v / self.n for k, v in zip(self._keys, self._sum.tolist())}  # the one read
        for k in self._host[0]:
            out[k] = self._host[-1][k] if k in self.last_keys else sum(h[k] for h in self._host) / self.n
        for k in self.last_keys:
            if k in out and k not in self._host[0]:
                raise KeyError(f"{k}: a last-value key must be a host value")
        return out


# --------------------------------------------------------------------------------------------
# Resume compatibility
# --------------------------------------------------------------------------------------------


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every key that differs (missing = None)."""
    a, b = _flatten(saved, prefix), _flatten(current, prefix)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


RESUME_HINT = "A resumed run keeps the architecture and audio settings it was started with"


def check_resume_compatible(source: str, sections: dict[str, tuple[dict, dict]], hint: str = RESUME_HINT) -> None:
    """Refuse to resume (or to start from trained weights) when a section that defines the weights changed.

    Args:
        source: the checkpoint (for the message).
        sections: ``name -> (saved dict, current dict)``, e.g. ``{"model": (ck_model, cfg_model)}``.
        hint: the message's last sentence: what the user can do about it.
    Raises:
        ConfigError: naming every differing key with its checkpoint and current values.
    """
    diffs = {name: config_differences(saved, cur) for name, (saved, cur) in sections.items()}
    diffs = {name: d for name, d in diffs.items() if d}
    if not diffs:
        return
    summary = "; ".join(f"differing {name}.* keys: {', '.join(sorted({k.split('.')[0] for k, _, _ in d}))}"
                        for name, d in diffs.items())
    details = "; ".join(f"{name}.{k}: {old!r} in the checkpoint, {new!r} now"
                        for name, d in diffs.items() for k, old, new in d)
    raise ConfigError(f"{source}: the checkpoint's settings differ from --config ({summary}): {details}. {hint}")


def apply_optimizer_settings(source: str, optimizer: torch.optim.Optimizer, scheduler: Any,
                             settings: dict[str, Any], key_prefix: str = "optimizer") -> list[str]:
    """Resume policy for optimizer keys: a changed value is **applied** (and logged), not ignored.

    ``load_state_dict`` restores the old learning rate, weight decay, betas and eps with the
    optimizer state. This sets the config's values on every parameter group (weight decay only on
    groups that decay) and rescales the schedule (``base_lrs``) so the new base rate takes effect
    from the next step. Nothing is touched when nothing changed (exact resume stays bitwise).

    Args:
        settings: any of ``learning_rate``, ``weight_decay``, ``betas``, ``eps``.
    Returns:
        one line per applied change.
    """
    changes = []
    groups = optimizer.param_groups
    base_lrs = list(getattr(scheduler, "base_lrs", [g.get("initial_lr", g["lr"]) for g in groups]))
    new_lr = settings.get("learning_rate")
    if new_lr is not None and base_lrs and max(base_lrs) > 0 and not np.isclose(max(base_lrs), new_lr, rtol=1e-9, atol=0):
        ratio = float(new_lr) / max(base_lrs)
        changes.append(f"{key_prefix}.learning_rate: {max(base_lrs):g} -> {new_lr:g}")
        if scheduler is not None:
            scheduler.base_lrs = [b * ratio for b in base_lrs]
            if hasattr(scheduler, "_last_lr"):
                scheduler._last_lr = [x * ratio for x in scheduler._last_lr]
        for g in groups:
            g["lr"] = g["lr"] * ratio
            if "initial_lr" in g:
                g["initial_lr"] = g["initial_lr"] * ratio
    wd = settings.get("weight_decay")
    decaying = [g for g in groups if g.get("weight_decay", 0.0) != 0.0] or groups[:1]
    if wd is not None and any(g["weight_decay"] != wd for g in decaying):
        changes.append(f"{key_prefix}.weight_decay: {decaying[0]['weight_decay']:g} -> {wd:g}")
        for g in decaying:
            g["weight_decay"] = float(wd)
    for name in ("betas", "eps"):
        value = settings.get(name)
        if value is None or name not in groups[0]:
            continue
        value = tuple(value) if name == "betas" else float(value)
        old = groups[0][name]
        if (tuple(old) if name == "betas" else old) != value:
            changes.append(f"{key_prefix}.{name}: {old} -> {value}")
            for g in groups:
                g[name] = value
    for c in changes:
        log.warning("%s: resuming with a changed setting, applied from the next step: %s", source, c)
    return changes


# --------------------------------------------------------------------------------------------
# Output directory
# --------------------------------------------------------------------------------------------


def run_has_checkpoints(ckpt_dir: str) -> bool:
    return bool(list_checkpoints(ckpt_dir)) or os.path.isfile(os.path.join(ckpt_dir, BEST_NAME))


def prepare_output_dir(output_dir: str, resume: Optional[str], overwrite: bool = False,
                       is_main: bool = True, init_from: Optional[str] = None) -> None:
    """Refuse to start a fresh run over another run's checkpoints.

    A fresh run (no ``resume``) into an ``output_dir`` whose ``ckpt/`` holds checkpoints is a
    :class:`ConfigError` unless ``overwrite``: then the old ``ckpt/`` is moved aside to
    ``ckpt.replaced-<time>/`` (never deleted), so rotation and ``--resume <dir>/ckpt`` only ever see
    the new run. A run started from trained weights (``init_from``) is always new: it cannot resume,
    and it refuses an ``output_dir`` that holds checkpoints even with ``overwrite`` (the source is
    often that very run).
    """
    ckpt_dir = os.path.join(output_dir, "ckpt")
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    if init_from is not None and resume is not None:
        raise ConfigError("--init_from and --resume contradict each other: --init_from starts a new run from "
                          "trained weights only, --resume continues a run with its optimizer, step and RNG state")
    if init_from is not None and run_has_checkpoints(ckpt_dir):
        raise ConfigError(f"--output_dir {output_dir} already holds a run's checkpoints: --init_from starts a new "
                          "run, so give it a new --output_dir (or continue that run with --resume, without --init_from)")
    if resume is not None or not run_has_checkpoints(ckpt_dir):
        return
    if not overwrite:
        found = list_checkpoints(ckpt_dir)
        newest = f" (newest: step {found[-1][0]})" if found else ""
        raise ConfigError(
            f"--output_dir {output_dir} already holds a run's checkpoints{newest}: pass --resume to continue "
            "it, --overwrite to start a new run there (the old ckpt/ is moved aside, not deleted), or "
            "choose another --output_dir"
        )
    if is_main:
        aside = f"{ckpt_dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while os.path.exists(aside):
            aside = f"{ckpt_dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
            n += 1
        shutil.move(ckpt_dir, aside)
        log.warning("--overwrite: the previous run's checkpoints were moved to %s", aside)


def resolve_resume(resume: Optional[str], output_dir: str) -> Optional[str]:
    """``--resume`` bare (``auto``) means ``<output_dir>/ckpt``; a path is used as given."""
    if resume is None:
        return None
    return os.path.join(output_dir, "ckpt") if resume == "auto" else resume


# --------------------------------------------------------------------------------------------
# Logging and the command-line frame
# --------------------------------------------------------------------------------------------


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
