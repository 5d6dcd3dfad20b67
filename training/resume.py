"""Starting a run safely: the resume-compatibility check, the resume policy for optimizer settings,
and the output directory's protection against a fresh run over another run's checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Optional

import numpy as np
import torch

from utils.checkpoint import BEST_NAME, list_checkpoints
from utils.config import ConfigError

log = logging.getLogger("echolancer.train")

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

