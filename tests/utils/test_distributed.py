"""init_distributed takes its device from utils/device.py: CUDA requested but unusable is an error,
not a CPU run (the policy's own rules are tests/utils/test_device.py). CUDA is faked with monkeypatch."""

import pytest
import torch

import utils.device
import utils.distributed as D
from utils.device import CudaUnavailableError


@pytest.fixture()
def no_cuda(monkeypatch):
    """A machine where this torch cannot use CUDA, and no NVIDIA driver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(utils.device, "NVIDIA_MARKERS", ())
    monkeypatch.setattr(utils.device.shutil, "which", lambda name: None)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return monkeypatch


def test_init_distributed_raises_instead_of_running_on_the_cpu(no_cuda):
    with pytest.raises(CudaUnavailableError):
        D.init_distributed("cuda")
    assert D.init_distributed("cpu").device == torch.device("cpu")
    assert D.init_distributed("auto").device == torch.device("cpu")
