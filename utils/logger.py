"""A small Weights & Biases wrapper shared by every training script.

- ``mode``: ``online``, ``offline`` (the default: no account needed; ``wandb sync`` uploads later)
  or ``disabled``. The ``WANDB_MODE`` environment variable wins over the config.
- Run files go under ``<output_dir>/wandb/``.
- One history row per step: metrics logged for the same step are merged and written once when a
  later step arrives (or at :meth:`Logger.finish`). A step lower than one already written (e.g.
  after resuming from an older checkpoint) is dropped with a warning rather than logged twice.
- ``enabled=False`` (non-zero ranks in distributed training) makes every method a no-op.

:func:`read_offline_history` parses an offline run's ``run-*.wandb`` file back into dicts, so tests
and scripts can check what was logged without a W&B server.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import time
import warnings
from typing import Any, Optional

import numpy as np

MODES = ("online", "offline", "disabled")
_DIRS_SET_HERE: set[str] = set()  # W&B directory variables this module set (a user's own are left alone)


class Logger:
    """Weights & Biases run wrapper.

    Args:
        output_dir: the run's output directory; W&B writes ``<output_dir>/wandb/``.
        project, run_name, entity: W&B identifiers.
        mode: ``online``, ``offline`` or ``disabled`` (``WANDB_MODE`` overrides it).
        config: hyperparameters to record (e.g. ``{"model": ..., "train": ...}``).
        enabled: False makes this logger do nothing (non-zero ranks).
        run_id: resume this W&B run id (stored in checkpoints) instead of starting a new run.
    """

    def __init__(
        self,
        output_dir: str,
        project: str = "echolancer",
        mode: str = "offline",
        run_name: Optional[str] = None,
        entity: Optional[str] = None,
        config: Optional[dict] = None,
        enabled: bool = True,
        run_id: Optional[str] = None,
    ) -> None:
        self.enabled = enabled
        self.mode = os.environ.get("WANDB_MODE", mode) or mode
        if self.mode == "dryrun":  # old spelling still accepted by wandb
            self.mode = "offline"
        if self.mode not in MODES:
            raise ValueError(f"wandb mode must be one of {', '.join(MODES)}, got {self.mode!r} "
                             "(from WANDB_MODE or wandb.mode in the training config)")
        self.output_dir = output_dir
        self._run = None
        self._pending_step: Optional[int] = None
        self._pending: dict[str, Any] = {}
        self._last_step = -1
        self._warned_old_step = False
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        # Keep W&B's staging area and caches (artifact copies) under output_dir too, unless the
        # user has put them elsewhere on purpose.
        for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_ARTIFACT_DIR", "artifacts")):
            if var not in os.environ or var in _DIRS_SET_HERE:
                os.environ[var] = os.path.join(os.path.abspath(output_dir), "wandb", sub)
                _DIRS_SET_HERE.add(var)
        import wandb

        self._wandb = wandb
        self._run = wandb.init(
            project=project,
            entity=entity,
            name=run_name,
            dir=output_dir,
            mode=self.mode,
            config=config or {},
            id=run_id,
            resume="allow" if run_id else None,
            # Each Logger is its own run. W&B's default returns a still-open run of this process
            # instead, so a Logger made while another is unfinished would write into that run.
            settings=wandb.Settings(console="off", silent=True, reinit="create_new"),
        )

    # ---- identity ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True when metrics actually go somewhere (enabled and not ``disabled``)."""
        return self._run is not None and self.mode != "disabled"

    @property
    def run_id(self) -> Optional[str]:
        return self._run.id if self.active else None

    @property
    def run_dir(self) -> Optional[str]:
        """The run's directory (``<output_dir>/wandb/offline-run-...``), or None when inactive."""
        return os.path.dirname(self._run.dir) if self.active else None

    # ---- logging -------------------------------------------------------------------------------

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record ``metrics`` for ``step``; merged with anything else logged for the same step."""
        if not self.active:
            return
        if step <= self._last_step:
            if not self._warned_old_step:
                warnings.warn(
                    f"logger: step {step} was already written (last written step {self._last_step}); "
                    "dropping metrics for steps already in the W&B history", stacklevel=2,
                )
                self._warned_old_step = True
            return
        if self._pending_step is not None and step != self._pending_step:
            if step < self._pending_step:
                warnings.warn(f"logger: step {step} arrived after step {self._pending_step}; dropped", stacklevel=2)
                return
            self.flush()
        self._pending_step = step
        self._pending.update(metrics)

    def log_audio(self, key: str, wav: np.ndarray, sample_rate: int, step: int, caption: Optional[str] = None) -> None:
        """Log a mono waveform (float in [-1, 1], shape (N,))."""
        if not self.active:
            return
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        self.log({key: self._wandb.Audio(wav, sample_rate=sample_rate, caption=caption)}, step)

    def log_image(self, key: str, image: np.ndarray, step: int, caption: Optional[str] = None) -> None:
        """Log an image: (H, W) greyscale or (H, W, 3) RGB; floats are min-max scaled to 0..255."""
        if not self.active:
            return
        img = np.asarray(image)
        if img.dtype != np.uint8:
            lo, hi = float(np.min(img)), float(np.max(img))
            img = ((img - lo) / max(hi - lo, 1e-8) * 255.0).astype(np.uint8)
        self.log({key: self._wandb.Image(img, caption=caption)}, step)

    def flush(self) -> None:
        """Write the pending step's row (called automatically when the step advances)."""
        if self.active and self._pending_step is not None and self._pending:
            self._run.log(self._pending, step=self._pending_step)
            self._last_step = self._pending_step
        self._pending, self._pending_step = {}, None

    def log_artifact(self, path: str, name: str, type: str = "model", aliases: Optional[list[str]] = None) -> None:
        """Log a file as a W&B artifact (stored for ``wandb sync`` in offline mode; no-op when disabled)."""
        if not self.active:
            return
        art = self._wandb.Artifact(name=name, type=type)
        art.add_file(path)
        self._run.log_artifact(art, aliases=aliases)

    def summary(self, values: dict[str, Any]) -> None:
        if not self.active:
            return
        for k, v in values.items():
            self._run.summary[k] = v

    def finish(self) -> None:
        if self._run is None:
            return
        self.flush()
        run_dir = self.run_dir if self.mode == "offline" else None
        self._run.finish()
        self._run = None
        if run_dir is not None:
            _wait_for_exit_record(run_dir)


