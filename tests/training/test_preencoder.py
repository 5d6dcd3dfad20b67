"""The pre-encoder recipe (training/preencoder.py) through train_preencoder.py: train a few steps,
resume exactly, export, load back, match eager; and the engine's guarantees."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import train_preencoder as tp
from model.preencoder import lengths_to_mask
from model.preencoder_artifact import model_from_checkpoint
from scripted_preencoder import ScriptedPreEncoder
from utils.checkpoint import list_checkpoints, load_checkpoint
from utils.logger import find_run_dir, read_offline_history

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = ["training.max_steps=16", "training.save_step=8", "training.val_step=8", "training.log_step=4",
            "training.batch_size=2", "training.segment_frames=16"]


def write_wavs(folder, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        samples = 8000 + 1500 * i
        t = np.arange(samples) / 22050
        f0, f1 = 200 + 150 * i, 2500 + 400 * i
        x = 0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))) + 0.01 * rng.standard_normal(samples)
        sf.write(os.path.join(folder, f"clip{i}.wav"), x.astype(np.float32), 22050)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pe")
    write_wavs(root / "wavs")
    out = root / "run"
    args = ["--config", "config/preencoder_tiny.yaml", "--data_dir", str(root / "wavs"), "--output_dir", str(out)]
    for s in SETTINGS:
        args += ["--set", s]
    assert tp.main(args) == 0
    return root, out, args


def test_training_logs_checkpoints_and_exports(trained):
    _, out, _ = trained
    assert sorted(os.listdir(out / "ckpt"))[:2] == ["best.json", "best.pt"]
    assert load_checkpoint(out / "ckpt")["step"] == 16
    assert sorted(os.listdir(out / "export")) == ["model_config.yaml", "model_cpu.pt", "weights.pt"]
    rows = read_offline_history(find_run_dir(str(out)))
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any("val/loss" in r for r in rows) and any("val/recon_griffin_lim" in k for r in rows for k in r)
    cfg = yaml.safe_load(open(out / "export" / "model_config.yaml"))
    assert cfg["model"]["mel_channels"] == 80 and cfg["model"]["generator"]["fsq_levels"] == [8, 5, 5, 5]
    assert cfg["audio"]["hop_length"] == 256 and cfg["audio"]["sampling_rate"] == 22050


def test_export_loads_and_equals_eager(trained):
    _, out, _ = trained
    model, _, step = model_from_checkpoint(str(out / "ckpt" / "best.pt"))
    pe = ScriptedPreEncoder(out / "export")
    assert (pe.codebook_size, pe.mel_channels, pe.audio.hop_length) == (1000, 80, 256)
    mel = torch.randn(2, 30, 80) * 2.5 - 5
    lengths = torch.tensor([30, 17])
    with torch.no_grad():
        eager_idx = model.encode(mel, lengths_to_mask(lengths, 30))
        idx = pe.encode(mel, lengths)
        assert torch.equal(idx, eager_idx)
        torch.testing.assert_close(pe.decode(idx, lengths), model.decode(idx, lengths_to_mask(lengths, 30)))


def test_resume_continues_exactly(trained):
    root, out, args = trained
    # Pretend the run died after step 8: drop everything written later, then resume to step 16.
    resumed = root / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("export"), symlinks=True)  # W&B leaves dangling log links
    ckpts = resumed / "ckpt"
    for name in ("ckpt_000000016.pt", "best.pt", "best.json"):
        os.remove(ckpts / name)
    args = [a if a != str(out) else str(resumed) for a in args]
    assert tp.main(args + ["--resume"]) == 0
    a = load_checkpoint(out / "ckpt" / "ckpt_000000016.pt")
    b = load_checkpoint(ckpts / "ckpt_000000016.pt")
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0, msg=k)
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"] == 16


def test_resume_refusals_are_clear_exit_code_2(trained, tmp_path, capsys):
    root, out, args = trained
    assert tp.main(args + ["--resume", "--set", "model.generator.hidden=48"]) == 2
    assert "differ from --config" in capsys.readouterr().err
    fresh = [a if a != str(out) else str(tmp_path / "empty") for a in args]
    assert tp.main(fresh + ["--resume"]) == 2
    assert "no checkpoint files" in capsys.readouterr().err


def test_export_only_command_rewrites_the_directory(trained, tmp_path):
    _, out, _ = trained
    assert tp.main(["--output_dir", str(tmp_path), "--export", str(out / "ckpt" / "best.pt")]) == 0
    pe = ScriptedPreEncoder(tmp_path / "export")
    mel = torch.randn(1, 12, 80) - 5
    assert torch.equal(pe.encode(mel), ScriptedPreEncoder(out / "export").encode(mel))


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert tp.main(["--config", "config/preencoder_tiny.yaml", "--data_dir", str(tmp_path),
                    "--output_dir", str(tmp_path / "o")]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_weights_export_is_tensors_only_and_rebuilds_the_best_model(trained):
    _, out, _ = trained
    state = torch.load(out / "export" / "weights.pt", weights_only=True)
    assert state["format"] == "preencoder-export" and state["format_version"] == 1
    assert set(state) == {"format", "format_version", "config", "model"}
    model, _, _ = model_from_checkpoint(str(out / "export" / "weights.pt"))
    best, _, _ = model_from_checkpoint(str(out / "ckpt" / "best.pt"))
    for k, v in best.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_fresh_run_over_a_run_is_refused_and_changed_optimizer_keys_are_applied(trained, tmp_path, capsys):
    # Before: a fresh run overwrote the old run silently; a changed learning rate on resume was ignored.
    root, out, args = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)  # W&B leaves dangling log links
    args = [a if a != str(out) else str(copy) for a in args]
    assert tp.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert tp.main(args + ["--resume", "--set", "training.max_steps=17", "--set", "training.learning_rate=1.0e-3",
                           "--set", "training.weight_decay=0.05"]) == 0
    state = load_checkpoint(copy / "ckpt")
    assert state["step"] == 17 and state["scheduler"]["base_lrs"] == [pytest.approx(1e-3)]
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.05
    text = (copy / "train.log").read_text()
    assert "training.learning_rate: 0.003 -> 0.001" in text and "training.weight_decay: 0 -> 0.05" in text


def test_stale_temporaries_are_removed_and_nonfinite_losses_save_then_exit_1(trained, tmp_path, monkeypatch):
    # Before: .tmp_*.pt files of killed saves stayed for good; non-finite losses raised without saving.
    import training.preencoder as recipe

    root, out, args = trained
    out2 = tmp_path / "nan"
    (out2 / "ckpt").mkdir(parents=True)
    (out2 / "ckpt" / ".tmp_dead.pt").write_bytes(b"partial")
    real = recipe.reconstruction_loss

    def nan_loss(*a, **k):
        loss, l1, l2 = real(*a, **k)
        return loss * float("nan"), l1, l2

    monkeypatch.setattr(recipe, "reconstruction_loss", nan_loss)
    args = [a if a != str(out) else str(out2) for a in args]
    assert tp.main(args + ["--set", "training.max_nonfinite_steps=3"]) == 1
    assert not (out2 / "ckpt" / ".tmp_dead.pt").exists()
    assert [s for s, _ in list_checkpoints(out2 / "ckpt")] == [3]
    assert "3 steps in a row had a non-finite loss" in (out2 / "train.log").read_text()


def test_group_sigterm_saves_and_exits_0(trained, tmp_path):
    # Before: the pre-encoder trainer had no signal handling: SIGTERM killed it without a save.
    root, _, _ = trained
    out = tmp_path / "sig"
    cmd = [sys.executable, "train_preencoder.py", "--config", "config/preencoder_tiny.yaml", "--data_dir",
           str(root / "wavs"), "--output_dir", str(out)]
    for s in SETTINGS[1:] + ["training.max_steps=100000", "training.save_step=2", "wandb.mode=disabled"]:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while not list_checkpoints(out / "ckpt"):  # a step file was saved (rotation may remove it soon)
        assert proc.poll() is None and time.time() < deadline, "training did not reach step 2"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("received SIGTERM") == 1
    step = load_checkpoint(out / "ckpt")["step"]
    assert f"interrupted at step {step};" in err  # the newest checkpoint is the state it stopped in


def test_two_frames_per_token_trains_and_exports(tmp_path):
    """downsample 2 (the speech recipe's codec): training logs code usage over tokens, not frames."""
    write_wavs(tmp_path / "wavs", n=3)
    out = tmp_path / "run"
    args = ["--config", "config/preencoder_tiny.yaml", "--data_dir", str(tmp_path / "wavs"), "--output_dir", str(out),
            "--set", "model.generator.downsample=2", "--set", "wandb.mode=disabled"]
    for s in SETTINGS:
        args += ["--set", s]
    assert tp.main(args) == 0
    pe = ScriptedPreEncoder(str(out / "export"), "cpu")
    assert pe.downsample == 2
    mel = torch.randn(1, 37, 80)
    tokens = pe.encode(mel)
    assert tokens.shape == (1, 19)  # ceil(37 / 2)
    assert pe.decode(tokens).shape[1] == 38
