"""utils/cli.py and every command's errors: a mistake the user made is one line on stderr and exit
status 2 (``<script>: error: <message>``, no traceback); a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from utils.cli import EXIT_BAD_INPUT, error_line, run_command
from utils.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_MODEL = "config/model_tiny.yaml"
TINY_TRAIN = "config/train_tiny.yaml"


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a usable GPU, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


def one_error_line(capsys, prog: str, main, argv: list[str]) -> str:
    """``main(argv)`` must return 2 and print exactly one line, ``prog: error: ...``; returns the message."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0].removeprefix(f"{prog}: error: ")


def test_error_line_is_one_line_even_for_a_message_of_several():
    assert error_line("x.py", ConfigError("first\n  second\n")) == "x.py: error: first; second"


def test_run_command_turns_only_the_listed_errors_into_a_line(capsys):
    def bad():
        raise ConfigError("training.batch_size must be > 0")

    assert run_command("x.py", bad, (ConfigError,)) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "x.py: error: training.batch_size must be > 0\n"
    assert run_command("x.py", lambda: {"ok": 1}, (ConfigError,)) == {"ok": 1}

    def bug():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):  # not a user error: the traceback stays
        run_command("x.py", bug, (ConfigError,))


def test_an_error_flagged_as_a_bug_keeps_its_traceback():
    from pipeline import PipelineError

    def wrapped():
        raise PipelineError("echolancer", "TypeError: x", bug=True)

    with pytest.raises(PipelineError):
        run_command("x.py", wrapped, (PipelineError,))


# ---- train.py -------------------------------------------------------------------------------------


def train_args(tmp_path, *extra: str) -> list[str]:
    return ["--model_config", TINY_MODEL, "--train_config", TINY_TRAIN, "--train_data_dir", str(tmp_path / "train"),
            "--output_dir", str(tmp_path / "run"), *extra]


def test_train_on_cuda_without_cuda_is_one_line(tmp_path, capsys, no_cuda):
    from train import main

    msg = one_error_line(capsys, "train.py", main, train_args(tmp_path, "--device", "cuda"))
    assert msg.startswith("--device cuda was requested, but this PyTorch cannot use CUDA")
    assert "pass --device cpu" in msg
    # train.log has the error too, once.
    assert (tmp_path / "run" / "train.log").read_text().count("train.py: error: --device cuda") == 1


def test_train_missing_config_unknown_key_missing_data_and_bad_device_are_one_line(tmp_path, capsys):
    from train import main

    msg = one_error_line(capsys, "train.py", main,
                         train_args(tmp_path, "--device", "cpu") + ["--model_config", str(tmp_path / "none.yaml")])
    assert msg == f"config file not found: {tmp_path / 'none.yaml'}"

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {os.path.join(ROOT, TINY_MODEL)}\nno_such_section: 1\n")  # blamed on the overlay
    msg = one_error_line(capsys, "train.py", main, train_args(tmp_path, "--device", "cpu") + ["--model_config", str(bad)])
    assert str(bad) in msg and "no_such_section" in msg

    msg = one_error_line(capsys, "train.py", main, train_args(tmp_path, "--device", "cpu", "--set", "model.nope=1"))
    assert "'model.nope' is a key of neither" in msg

    msg = one_error_line(capsys, "train.py", main, train_args(tmp_path, "--device", "cpu"))
    assert msg == f"{tmp_path / 'train'}: data directory not found"

    msg = one_error_line(capsys, "train.py", main, train_args(tmp_path, "--device", "gpu0"))
    assert msg.startswith("--device 'gpu0': not a device")


