"""The pieces every trainer shares (training/engine.py, command.py, nonfinite.py, resume.py, signals.py),
tested on their own."""

import os
import signal

import pytest
import torch

from training.command import EXIT_FAILURE, EXIT_OK, run_cli
from training.engine import resolve_precision
from training.nonfinite import NonFinitePolicy
from training.resume import apply_optimizer_settings, check_resume_compatible, prepare_output_dir, resolve_resume
from training.signals import StopSignals, worker_init_fn
from utils.checkpoint import CheckpointManager, list_checkpoints
from utils.cli import EXIT_BAD_INPUT
from utils.config import ConfigError
from utils.scheduler import build_scheduler


def test_auto_precision_has_one_meaning():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        want = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        assert resolve_precision("auto", torch.device("cuda")) == want


def test_resume_check_names_every_differing_key_with_both_values():
    saved = {"decoder": {"layer": 2, "head": 4}, "vocab_size": 100}
    now = {"decoder": {"layer": 1, "head": 4}, "vocab_size": 120}
    with pytest.raises(ConfigError) as e:
        check_resume_compatible("ck.pt", {"model": (saved, now)})
    msg = str(e.value)
    assert "differing model.* keys: decoder, vocab_size" in msg
    assert "model.decoder.layer: 2 in the checkpoint, 1 now" in msg and "model.vocab_size: 100 in the checkpoint, 120 now" in msg
    check_resume_compatible("ck.pt", {"model": (saved, saved)})  # equal: no error


def test_changed_optimizer_settings_are_applied_to_groups_and_schedule_and_unchanged_ones_touch_nothing():
    w = torch.nn.Parameter(torch.ones(3, 3))
    b = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], lr=1e-3)
    sched = build_scheduler(opt, "warmup_cosine", 2, 10, 0.1)
    for _ in range(3):
        opt.step()
        sched.step()
    before = opt.state_dict()["param_groups"]
    assert apply_optimizer_settings("x", opt, sched, {"learning_rate": 1e-3, "weight_decay": 0.01,
                                                      "betas": [0.9, 0.999], "eps": 1e-8}) == []
    assert opt.state_dict()["param_groups"] == before
    lr_before = opt.param_groups[0]["lr"]
    changes = apply_optimizer_settings("x", opt, sched, {"learning_rate": 5e-3, "weight_decay": 0.1, "betas": [0.8, 0.99]})
    assert changes == ["optimizer.learning_rate: 0.001 -> 0.005", "optimizer.weight_decay: 0.01 -> 0.1",
                       "optimizer.betas: (0.9, 0.999) -> (0.8, 0.99)"]
    assert sched.base_lrs == [pytest.approx(5e-3)] * 2
    assert opt.param_groups[0]["lr"] == pytest.approx(5 * lr_before)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    sched.step()  # the schedule continues from the new base
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3 * sched.lr_lambdas[0](4))


def test_non_finite_policy_counts_a_streak_and_a_total():
    p = NonFinitePolicy(2)
    p.record(False)
    p.record(True)
    p.record(False)
    assert (p.streak, p.total, p.should_stop) == (1, 2, False)
    p.record(False)
    assert p.should_stop and "2 steps in a row" in p.message(7)


def test_output_dir_refusal_overwrite_and_resume(tmp_path):
    out = tmp_path / "run"
    prepare_output_dir(str(out), None)  # nothing there: fine
    (out / "ckpt").mkdir(parents=True)
    (out / "ckpt" / "ckpt_000000005.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="newest: step 5"):
        prepare_output_dir(str(out), None)
    prepare_output_dir(str(out), str(out / "ckpt"))  # resuming it: fine
    prepare_output_dir(str(out), None, overwrite=True)
    (aside,) = [d for d in os.listdir(out) if d.startswith("ckpt.replaced-")]
    assert os.listdir(out / aside) == ["ckpt_000000005.pt"] and not (out / "ckpt").exists()
    assert resolve_resume("auto", str(out)) == str(out / "ckpt") and resolve_resume(None, str(out)) is None


def test_rotation_never_deletes_files_it_does_not_own(tmp_path):
    # Before: keep-last rotation counted another run's (higher-step) files as newer and deleted ours.
    d = tmp_path / "ckpt"
    d.mkdir()
    for step in (50, 60):
        (d / f"ckpt_{step:09d}.pt").write_bytes(b"another run")
    m = CheckpointManager(d, keep_last=2, adopt_existing=False)
    for step in (1, 2, 3):
        m.save({"step": step}, step)
    assert [s for s, _ in list_checkpoints(d)] == [2, 3, 50, 60]
    adopted = CheckpointManager(d, keep_last=2)  # resuming: the files present are this run's
    adopted.save({"step": 61}, 61)
    assert [s for s, _ in list_checkpoints(d)] == [60, 61]


def test_workers_ignore_stop_signals_and_the_main_process_asks_to_stop_once():
    pid = os.fork()
    if pid == 0:  # a "worker": survives SIGTERM and SIGINT, then exits 0 by itself
        worker_init_fn(0)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    calls = []
    with StopSignals(lambda: calls.append(1)) as s:
        os.kill(os.getpid(), signal.SIGINT)
        assert s.requested and calls == [1]
        assert signal.getsignal(signal.SIGINT) is not s._handler  # a second one acts at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_exit_codes_bad_input_2_bug_1_ok_0(caplog):
    from pipeline import PipelineError

    assert run_cli(lambda: EXIT_OK) == 0

    def bad():
        raise ConfigError("training.batch_size must be > 0")

    def bug():
        raise ZeroDivisionError("oops")

    def wrapped_bug():
        raise PipelineError("echolancer", "TypeError: x", bug=True)

    assert run_cli(bad) == EXIT_BAD_INPUT and "Traceback" not in caplog.text
    assert run_cli(bug) == EXIT_FAILURE and "ZeroDivisionError: oops" in caplog.text
    assert run_cli(wrapped_bug) == EXIT_FAILURE
