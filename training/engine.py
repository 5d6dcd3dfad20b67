"""What every trainer shares: precision, seeding, threads, the optimizer's
implementation and the attention kernels of a training step.

The rest of what recipes share lives by concern: ``training/loop.py`` (the one training loop),
``training/signals.py``, ``training/nonfinite.py`` (the non-finite policy), ``training/metrics.py``
(metrics without host syncs), ``training/resume.py``
(resume checks, output-directory safety) and ``training/command.py`` (flags, logging, exit codes).
Nothing here knows a model; the contracts are written down in ``docs/DESIGN.md`` ("Training engine").
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Optional

import numpy as np
import torch

from utils.config import ConfigError

__all__ = [
    "TRAINING_SDPA_BACKENDS", "amp_dtype", "autocast", "build_adam", "resolve_optimizer_impl",
    "resolve_precision", "sdpa_kernel", "seed_everything", "set_threads", "training_attention",
]


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
# Optimizer, attention backends
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

