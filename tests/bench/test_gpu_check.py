"""bench/gpu_check.py: its CPU dry run exercises every check and proves what the CPU can (cached and
uncached decoding agree, fp16/bf16 training runs stay finite and learn, the naive reference computes
the model's attention, the recipe's training step reads nothing from the device, the vocoder's bf16
run skips no step, a dynamic compile does not recompile for new bucket lengths); without CUDA a GPU
run stops with a clear message."""

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "bench", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_passes_every_check_the_cpu_can_make(gpu_check, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert gpu_check.main(["--dry-run"]) == 0
    lines = [line.split(None, 2) for line in capsys.readouterr().out.splitlines() if line[:4] in ("PASS", "FAIL", "INFO")]
    status = {name.rstrip(":"): s for s, name, *_ in lines}
    for name in ("decode_b1", "decode_b8", "train_fp16", "train_bf16", "train_fp16_relu2", "naive_reference",
                 "train_syncs", "vocoder_bf16", "compile_recompiles"):
        assert status.get(name) == "PASS", (name, lines)
    assert status["graph_other_dev"] == "INFO" and status["train_speed"] == "INFO"  # GPU-only verdicts
    assert status["vocoder_fp16"] == "INFO"  # fp16 needs CUDA
    assert "FAIL" not in status.values()


def test_without_cuda_a_gpu_run_exits_with_the_reason(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL cuda:") and "cannot use CUDA" in out and f"torch {torch.__version__}" in out
    assert "--dry-run" in out
    assert gpu_check.main(["--device", "cpu"]) == 2  # the full-size checks are not for the CPU
