"""The one device policy of every command and front end.

    pick_device(None) / pick_device("auto")   the local GPU when CUDA is usable, else the CPU
    pick_device("cpu")                        always the CPU
    pick_device("cuda") / pick_device("cuda:1")   that GPU, or an error saying why it is unusable

A CUDA device that was asked for but cannot be used is an error, never a quiet CPU run: a GPU job
running at CPU speed is worse than a one-line refusal. ``auto`` is refused too when the machine
shows an NVIDIA GPU that this torch cannot use (a wrong build or an old driver), for the same
reason. The trainers, ``infer.py``, ``evaluate.py``, ``preprocess.py``, ``demo.py``, the pipeline
and the BERT, pre-encoder and vocoder front ends all resolve their device here.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional, Union

import torch

from utils.config import ConfigError

Device = Union[str, torch.device, None]

# The forms a device may be named in; anything else (a typo, "mps", "gpu") is refused.
ALLOWED_FORMS = "auto, cpu, cuda or cuda:N"
# Where an NVIDIA driver shows itself even when this torch cannot talk to it.
NVIDIA_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl")


class CudaUnavailableError(RuntimeError):
    """CUDA was asked for, or an NVIDIA GPU is present, but this PyTorch cannot use it."""


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
    """``why`` (what asked for CUDA), the torch build, the reason and what to install.

    Args:
        why: the start of the sentence, e.g. "--device cuda was requested".
    """
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


def _parse(requested: Union[str, torch.device], what: str) -> torch.device:
    if isinstance(requested, torch.device):
        dev = requested
    else:
        try:
            dev = torch.device(requested)
        except (RuntimeError, TypeError):
            dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} {str(requested)!r}: not a device; use {ALLOWED_FORMS}")
    return dev


def pick_device(requested: Device = None, local_rank: int = 0, what: str = "--device") -> torch.device:
    """Resolve a device name by the one policy (module docstring).

    Args:
        requested: None, "" or "auto"; "cpu"; "cuda" or "cuda:N"; or a ``torch.device``.
        local_rank: the GPU that "auto" and a bare "cuda" mean (``torchrun``'s LOCAL_RANK).
        what: how the caller's device setting is named in errors ("--device", "BERTFrontEnd device").
    Returns:
        the device, with an index for CUDA.
    Raises:
        ConfigError: a name that is none of the allowed forms.
        CudaUnavailableError: CUDA asked for (or an NVIDIA GPU present under auto) but unusable,
            or a CUDA index this process does not see.
    """
    if requested is None or (isinstance(requested, str) and requested.strip().lower() in ("", "auto")):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        marker = nvidia_gpu_present()
        if marker:
            raise CudaUnavailableError(cuda_unusable_message(f"this machine has an NVIDIA GPU ({marker})"))
        return torch.device("cpu")
    dev = _parse(requested, what)
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        raise CudaUnavailableError(cuda_unusable_message(f"{what} {requested} was requested"))
    if dev.index is None:
        dev = torch.device("cuda", local_rank)
    count = torch.cuda.device_count()
    if dev.index >= count:
        available = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(count)])
        raise CudaUnavailableError(f"{what} {requested}: this process sees {count} CUDA device(s); "
                                   f"available: {available}")
    return dev
