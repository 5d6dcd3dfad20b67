"""Process-group helpers for ``torchrun`` launches (one process per GPU, or CPU processes with gloo).

A plain ``python train.py`` run is a world of one and every helper here is a cheap no-op for it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from utils.config import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


class CudaUnavailableError(RuntimeError):
    """CUDA was asked for, or an NVIDIA GPU is present, but this PyTorch cannot use it."""


# Where an NVIDIA driver shows itself even when this torch cannot talk to it.
NVIDIA_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl")


def nvidia_gpu_present() -> Optional[str]:
    """What shows an NVIDIA GPU/driver on this machine (a path, or ``nvidia-smi``), or None."""
    for path in NVIDIA_MARKERS:
        if os.path.exists(path):
            return path
    smi = shutil.which("nvidia-smi")
    return f"nvidia-smi ({smi})" if smi else None


def _cuda_init_error() -> str:
    try:
        torch.cuda.init()
    except Exception as e:  # AssertionError on CPU builds, RuntimeError for driver problems
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return "torch.cuda.is_available() is False"


def cuda_unusable_message(why: str) -> str:
    """``why`` (what asked for CUDA), the torch build, the reason and what to install."""
    build = f"torch {torch.__version__} (torch.version.cuda = {torch.version.cuda})"
    reason = _cuda_init_error()
    if torch.version.cuda is None:
        problem = f"{build} is a CPU-only build"
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        problem = (f"{build} is built for CUDA {torch.version.cuda}, but CUDA does not start ({reason}); usually "
                   f"the NVIDIA driver is older than CUDA {torch.version.cuda} needs, or no GPU is visible"
                   + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""))
    return (
        f"{why}, but this PyTorch cannot use CUDA: {problem}. Install a torch/torchaudio build for the CUDA "
        "version your driver supports (nvidia-smi shows it), e.g. `pip install torch torchaudio --index-url "
        "https://download.pytorch.org/whl/cu126` (cu118, cu124, cu126, cu128, ...: see pytorch.org), or update "
        "the driver; requirements.txt accepts any torch in its range, so that build is kept. "
        "To run on the CPU on purpose, pass --device cpu."
    )


def pick_device(requested: Optional[str] = None, local_rank: int = 0) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1"; None or "auto": the local GPU if there is one, else the CPU).

    Never falls back to the CPU silently: raises :class:`CudaUnavailableError` when CUDA was
    requested, or when ``auto`` finds an NVIDIA GPU on the machine that this torch cannot use
    (a GPU run at CPU speed is worse than an error). ``--device cpu`` always works.
    """
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        marker = nvidia_gpu_present()
        if marker:
            raise CudaUnavailableError(cuda_unusable_message(f"this machine has an NVIDIA GPU ({marker})"))
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested!r}: not a device; use cpu, cuda, cuda:N (or auto)") from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise CudaUnavailableError(cuda_unusable_message(f"--device {requested} was requested"))
    if dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.index >= torch.cuda.device_count():
        raise CudaUnavailableError(f"--device {requested}: this process sees {torch.cuda.device_count()} CUDA "
                                   f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev


def init_distributed(requested_device: Optional[str] = None) -> DistInfo:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE`` > 1), else a world of one.

    The backend is NCCL on CUDA devices and gloo on CPU. The device comes from :func:`pick_device`
    (an error, not a silent CPU run, when CUDA is wanted but unusable).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (in place) and return it; identity for a world of one."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order; ``[obj]`` for a world of one."""
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
