"""Atomic checkpoints, a keep-last-N-plus-best manager, and RNG state capture.

Every training script saves through :func:`save_checkpoint`, which writes a temporary file in the
target directory, fsyncs it and renames it over the destination: a run killed while saving leaves
either the previous file or the new one, never a truncated one. Files are loaded with
``weights_only=True`` so a checkpoint can never run code; everything stored in them is therefore
kept to tensors, numbers, strings, lists and dicts (NumPy's RNG state is converted).

Checkpoint files are named ``ckpt_<step:09d>.pt``; "newest" means the highest step.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from typing import Any, Optional

import numpy as np
import torch

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
BEST_NAME = "best.pt"
_BEST_META = "best.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not what the caller expected."""


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:09d}.pt"


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same directory, fsync, rename).

    Args:
        state: a dict of tensors / numbers / strings / lists / dicts (``weights_only``-loadable).
        path: destination file; its directory is created if needed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # The temporary file must be on the same filesystem for os.replace to be atomic.
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave no half-written temporary behind (KeyboardInterrupt included), then re-raise.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # fsync the directory so the rename itself survives a power cut (not possible on Windows).
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(directory, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``ckpt_<step>.pt`` in ``ckpt_dir``, oldest first."""
    ckpt_dir = os.fspath(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        return []
    found = []
    for name in os.listdir(ckpt_dir):
        m = CKPT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(ckpt_dir, name)))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Optional[str]:
    """Path of the newest (highest-step) checkpoint in ``ckpt_dir``, or None if there is none."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def load_checkpoint(path_or_dir: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint file, or the newest checkpoint of a directory, with ``weights_only=True``.

    Raises:
        CheckpointError: the path does not exist, the directory holds no checkpoint, or the file
            is corrupt / not a dict / contains objects that would need arbitrary code to load.
    """
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        newest = latest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"{path}: no checkpoint files (ckpt_<step>.pt) in this directory")
        path = newest
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign / unsafe files
        raise CheckpointError(
            f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "the file is corrupt, truncated, or holds objects that weights_only loading refuses"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    return state


class CheckpointManager:
    """Saves ``ckpt_<step>.pt`` files, keeping the last ``keep_last`` plus the best by validation loss.

    The best checkpoint is also copied to ``best.pt`` (so it survives even after its step file is
    rotated out) and its step and loss are recorded in ``best.json``, which a resumed run reads back.

    Rotation only ever deletes files this run owns: the ones this manager wrote, plus (with
    ``adopt_existing``, i.e. when resuming) the step files already in the directory. Temporary
    files left by a save that was killed (``kill -9``) are removed at start-up.

    Args:
        ckpt_dir: directory for the checkpoints (created).
        keep_last: how many of the newest step checkpoints to keep.
        adopt_existing: treat the step files already present as this run's (a resumed run).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, keep_last: int = 3, adopt_existing: bool = True) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.ckpt_dir = os.fspath(ckpt_dir)
        self.keep_last = keep_last
        os.makedirs(self.ckpt_dir, exist_ok=True)
        remove_stale_temporaries(self.ckpt_dir)
        self._own: set[str] = {p for _, p in list_checkpoints(self.ckpt_dir)} if adopt_existing else set()
        self.best_loss: Optional[float] = None
        self.best_step: Optional[int] = None
        meta = os.path.join(self.ckpt_dir, _BEST_META)
        if adopt_existing and os.path.isfile(meta):
            with open(meta, encoding="utf-8") as f:
                d = json.load(f)
            self.best_loss, self.best_step = float(d["val_loss"]), int(d["step"])

    @property
    def best_path(self) -> Optional[str]:
        """``<ckpt_dir>/best.pt`` once a checkpoint with a validation loss was saved, else None."""
        p = os.path.join(self.ckpt_dir, BEST_NAME)
        return p if self.best_step is not None and os.path.isfile(p) else None

    def save(self, state: dict, step: int, val_loss: Optional[float] = None) -> str:
        """Save ``state`` as step ``step``; update the best if ``val_loss`` improves; rotate old files.

        Returns:
            the path of the step checkpoint written.
        """
        path = os.path.join(self.ckpt_dir, checkpoint_name(step))
        save_checkpoint(state, path)
        self._own.add(path)
        if val_loss is not None and (self.best_loss is None or val_loss < self.best_loss):
            self.best_loss, self.best_step = float(val_loss), int(step)
            save_checkpoint(state, os.path.join(self.ckpt_dir, BEST_NAME))
            tmp = os.path.join(self.ckpt_dir, _BEST_META + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"step": self.best_step, "val_loss": self.best_loss}, f)
            os.replace(tmp, os.path.join(self.ckpt_dir, _BEST_META))
        self._rotate()
        return path

    def _rotate(self) -> None:
        found = [(s, p) for s, p in list_checkpoints(self.ckpt_dir) if p in self._own]
        for step, path in found[: max(0, len(found) - self.keep_last)]:
            if step == self.best_step:  # never delete the best step file
                continue
            os.remove(path)
            self._own.discard(path)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the ``.tmp_*.pt`` / ``*.tmp`` files an interrupted :func:`save_checkpoint` left behind.

    Only the process that owns the directory calls this (rank 0 of the run writing it), at start-up,
    when no save of its own is in flight.
    """
    removed = []
    for name in os.listdir(directory):
        if (name.startswith(".tmp_") and name.endswith(".pt")) or name == _BEST_META + ".tmp":
            path = os.path.join(directory, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


# --------------------------------------------------------------------------------------------
# RNG state (weights_only-loadable)
# --------------------------------------------------------------------------------------------


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and (if present) CUDA generator states as plain types/tensors."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": {"version": py_version, "state": list(py_internal), "gauss": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored only if CUDA is available
    and the device count matches (a different world size cannot reuse per-device states)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32) if torch.is_tensor(n["keys"]) else np.asarray(n["keys"], np.uint32)
    np.random.set_state((n["name"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["gauss"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