def test_train_on_cuda_as_a_command_prints_no_traceback(tmp_path):
    """The real command line, as a user runs it: before, this printed a traceback."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "train.py", *train_args(tmp_path, "--device", "cuda")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("train.py: error: --device cuda was requested")


# ---- the other commands ---------------------------------------------------------------------------


def test_codec_and_vocoder_trainers_missing_config_data_and_device(tmp_path, capsys, no_cuda):
    import train_preencoder
    import train_vocoder

    for prog, main, cfg in (("train_preencoder.py", train_preencoder.main, "config/preencoder_tiny.yaml"),
                            ("train_vocoder.py", train_vocoder.main, "config/istftnet_tiny.yaml")):
        base = ["--output_dir", str(tmp_path / prog), "--device", "cpu"]
        msg = one_error_line(capsys, prog, main, base + ["--config", "none.yaml", "--data_dir", str(tmp_path)])
        assert msg == "config file not found: none.yaml"
        msg = one_error_line(capsys, prog, main, base + ["--config", cfg, "--data_dir", str(tmp_path / "wavs")])
        assert msg == f"--data_dir {tmp_path / 'wavs'}: no such directory"
        msg = one_error_line(capsys, prog, main, base + ["--export", str(tmp_path / "none.pt")])
        assert msg == f"{tmp_path / 'none.pt'}: checkpoint file not found"
        msg = one_error_line(capsys, prog, main, ["--output_dir", str(tmp_path / prog), "--device", "cuda",
                                                  "--config", cfg, "--data_dir", str(tmp_path)])
        assert "cuda" in msg and "CUDA" in msg


def test_infer_missing_checkpoint_and_unusable_device(tmp_path, capsys, no_cuda):
    from infer import main

    msg = one_error_line(capsys, "infer.py", main, ["--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"])
    assert msg == f"{tmp_path / 'none.pt'}: checkpoint file not found"
    msg = one_error_line(capsys, "infer.py", main, ["--checkpoint", str(tmp_path / "none.pt"), "--device", "cuda"])
    assert msg.startswith("--device cuda was requested, but this PyTorch cannot use CUDA")


def test_evaluate_missing_checkpoint_and_misspelt_device(tmp_path, capsys):
    from evaluate import main

    sentences = tmp_path / "s.txt"
    sentences.write_text("Hello there.\n")
    base = ["--sentences", str(sentences), "--pre_encoder_dir", str(tmp_path / "pe"), "--output_dir", str(tmp_path / "o")]
    msg = one_error_line(capsys, "evaluate.py", main, base + ["--checkpoint", str(tmp_path / "none.pt")])
    assert msg == f"{tmp_path / 'none.pt'}: checkpoint file not found"
    msg = one_error_line(capsys, "evaluate.py", main, base + ["--checkpoint", "x.pt", "--device", "gpu"])
    assert msg.startswith("--device 'gpu': not a device")


def test_preprocess_missing_config_codec_and_device(tmp_path, capsys, no_cuda):
    from preprocess import main

    base = ["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    msg = one_error_line(capsys, "preprocess.py", main, base + ["--pre_encoder_dir", str(tmp_path / "pe")])
    assert msg == f"pre-encoder directory not found: {tmp_path / 'pe'}"
    msg = one_error_line(capsys, "preprocess.py", main,
                         base + ["--pre_encoder_dir", str(tmp_path / "pe"), "--config", "none.yaml"])
    assert msg == "config file not found: none.yaml"
    msg = one_error_line(capsys, "preprocess.py", main, base + ["--pre_encoder_dir", "pe", "--device", "cuda"])
    assert msg.startswith("--device cuda was requested, but this PyTorch cannot use CUDA")


def test_demo_missing_profile_and_unusable_device(tmp_path, capsys, no_cuda):
    import demo

    msg = one_error_line(capsys, "demo.py", demo.main, ["--profile", str(tmp_path / "none.yaml")])
    assert "no such file or profile" in msg
    msg = one_error_line(capsys, "demo.py", demo.main, ["--profile", "tiny", "--device", "cuda",
                                                        "--work_dir", str(tmp_path / "w")])
    assert msg.startswith("--device cuda was requested, but this PyTorch cannot use CUDA")
    assert not (tmp_path / "w").exists()  # refused before any stage ran
