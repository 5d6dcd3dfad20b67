"""The Echolancer recipe's guarantees that no user action loses work.

Each test here failed on the code before the training engine (see the test's comment for how).
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from model.pretrained import EXPORT_FORMAT, load_echolancer
from tests.training.tiny_run import BASE, MODEL_CFG, ROOT, TRAIN_CFG, dummy_data
from train import main as train_main
from training.echolancer import RunPaths, Trainer
from utils.checkpoint import list_checkpoints, load_checkpoint
from utils.config import ConfigError, load_configs
from utils.distributed import DistInfo
from utils.scheduler import lr_multiplier

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dummy_data(tmp_path_factory.mktemp("data"), 16, 4)


def make_trainer(data, out, overrides=(), resume=None, **kw) -> Trainer:
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + list(overrides))
    return Trainer(mcfg, tcfg, RunPaths(data[0], data[1], str(out), resume=resume, **kw), DistInfo())


def cli(data, out, *sets: str) -> list[str]:
    argv = ["--model_config", MODEL_CFG, "--train_config", TRAIN_CFG, "--train_data_dir", data[0],
            "--output_dir", str(out)]
    for s in BASE + list(sets):
        argv += ["--set", s]
    return argv


def test_group_sigterm_with_dataloader_workers_saves_once_and_exits_0(data, tmp_path):
    # Before: the workers died of the group's SIGTERM first and the main process crashed with
    # "DataLoader worker ... killed by signal: Terminated" (exit 1) before saving.
    out = tmp_path / "sig"
    cmd = [sys.executable, "train.py"] + cli(data, out, "training.num_workers=2", "training.max_steps=100000",
                                             "training.epochs=100000", "training.save_step=2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, like a scheduler's job
    deadline = time.time() + 180
    while not list_checkpoints(out / "ckpt"):  # a step file was saved (rotation may remove it soon)
        assert proc.poll() is None and time.time() < deadline, "training did not reach step 2"
        time.sleep(0.1)
    time.sleep(1.0)  # a few more steps, with the workers busy
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group: main process and DataLoader workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "killed by signal" not in err
    assert err.count("received SIGTERM") == 1  # logged once, by the main process only
    saved = [s for s, _ in list_checkpoints(out / "ckpt")]
    log_text = (out / "train.log").read_text()
    assert f"saved {out / 'ckpt' / f'ckpt_{saved[-1]:09d}.pt'}" in log_text.split("received SIGTERM")[1]


def test_a_fresh_run_into_a_directory_with_checkpoints_is_refused_and_overwrite_keeps_the_old_files(
    data, tmp_path, restore_logging
):
    # Before: the new run silently wrote over the old one, and rotation deleted the *new* run's
    # files because the old run's higher steps counted as newer.
    out = tmp_path / "run"
    make_trainer(data, out, ["training.max_steps=6", "training.save_step=3", "training.keep_last=5"]).train()
    old = {s: p for s, p in list_checkpoints(out / "ckpt")}
    assert sorted(old) == [3, 4, 6]  # 4: the epoch end's validation
    with pytest.raises(ConfigError, match="already holds a run's checkpoints .newest: step 6.*--resume.*--overwrite"):
        make_trainer(data, out, ["training.max_steps=2"])
    assert train_main(cli(data, out, "training.max_steps=2")) == 2
    assert "--overwrite" in (out / "train.log").read_text()

    new = make_trainer(data, out, ["training.max_steps=4", "training.save_step=1", "training.keep_last=2"],
                       overwrite=True)
    new.train()
    assert [s for s, _ in list_checkpoints(out / "ckpt")] == [3, 4]  # the new run's last two
    (aside,) = [d for d in os.listdir(out) if d.startswith("ckpt.replaced-")]
    assert [s for s, _ in list_checkpoints(out / aside)] == [3, 4, 6]  # the old run: moved, not deleted
    assert load_checkpoint(out / "ckpt")["step"] == 4  # --resume <dir>/ckpt finds the new run
    with pytest.raises(ConfigError, match="contradict"):
        make_trainer(data, out, overwrite=True, resume=str(out / "ckpt"))


def test_resume_applies_a_changed_learning_rate_and_weight_decay(data, tmp_path, caplog):
    # Before: the schedule kept the old base rate (and the old weight decay) while the checkpoint's
    # train_config recorded the new one.
    out = tmp_path / "lr"
    make_trainer(data, out, ["training.max_steps=2"]).train()
    caplog.set_level("WARNING", logger="echolancer.train")
    t = make_trainer(data, out, ["training.max_steps=3", "optimizer.learning_rate=5.0e-2",
                                 "optimizer.weight_decay=0.1"], resume=str(out / "ckpt"))
    assert t.scheduler.base_lrs == [pytest.approx(5e-2)] * 2
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(5e-2 * lr_multiplier(2, "warmup_cosine", 2, 8, 0.1))
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [0.1, 0.0]  # biases/norms stay undecayed
    text = caplog.text
    assert "optimizer.learning_rate: 0.001 -> 0.05" in text and "optimizer.weight_decay: 0.01 -> 0.1" in text
    t.train()
    ck = load_checkpoint(out / "ckpt")
    assert ck["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(5e-2)
    # Unchanged keys leave the optimizer exactly as saved (exact resume is covered in test_train.py).
    same = make_trainer(data, out, ["training.max_steps=4", "optimizer.learning_rate=5.0e-2",
                                    "optimizer.weight_decay=0.1"], resume=str(out / "ckpt"))
    assert same.optimizer.state_dict()["param_groups"] == ck["optimizer"]["param_groups"]


def test_stale_temporary_files_of_a_killed_save_are_removed_at_start_up(data, tmp_path):
    # Before: each kill -9 during a save left a .tmp_*.pt in ckpt/ for good.
    out = tmp_path / "tmp"
    make_trainer(data, out, ["training.max_steps=1"]).train()
    for name in (".tmp_abc123.pt", ".tmp_zz.pt", "best.json.tmp"):
        (out / "ckpt" / name).write_bytes(b"half a checkpoint")
    make_trainer(data, out, ["training.max_steps=2"], resume=str(out / "ckpt"))
    assert not [n for n in os.listdir(out / "ckpt") if "tmp" in n]


def test_a_negative_max_steps_is_a_config_error_not_an_untrained_checkpoint(data, tmp_path, restore_logging):
    # Before: --set training.max_steps=-5 "finished" and saved an untrained checkpoint.
    with pytest.raises(ConfigError, match="max_steps"):
        make_trainer(data, tmp_path / "neg", ["training.max_steps=-5"])
    assert train_main(cli(data, tmp_path / "neg2", "training.max_steps=-5")) == 2
    assert not (tmp_path / "neg2" / "ckpt").exists() or not os.listdir(tmp_path / "neg2" / "ckpt")


def test_a_model_config_mismatch_on_resume_names_the_key_and_both_values(data, tmp_path):
    # Before: the message named "decoder" only.
    out = tmp_path / "m"
    make_trainer(data, out, ["training.max_steps=1"]).train()
    with pytest.raises(ConfigError, match=r"model\.decoder\.layer: 2 in the checkpoint, 1 now"):
        make_trainer(data, out, ["model.decoder.layer=1"], resume=str(out / "ckpt"))


def test_a_crash_keeps_its_traceback_in_train_log_and_validation_lines_are_logged(
    data, tmp_path, monkeypatch, restore_logging
):
    # Before: the exception escaped main() and train.log had neither the traceback nor the
    # validation lines (they went to tqdm.write only).
    out = tmp_path / "crash"
    assert train_main(cli(data, out, "training.max_steps=2", "training.val_step=1")
                      + ["--val_data_dir", data[1]]) == 0
    assert "step 1 epoch 0: val loss" in (out / "train.log").read_text()

    from model.loss import EcholancerLoss

    def boom(self, *a, **k):
        raise RuntimeError("a bug in the loss")

    monkeypatch.setattr(EcholancerLoss, "forward", boom)
    out2 = tmp_path / "crash2"
    assert train_main(cli(data, out2, "training.max_steps=2")) == 1
    text = (out2 / "train.log").read_text()
    assert "Traceback" in text and "RuntimeError: a bug in the loss" in text


def test_training_writes_an_inference_export_that_loads_alone_with_weights_only(data, tmp_path, restore_logging):
    # Before: there was no inference export; best.pt was the whole training state.
    out = tmp_path / "exp"
    t = make_trainer(data, out, ["training.max_steps=2"])
    t.train()
    path = out / "export" / "echolancer.pt"
    state = torch.load(path, weights_only=True)
    assert state["format"] == EXPORT_FORMAT and state["format_version"] == 1 and state["step"] == 2
    required = {"format", "format_version", "model", "model_config", "tokenizer", "special_tokens", "step"}
    assert required <= set(state) <= required | {"length_stats"}  # + the data's length statistics, when known
    assert "optimizer" not in state and "rng" not in state
    assert state["special_tokens"] == {"codebook_size": 1000, "bos_id": 1000, "eos_id": 1001, "pad_id": 1002}
    assert os.path.getsize(path) < 0.6 * os.path.getsize(out / "ckpt" / "ckpt_000000002.pt")
    for where in (path, out / "export", out):
        loaded = load_echolancer(where)
        assert loaded.step == 2 and loaded.train_config is None
        for k, v in t.model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v), k

    # --export only (no training): from a given checkpoint into OUTPUT_DIR/export.
    other = tmp_path / "exp2"
    assert train_main(["--output_dir", str(other), "--export", str(out / "ckpt")]) == 0
    again = torch.load(other / "export" / "echolancer.pt", weights_only=True)
    assert all(torch.equal(again["model"][k], v) for k, v in state["model"].items())


LAUNCHER = """
import sys
sys.path.insert(0, {root!r})
import pipeline
def broken(self, texts, speakers=None, **kw):
    raise pipeline.PipelineError("vocoder", "simulated failure")
pipeline.Synthesizer.synthesize = broken
import train
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_a_test_interval_failure_under_ddp_saves_and_stops_every_rank(data, tmp_path):
    # Before: rank 0 called save(), whose gather the other rank never joined; both hung until the
    # process group's timeout (30 minutes) and nothing was saved. Here that is the subprocess timeout.
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(root=ROOT))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher)]
    cmd += cli(data, out, "training.max_steps=4", "training.test_step=2") + ["--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks: nothing left hanging
        proc.communicate()
        pytest.fail("the ranks hung after the test-interval failure")
    assert proc.returncode != 0
    assert load_checkpoint(out / "ckpt")["step"] == 2  # the failing step's state is kept
    text = (out / "train.log").read_text()
    assert "test interval failed at step 2" in text and "vocoder" in text
