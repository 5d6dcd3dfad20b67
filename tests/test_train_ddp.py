"""Two-process DistributedDataParallel training on CPU (gloo), launched by torchrun like on GPUs.

The global batch list of the bucketed sampler does not depend on the world size and the loss is
normalised by the token count of all processes, so 2 processes x 1 micro-batch must train the same
weights as 1 process x 2 accumulated micro-batches; and a 2-process checkpoint resumes in 1 process.
"""

import os
import subprocess
import sys

import pytest
import torch

from data.dummy import create_dummy_data_files
from training.echolancer import RunPaths, Trainer
from utils.checkpoint import load_checkpoint
from utils.config import load_configs
from utils.distributed import DistInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CFG = os.path.join(ROOT, "config/model_tiny.yaml")
TRAIN_CFG = os.path.join(ROOT, "config/train_tiny.yaml")
COMMON = ["training.batch_size=4", "training.log_step=1", "training.val_step=1000", "training.save_step=1000",
          "training.test_step=1000", "scheduler.warmup_steps=2", "scheduler.total_steps=10",
          "early_stopping.restore_best=false"]


def single_process(data, out, overrides, resume=None) -> Trainer:
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, COMMON + ["training.grad_acc_step=2"] + overrides)
    t = Trainer(mcfg, tcfg, RunPaths(data[0], data[1], str(out), resume=resume), DistInfo())
    t.train()
    return t


def test_two_gloo_processes_match_one_process_with_accumulation_and_resume_in_one(tmp_path, monkeypatch):
    mcfg, _ = load_configs(MODEL_CFG, TRAIN_CFG)
    data = (str(tmp_path / "train"), str(tmp_path / "val"))
    create_dummy_data_files(data[0], mcfg, n_files=24, max_text_len=20, seed=0)
    create_dummy_data_files(data[1], mcfg, n_files=4, max_text_len=20, seed=1)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--model_config", MODEL_CFG, "--train_config", TRAIN_CFG, "--train_data_dir", data[0],
           "--val_data_dir", data[1], "--output_dir", str(out), "--device", "cpu"]
    for item in COMMON + ["training.grad_acc_step=1", "training.max_steps=2"]:
        cmd += ["--set", item]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-12000:]
    ck = load_checkpoint(out / "ckpt")
    assert ck["step"] == 2 and ck["sampler"] == {"epoch": 0, "position": 4, "seed": 1234, "world_size": 2}
    assert len(ck["rng"]["per_rank"]) == 2
    # Rank 0 alone logs and saves.
    assert len([d for d in os.listdir(out / "wandb") if d.startswith("offline-run-")]) == 1
    assert sorted(os.listdir(out / "ckpt")) == ["ckpt_000000002.pt"]

    torch.set_num_threads(1)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ref = single_process(data, tmp_path / "one", ["training.max_steps=2"])
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)

    # Resume the 2-process checkpoint in one process (grad_acc 2 keeps the global batch): it continues
    # with the same global batches as a one-process run that never stopped.
    ref4 = single_process(data, tmp_path / "one4", ["training.max_steps=4"])
    resumed = single_process(data, out, ["training.max_steps=4"], resume=str(out / "ckpt"))
    assert (resumed.step, resumed.epoch, resumed.epoch_position) == (4, 1, 2)  # crossed an epoch end
    for k, v in ref4.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=1e-4, atol=1e-6, msg=k)


if not torch.distributed.is_available():  # pragma: no cover - builds without distributed support
    pytest.skip("torch.distributed is not available", allow_module_level=True)
