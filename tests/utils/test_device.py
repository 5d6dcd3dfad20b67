"""utils/device.py, the one device policy: auto = the GPU when CUDA is usable, else the CPU; CUDA
asked for but unusable is an error (never a quiet CPU run); a misspelt name lists the allowed forms.
CUDA is faked with monkeypatch, so the CUDA branches run on any machine."""

import pytest
import torch

import utils.device as D
from utils.config import ConfigError
from utils.device import CudaUnavailableError, pick_device


@pytest.fixture()
def no_cuda(monkeypatch):
    """A machine where this torch cannot use CUDA, and no NVIDIA driver unless a test adds one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "NVIDIA_MARKERS", ())
    monkeypatch.setattr(D.shutil, "which", lambda name: None)
    return monkeypatch


@pytest.fixture()
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    return monkeypatch


def test_auto_without_any_gpu_uses_the_cpu(no_cuda):
    assert pick_device("auto") == pick_device(None) == pick_device("") == pick_device("AUTO") == torch.device("cpu")


@pytest.mark.parametrize("requested", ["cpu", torch.device("cpu")])
def test_the_cpu_is_always_available(no_cuda, requested):
    assert pick_device(requested) == torch.device("cpu")


@pytest.mark.parametrize("requested", ["cuda", "cuda:1", torch.device("cuda", 0)])
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


def test_the_error_names_the_setting_it_came_from(no_cuda):
    with pytest.raises(CudaUnavailableError, match="^ScriptedPreEncoder device cuda was requested"):
        pick_device("cuda", what="ScriptedPreEncoder device")
    with pytest.raises(ConfigError, match="^BERTFrontEnd device 'gpu': not a device"):
        pick_device("gpu", what="BERTFrontEnd device")


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


@pytest.mark.parametrize("requested", ["gpu0", "gpu", "mps", "meta", "cuda:x", "cuda:-1", "cuda 0"])
def test_a_malformed_or_unsupported_name_lists_the_allowed_forms(requested, two_gpus):
    with pytest.raises(ConfigError, match=f"^--device '{requested}': not a device; use auto, cpu, cuda or cuda:N$"):
        pick_device(requested)


def test_available_cuda_picks_the_local_rank_and_checks_the_index(two_gpus):
    assert pick_device(None) == pick_device("auto") == torch.device("cuda", 0)
    assert pick_device(None, local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert pick_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert pick_device("cpu") == torch.device("cpu")  # a GPU machine may still run on the CPU
    with pytest.raises(CudaUnavailableError, match=r"sees 2 CUDA device\(s\); available: cpu, cuda:0, cuda:1$"):
        pick_device("cuda:2")