# --------------------------------------------------------------------------------------------
# Reading an offline run back (W&B's transaction log: LevelDB log format of protobuf Records)
# --------------------------------------------------------------------------------------------

_BLOCK = 32768
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log (missing ':W&B' header)")
    pos, out, buf = _HEADER, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer too small for a record header: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            buf = chunk
        elif kind == _MIDDLE:
            buf += chunk
        elif kind == _LAST:
            out.append(buf + chunk)
            buf = b""
    return out


def _has_exit_record(run_dir: str) -> bool:
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    for path in glob.glob(os.path.join(run_dir, "run-*.wandb")):
        try:
            records = _records(path)
        except ValueError:  # header not written yet
            return False
        for raw in reversed(records):
            rec = pb.Record()
            try:
                rec.ParseFromString(raw)
            except DecodeError:
                # W&B's service is still writing this record: not finished yet, look again later.
                return False
            if rec.WhichOneof("record_type") == "exit":
                return True
    return False


def _wait_for_exit_record(run_dir: str, timeout_s: float = 120.0) -> None:
    """``run.finish()`` can return before W&B's service has written the offline log to disk; wait
    for the final ``exit`` record so the files are complete when this process reads or copies them."""
    deadline = time.monotonic() + timeout_s
    while not _has_exit_record(run_dir):
        if time.monotonic() > deadline:
            warnings.warn(f"logger: {run_dir} has no exit record after {timeout_s:.0f} s; the offline run "
                          "may be incomplete", stacklevel=3)
            return
        time.sleep(0.05)


def find_run_dir(output_dir: str) -> str:
    """The newest ``offline-run-*`` (or ``run-*``) directory under ``<output_dir>/wandb``."""
    runs = sorted(glob.glob(os.path.join(output_dir, "wandb", "*run-*")), key=os.path.getmtime)
    runs = [r for r in runs if os.path.isdir(r)]
    if not runs:
        raise FileNotFoundError(f"{output_dir}: no W&B run directory under wandb/")
    return runs[-1]


def read_offline_history(run_dir: str) -> list[dict[str, Any]]:
    """Parse a run directory's ``run-*.wandb`` file into its history rows (one dict per step).

    Nested keys (e.g. media) are joined with ``/``; values are decoded from JSON.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    files = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    rows = []
    for raw in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows
