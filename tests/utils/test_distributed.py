"""Device choice never falls back to the CPU silently: CUDA requested (or an NVIDIA GPU present) but
unusable is an error that names the torch build and what to install. CUDA is faked with monkeypatch."""

import pytest
import torch

import utils.distributed as D
from utils.distributed import CudaUnavailableError, pick_device


@pytest.fixture()
def no_cuda(monkeypatch):
    """A machine where this torch cannot use CUDA, and no NVIDIA driver unless a test adds one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "NVIDIA_MARKERS", ())
    monkeypatch.setattr(D.shutil, "which", lambda name: None)
    return monkeypatch


@pytest.mark.parametrize("requested", ["cuda", "cuda:1"])
def test_requested_cuda_that_is_unusable_is_an_error_naming_build_and_fix(no_cuda, requested):
    no_cuda.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(CudaUnavailableError) as e:
        pick_device(requested)
    msg = str(e.value)
    assert f"--device {requested} was requested" in msg
    assert f"torch {torch.__version__}" in msg and "torch.version.cuda = 13.0" in msg
    assert "driver" in msg and "--index-url https://download.pytorch.org/whl/" in msg and "--device cpu" in msg


def test_a_cpu_only_build_is_named_as_such(no_cuda):
    no_cuda.setattr(torch.version, "cuda", None)
    with pytest.raises(CudaUnavailableError, match=r"torch.version.cuda = None\) is a CPU-only build"):
        pick_device("cuda")


def test_auto_with_an_nvidia_gpu_present_but_unusable_is_an_error(no_cuda, tmp_path):
    marker = tmp_path / "nvidia_version"
    marker.write_text("NVRM version: 535")
    no_cuda.setattr(D, "NVIDIA_MARKERS", (str(marker),))
    with pytest.raises(CudaUnavailableError, match="this machine has an NVIDIA GPU .*nvidia_version"):
        pick_device("auto")
    no_cuda.setattr(D, "NVIDIA_MARKERS", ())
    no_cuda.setattr(D.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    with pytest.raises(CudaUnavailableError, match="nvidia-smi"):
        pick_device(None)
    assert pick_device("cpu") == torch.device("cpu")  # asking for the CPU is always fine


def test_auto_without_any_gpu_uses_the_cpu(no_cuda):
    assert pick_device("auto") == pick_device(None) == torch.device("cpu")


def test_available_cuda_picks_the_local_rank_and_checks_the_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device(None, local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(CudaUnavailableError, match=r"sees 2 CUDA device\(s\)"):
        pick_device("cuda:2")


def test_init_distributed_and_infer_raise_instead_of_running_on_the_cpu(no_cuda):
    import infer

    no_cuda.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(CudaUnavailableError):
        D.init_distributed("cuda")
    assert D.init_distributed("cpu").device == torch.device("cpu")
    with pytest.raises(infer.InferError, match="cannot use CUDA.*torch.version.cuda"):
        infer.resolve_device("cuda")
    assert infer.resolve_device("auto") == torch.device("cpu")
