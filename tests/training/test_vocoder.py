"""The vocoder recipe (training/vocoder.py) and train_vocoder.py: config, data, GAN steps, checkpoint +
resume, W&B logging, export, and the engine's guarantees (tiny, CPU)."""

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

import train_vocoder
from istftnetfe import ISTFTNetFE
from training.vocoder import VocoderTrainer
from training.vocoder_data import SegmentDataset, split_files
from utils.checkpoint import list_checkpoints, load_checkpoint
from utils.config import AudioConfig, ConfigError, load_config
from utils.config.vocoder import VocoderConfig
from utils.logger import find_run_dir, read_offline_history

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR = 22050
TINY = "config/istftnet_tiny.yaml"
# Smaller still than the tiny config, so that a GAN step costs well under a second on 2 cores.
FAST = ["generator.upsample_initial_channel=32", "training.segment_size=2048", "discriminator.periods=[2,3]",
        "discriminator.msd_scales=2"]


def write_wavs(folder) -> str:
    """A chirp, white noise and a clip shorter than a training segment."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(0.6 * SR)) / SR
    chirp = 0.4 * np.sin(2 * np.pi * (200 * t + 2000 * t**2))
    sf.write(os.path.join(folder, "chirp.wav"), chirp.astype(np.float32), SR)
    sf.write(os.path.join(folder, "noise.wav"), (0.1 * rng.standard_normal(int(0.5 * SR))).astype(np.float32), SR)
    sf.write(os.path.join(folder, "short.wav"), (0.3 * np.sin(2 * np.pi * 440 * t[:1500])).astype(np.float32), SR)
    return str(folder)


@pytest.fixture(scope="module")
def wav_dir(tmp_path_factory) -> str:
    return write_wavs(tmp_path_factory.mktemp("wavs"))


def fast_config(*extra: str) -> VocoderConfig:
    return load_config(TINY, FAST + list(extra), schema=VocoderConfig)


# --------------------------------------------------------------------------------------------
# Config and data
# --------------------------------------------------------------------------------------------


def test_shipped_configs_turn_one_mel_frame_into_one_hop():
    for path in ("config/istftnet.yaml", TINY):
        cfg = load_config(path, schema=VocoderConfig)
        assert cfg.audio == AudioConfig()  # the shared settings of docs/DESIGN.md
        assert cfg.generator.samples_per_frame == 256
    assert load_config("config/istftnet.yaml", schema=VocoderConfig).generator.upsample_initial_channel == 512


def test_inconsistent_settings_are_config_errors():
    with pytest.raises(ConfigError, match="audio.hop_length"):
        load_config(TINY, ["generator.upsample_rates=[8,4]", "generator.upsample_kernel_sizes=[16,8]"],
                    schema=VocoderConfig)
    with pytest.raises(ConfigError, match="segment_size"):
        load_config(TINY, ["training.segment_size=3000"], schema=VocoderConfig)
    with pytest.raises(ConfigError, match="1.0e-6"):
        load_config(TINY, ["optimizer.learning_rate='1e-6'"], schema=VocoderConfig)


def test_segments_are_crops_of_the_file_or_zero_padded(wav_dir):
    long_path, short_path = os.path.join(wav_dir, "chirp.wav"), os.path.join(wav_dir, "short.wav")
    full = sf.read(long_path, dtype="float32")[0]
    torch.manual_seed(0)
    ds = SegmentDataset([long_path, short_path], SR, 2048)
    seg = ds[0].numpy()
    starts = [i for i in range(len(full) - 2047) if np.allclose(full[i : i + 2048], seg, atol=1e-6)]
    assert len(starts) >= 1
    short = ds[1].numpy()
    assert short.shape == (2048,)
    np.testing.assert_allclose(short[:1500], sf.read(short_path, dtype="float32")[0], atol=1e-6)
    assert (short[1500:] == 0).all()


def test_validation_split_is_reproducible_disjoint_and_never_empty():
    files = [f"f{i}.wav" for i in range(10)]
    train_a, val_a = split_files(files, 0.02, 8, seed=1)
    train_b, val_b = split_files(files, 0.02, 8, seed=1)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 1 and not set(train_a) & set(val_a) and sorted(train_a + val_a) == files
    assert split_files(files, 0.5, 3, seed=1)[1].__len__() == 3  # capped by max_val_files


# --------------------------------------------------------------------------------------------
# GAN steps
# --------------------------------------------------------------------------------------------


def test_overfitting_one_segment_lowers_the_mel_l1(wav_dir):
    torch.manual_seed(0)
    trainer = VocoderTrainer(fast_config(), torch.device("cpu"))
    wav = torch.from_numpy(sf.read(os.path.join(wav_dir, "chirp.wav"), dtype="float32")[0][2000:4048])[None]
    history = [trainer.train_step(wav) for _ in range(6)]
    mel = [h["loss_mel"] for h in history]
    assert all(np.isfinite(v) for h in history for v in h.values())
    # The GAN terms make single steps noisy, but the mel L1 (weight 45) must trend down.
    assert sum(b < a for a, b in zip(mel, mel[1:])) >= 4, mel
    assert mel[-1] < 0.95 * mel[0], mel
    assert trainer.step == 6 and trainer.sched_g.last_epoch == 6


def test_nonfinite_steps_are_skipped_and_then_fatal():
    # The engine's one policy: no update, the step and the LR schedule advance; after
    # max_nonfinite_steps in a row the loop saves and stops (exit status 1).
    trainer = VocoderTrainer(fast_config("training.max_nonfinite_steps=2"), torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    bad = torch.full((2, 2048), float("nan"))
    assert trainer.train_step(bad) == {"skipped_nonfinite": 1.0}
    assert trainer.step == 1 and trainer.sched_g.last_epoch == 1 and not trainer.nonfinite.should_stop
    assert all(torch.equal(before[k], v) for k, v in trainer.generator.state_dict().items())
    trainer.train_step(bad)
    assert trainer.nonfinite.should_stop and trainer.nonfinite.streak == 2
    assert "2 steps in a row had a non-finite loss" in trainer.nonfinite.message(trainer.step)


def test_nonfinite_run_saves_and_exits_1(wav_dir, tmp_path, monkeypatch):
    # Before: the run raised FloatingPointError without saving.
    import training.vocoder as tv

    monkeypatch.setattr(tv, "discriminator_loss", lambda real, fake: torch.tensor(float("nan")))
    out = str(tmp_path / "nan")
    assert train_vocoder.main(cli(wav_dir, out, "--set", "training.max_nonfinite_steps=2")) == 1
    state = load_checkpoint(os.path.join(out, "ckpt"))
    assert state["step"] == 2 and state["nonfinite_total"] == 2


# --------------------------------------------------------------------------------------------
# The command line: train, log, checkpoint, export, resume
# --------------------------------------------------------------------------------------------


def cli(wav_dir: str, out: str, *extra: str) -> list[str]:
    sets = FAST + ["training.max_steps=4", "training.save_step=2", "training.val_step=2", "training.log_step=1"]
    argv = ["--config", TINY, "--data_dir", wav_dir, "--output_dir", out]
    for s in sets:
        argv += ["--set", s]
    return argv + list(extra)


@pytest.fixture(scope="module")
def trained(wav_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("vocoder_run"))
    assert train_vocoder.main(cli(wav_dir, out)) == 0  # exports when training ends
    return out


def test_cli_run_checkpoints_logs_and_writes_samples(trained):
    ckpts = sorted(os.listdir(os.path.join(trained, "ckpt")))
    assert "ckpt_000000002.pt" in ckpts and "ckpt_000000004.pt" in ckpts and "best.pt" in ckpts
    state = load_checkpoint(os.path.join(trained, "ckpt"))
    assert state["step"] == 4 and {"generator", "discriminators", "opt_g", "opt_d", "sched_g", "sched_d"} <= set(state)

    rows = read_offline_history(find_run_dir(trained))
    train_rows = [r for r in rows if "train/loss_mel" in r]
    assert [r["_step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["train/loss_mel"]) and np.isfinite(r["train/loss_d"]) for r in train_rows)
    assert any("val/mel_l1" in r for r in rows) and any(k.startswith("val/audio_") for r in rows for k in r)

    sample_dir = os.path.join(trained, "samples", "step_0000004")
    (name,) = os.listdir(sample_dir)
    data, sr = sf.read(os.path.join(sample_dir, name))
    assert sr == SR and len(data) % 256 == 0 and len(data) > 0


def test_the_optimizer_implementation_is_foreach_on_the_cpu_fused_on_request_and_logged(trained):
    # auto = fused AdamW on CUDA (engine.resolve_optimizer_impl), foreach elsewhere.
    cpu = VocoderTrainer(fast_config(), torch.device("cpu"))
    assert cpu.optimizer_impl == "foreach" and cpu.opt_g.defaults["foreach"] and not cpu.opt_g.defaults["fused"]
    fused = VocoderTrainer(fast_config("optimizer.impl=fused"), torch.device("cpu"))
    assert fused.opt_g.defaults["fused"] and fused.opt_d.defaults["fused"]
    assert "foreach AdamW (optimizer.impl = auto)" in open(os.path.join(trained, "train.log")).read()


def test_exported_vocoder_loads_and_matches_the_checkpoint(trained):
    # The export holds the best validated weights (best.pt), like the other recipes.
    fe = ISTFTNetFE.load_ts(os.path.join(trained, "export"), "cpu")
    trainer = VocoderTrainer(fast_config(), torch.device("cpu"))
    trainer.load_state_dict(load_checkpoint(os.path.join(trained, "ckpt", "best.pt")), "best")
    mel = torch.randn(1, 80, 13)
    with torch.no_grad():
        trainer.generator.eval()
        eager = trainer.synthesize(mel)
    assert torch.allclose(fe(mel), eager, atol=1e-5)
    assert fe.infer(mel).shape == (13 * 256,)
    weights = torch.load(os.path.join(trained, "export", "weights.pt"), weights_only=True)
    assert weights["format"] == "istftnet-export" and weights["format_version"] == 1
    assert set(weights) == {"format", "format_version", "config", "step", "generator"}
    for k, v in trainer.generator.state_dict().items():
        assert torch.equal(weights["generator"][k], v), k

    # --export alone re-exports a checkpoint without training.
    again = os.path.join(os.path.dirname(trained), "reexport")
    assert train_vocoder.main(["--output_dir", again, "--export", os.path.join(trained, "ckpt", "best.pt")]) == 0
    assert torch.allclose(ISTFTNetFE.load_ts(os.path.join(again, "export"), "cpu")(mel), fe(mel))


def test_resume_restores_step_weights_optimizers_and_the_wandb_run(trained, wav_dir, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(trained, out, symlinks=True)  # W&B leaves dangling log links
    state4 = load_checkpoint(os.path.join(out, "ckpt", "ckpt_000000004.pt"))

    fresh = VocoderTrainer(fast_config(), torch.device("cpu"))
    fresh.load_state_dict(state4, "ckpt 4")
    assert fresh.step == 4 and fresh.sched_d.last_epoch == 4
    for k, v in fresh.generator.state_dict().items():
        assert torch.equal(v, state4["generator"][k]), k
    assert torch.equal(fresh.opt_d.state_dict()["state"][0]["exp_avg"], state4["opt_d"]["state"][0]["exp_avg"])

    assert train_vocoder.main(cli(wav_dir, out, "--resume", "--set", "training.max_steps=6")) == 0
    state6 = load_checkpoint(os.path.join(out, "ckpt"))
    assert state6["step"] == 6 and state6["wandb_run_id"] == state4["wandb_run_id"]
    assert not torch.equal(state6["generator"]["conv_pre.bias"], state4["generator"]["conv_pre.bias"])


def test_resume_refuses_a_changed_architecture(trained, wav_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(trained, out, symlinks=True)  # W&B leaves dangling log links
    assert train_vocoder.main(cli(wav_dir, out, "--resume", "--set", "generator.upsample_initial_channel=64")) == 2
    assert "generator.upsample_initial_channel: 32 in the checkpoint, 64 now" in capsys.readouterr().err


def test_a_fresh_run_over_a_run_is_refused_and_a_changed_learning_rate_is_applied_on_resume(
    trained, wav_dir, tmp_path, capsys
):
    # Before: a fresh run silently overwrote the old run's files; a changed learning rate was
    # silently ignored on resume (StepLR and the optimizer kept the old base rate).
    out = str(tmp_path / "run")
    shutil.copytree(trained, out, symlinks=True)  # W&B leaves dangling log links
    assert train_vocoder.main(cli(wav_dir, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert train_vocoder.main(cli(wav_dir, out, "--resume", "--set", "training.max_steps=5",
                                  "--set", "optimizer.learning_rate=1.0e-3")) == 0
    state = load_checkpoint(os.path.join(out, "ckpt"))
    assert state["step"] == 5
    assert [round(b, 12) for b in state["sched_g"]["base_lrs"]] == [1e-3]
    assert state["opt_g"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)
    assert "optimizer.learning_rate: 0.0002 -> 0.001" in open(os.path.join(out, "train.log")).read()
    assert train_vocoder.main(cli(wav_dir, out, "--overwrite", "--set", "training.max_steps=2")) == 0
    assert [s for s, _ in list_checkpoints(os.path.join(out, "ckpt"))] == [2]
    (aside,) = [d for d in os.listdir(out) if d.startswith("ckpt.replaced-")]
    assert [s for s, _ in list_checkpoints(os.path.join(out, aside))] == [2, 4, 5]


def test_group_sigterm_with_dataloader_workers_saves_and_exits_0(wav_dir, tmp_path):
    # Before: only the Echolancer trainer handled signals; the vocoder died without saving.
    out = str(tmp_path / "sig")
    cmd = [sys.executable, "train_vocoder.py"] + cli(wav_dir, out, "--set", "training.max_steps=100000",
                                                      "--set", "training.num_workers=2", "--set", "wandb.mode=disabled")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 180
    while not list_checkpoints(os.path.join(out, "ckpt")):  # a step file was saved (rotation may remove it soon)
        assert proc.poll() is None and time.time() < deadline, "training did not reach step 2"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("received SIGTERM") == 1 and "killed by signal" not in err
    step = load_checkpoint(os.path.join(out, "ckpt"))["step"]
    assert f"interrupted at step {step};" in err  # the newest checkpoint is the state it stopped in

