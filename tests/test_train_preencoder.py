"""train_preencoder.py end to end: train a few steps, resume exactly, export, load back, match eager."""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import train_preencoder as tp
from model.preencoder import lengths_to_mask
from scripted_preencoder import ScriptedPreEncoder
from utils.checkpoint import load_checkpoint
from utils.logger import find_run_dir, read_offline_history

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
    assert sorted(os.listdir(out / "export")) == ["model_config.yaml", "model_cpu.pt"]
    rows = read_offline_history(find_run_dir(str(out)))
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any("val/loss" in r for r in rows) and any("val/recon_griffin_lim" in k for r in rows for k in r)
    cfg = yaml.safe_load(open(out / "export" / "model_config.yaml"))
    assert cfg["model"]["mel_channels"] == 80 and cfg["model"]["generator"]["fsq_levels"] == [8, 5, 5, 5]
    assert cfg["audio"]["hop_length"] == 256 and cfg["audio"]["sampling_rate"] == 22050


def test_export_loads_and_equals_eager(trained):
    _, out, _ = trained
    model, _, step = tp.model_from_checkpoint(str(out / "ckpt" / "best.pt"))
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
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("export"))
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
