"""The training script: CLI run with W&B read back, exact resume, accumulation, signals, NaN guard."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from data.dataset import Collate, EcholancerDataset
from data.dummy import create_dummy_data_files
from train import main as train_main
from training.echolancer import RunPaths, Trainer
from utils.checkpoint import load_checkpoint
from utils.config import load_configs
from utils.distributed import DistInfo
from utils.logger import find_run_dir, read_offline_history
from utils.scheduler import lr_multiplier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CFG = os.path.join(ROOT, "config/model_tiny.yaml")
TRAIN_CFG = os.path.join(ROOT, "config/train_tiny.yaml")


# Tiny models on a shared 2-core machine: one intra-op thread is several times faster than two
# threads competing with other processes (and the subprocesses get OMP_NUM_THREADS=1).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    mcfg, _ = load_configs(MODEL_CFG, TRAIN_CFG)
    create_dummy_data_files(str(root / "train"), mcfg, n_files=24, max_text_len=20, seed=0)
    create_dummy_data_files(str(root / "val"), mcfg, n_files=6, max_text_len=20, seed=1)
    return str(root / "train"), str(root / "val")


BASE = ["training.batch_size=4", "training.grad_acc_step=2", "training.log_step=1", "training.val_step=3",
        "training.save_step=1000", "training.test_step=1000", "training.epochs=10",
        "model.encoder.dropout=0.1", "model.decoder.dropout=0.1", "scheduler.warmup_steps=3",
        "scheduler.total_steps=8"]


def make_trainer(data, out, overrides=(), resume=None, **paths_kw) -> Trainer:
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + list(overrides))
    paths = RunPaths(data[0], data[1], str(out), resume=resume, **paths_kw)
    return Trainer(mcfg, tcfg, paths, DistInfo())


def weights(path_or_model) -> dict:
    if isinstance(path_or_model, torch.nn.Module):
        return path_or_model.state_dict()
    return load_checkpoint(path_or_model)["model"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_cli_run_writes_checkpoints_and_an_offline_wandb_run_with_the_logged_metrics(tmp_path, restore_logging):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--model_config", MODEL_CFG, "--train_config", TRAIN_CFG,
           "--train_data_dir", str(tmp_path / "train"), "--val_data_dir", str(tmp_path / "val"),
           "--output_dir", str(out), "--create_dummy", "--dummy_files", "16",
           "--set", "training.max_steps=6", "--set", "training.log_step=2", "--set", "training.val_step=3",
           "--set", "training.save_step=3", "--set", "model.decoder.layer=1", "--set", "scheduler.warmup_steps=4"]
    env = {**ENV, "WANDB_MODE": "offline"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(out / "ckpt")
    assert ck["step"] == 6 and ck["format_version"] == 1
    assert ck["model_config"]["model"]["decoder"]["layer"] == 1  # --set reached the model config
    assert ck["special_tokens"] == {"codebook_size": 1000, "bos_id": 1000, "eos_id": 1001, "pad_id": 1002}
    assert set(ck) >= {"optimizer", "scheduler", "scaler", "epoch", "early_stopping", "rng", "sampler",
                       "train_config", "tokenizer"}
    assert (out / "ckpt" / "best.pt").exists() and (out / "train.log").exists()

    rows = read_offline_history(find_run_dir(str(out)))
    steps = [row["_step"] for row in rows]
    assert len(steps) == len(set(steps))  # one row per step
    train_rows = {row["_step"]: row for row in rows if "train/loss" in row}
    assert sorted(train_rows) == [2, 4, 6]
    for step, row in train_rows.items():
        # The logged LR is the one used by the step's update (step - 1 updates were done before it).
        assert row["train/lr"] == pytest.approx(1.0e-3 * lr_multiplier(step - 1, "warmup_cosine", 4, 6, 0.1))
        assert row["train/grad_norm"] > 0 and row["train/tokens_per_s"] > 0 and 0 <= row["train/accuracy"] <= 1
    assert [row["_step"] for row in rows if "val/loss" in row][:2] == [2, 3]  # epoch end (16 files / 8), val_step

    # A --set key in neither config stops before training, naming the key (exit status 2).
    assert train_main(cmd[2:-2] + ["--set", "training.no_such_key=1"]) == 2
    assert "'training.no_such_key' is a key of neither" in (out / "train.log").read_text()


@pytest.mark.usefixtures("no_wandb")
def test_resume_mid_epoch_and_mid_accumulation_is_bitwise_exact(data, tmp_path, monkeypatch):
    # 24 files / batch 4 = 6 micro-batches = 3 steps per epoch (grad_acc 2); 8 steps span 3 epochs,
    # with validations (val_step 3 and epoch ends) in between.
    full = make_trainer(data, tmp_path / "full", ["training.max_steps=8"])
    full.train()
    expected = weights(full.model)

    # Stopped by max_steps after 4 steps (mid-epoch), resumed to 8.
    first = make_trainer(data, tmp_path / "a", ["training.max_steps=4"])
    first.train()
    assert load_checkpoint(tmp_path / "a" / "ckpt")["sampler"]["position"] == 2  # 1 step into epoch 1
    resumed = make_trainer(data, tmp_path / "a", ["training.max_steps=8"], resume=str(tmp_path / "a" / "ckpt"))
    assert resumed.train().step == 8
    assert_bitwise_equal(weights(resumed.model), expected)

    # A stop request between the two micro-batches of step 5: the partial step is discarded.
    stopper = make_trainer(data, tmp_path / "b", ["training.max_steps=8"])
    calls = {"n": 0}
    original = stopper._forward_loss

    def counting(model, batch, normalizer, **kwargs):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 9:  # first micro-batch of step 5
                stopper.request_stop()
        return original(model, batch, normalizer, **kwargs)

    monkeypatch.setattr(stopper, "_forward_loss", counting)
    result = stopper.train()
    assert (result.status, result.step) == ("interrupted", 4)
    resumed = make_trainer(data, tmp_path / "b", ["training.max_steps=8"], resume=str(tmp_path / "b" / "ckpt"))
    resumed.train()
    assert_bitwise_equal(weights(resumed.model), expected)


@pytest.mark.usefixtures("no_wandb")
def test_two_micro_batches_of_4_equal_one_batch_of_8(data, tmp_path):
    over = ["model.encoder.dropout=0.0", "model.decoder.dropout=0.0"]
    acc = make_trainer(data, tmp_path / "acc", over + ["training.grad_acc_step=2"])
    one = make_trainer(data, tmp_path / "one", over + ["training.grad_acc_step=1"])
    assert_bitwise_equal(weights(acc.model), weights(one.model))
    ds = EcholancerDataset(data[0], acc.mcfg)
    collate = Collate(acc.model.pad_id)
    items = [ds[i] for i in range(8)]  # different lengths: the halves have different token counts
    m_acc = acc.train_step([collate(items[:4]), collate(items[4:])])
    m_one = one.train_step([collate(items)])
    assert m_acc["train/loss"] == pytest.approx(m_one["train/loss"], rel=1e-5)
    assert m_acc["train/grad_norm"] == pytest.approx(m_one["train/grad_norm"], rel=1e-4)
    for (k, a), b in zip(acc.model.state_dict().items(), one.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.usefixtures("no_wandb")
def test_nonfinite_losses_skip_steps_then_stop_with_a_checkpoint(data, tmp_path, monkeypatch):
    t = make_trainer(data, tmp_path / "nan", ["training.max_nonfinite_steps=3", "training.max_steps=10"])
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    crit = t.criterion.forward

    def nan_loss(out, normalizer=None):
        lo = crit(out, normalizer)
        lo.total = lo.total * float("nan")
        return lo

    monkeypatch.setattr(t.criterion, "forward", nan_loss)
    result = t.train()
    assert (result.status, result.step) == ("nonfinite", 3)
    ck = load_checkpoint(result.last_checkpoint)
    assert ck["nonfinite_total"] == 3
    assert_bitwise_equal(ck["model"], before)  # no update was applied


def test_sigint_saves_a_checkpoint_exits_cleanly_and_the_run_resumes(data, tmp_path, monkeypatch, restore_logging):
    out = tmp_path / "sig"
    cmd = [sys.executable, "train.py", "--model_config", MODEL_CFG, "--train_config", TRAIN_CFG,
           "--train_data_dir", data[0], "--output_dir", str(out),
           "--set", "training.max_steps=100000", "--set", "training.save_step=2", "--set", "training.epochs=100000"]
    env = {**ENV, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "ckpt" / "ckpt_000000002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "training did not reach step 2"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "received SIGINT" in err
    ck = load_checkpoint(out / "ckpt")
    assert ck["step"] >= 2
    stop_step = ck["step"]

    # Resumed in-process (same flags) from the ckpt/ directory: continues from the saved step.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert train_main(cmd[2:-6] + ["--resume", str(out / "ckpt"), "--set", f"training.max_steps={stop_step + 2}"]) == 0
    assert f"resumed from {out / 'ckpt'} at step {stop_step}" in (out / "train.log").read_text()
    assert load_checkpoint(out / "ckpt")["step"] == stop_step + 2


def test_test_interval_writes_wavs_logs_audio_and_leaves_training_unchanged(data, tmp_path, monkeypatch, caplog):
    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config import config_from_dict
    from utils.config.preencoder import PreEncoderConfig

    pe_cfg = config_from_dict(PreEncoderConfig, {"model": {"generator": {"hidden": 16, "encoder_blocks": 0,
                                                                          "decoder_blocks": 0}}})
    export_preencoder(PreEncoder.from_config(pe_cfg), pe_cfg, str(tmp_path / "pe"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    gen = ["training.max_steps=2", "training.test_max_length=6", "training.test_temperature=0.0",
           "training.val_step=1000"]
    tested = make_trainer(data, tmp_path / "t", gen + ["training.test_step=1"], pre_encoder_dir=str(tmp_path / "pe"),
                          test_sentences=["Hello there.", "Good night!"], test_speakers=[1, 2])
    tested.train()
    wavs = sorted(os.listdir(tmp_path / "t" / "samples" / "step_0000002"))
    assert wavs == ["00_spk1.wav", "01_spk2.wav", "02_spk1.wav", "03_spk2.wav"]
    rows = {r["_step"]: r for r in read_offline_history(find_run_dir(str(tmp_path / "t")))}
    assert rows[1]["test/audio_03/_type"] == "audio-file" and rows[2]["test/mel_00/_type"] == "image-file"
    assert 0 < rows[2]["test/mean_tokens"] <= 6

    # Generation runs under a forked RNG: the weights equal those of a run that never tested.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    untested = make_trainer(data, tmp_path / "u", gen)
    untested.train()
    assert_bitwise_equal(weights(tested.model), weights(untested.model))

    # Without a pre-encoder there is no audio; the reason is logged once.
    caplog.set_level("INFO", logger="echolancer.train")
    tokens_only = make_trainer(data, tmp_path / "n", gen + ["training.test_step=1"])
    tokens_only.train()
    assert len([r for r in caplog.records if "no --pre_encoder_dir" in r.getMessage()]) == 1
    assert not os.listdir(tmp_path / "n" / "samples" / "step_0000002")


@pytest.mark.usefixtures("no_wandb")
def test_early_stopping_stops_after_patience_and_restores_the_best_weights(data, tmp_path):
    # min_delta 10 nats: only the first validation counts as an improvement, even if later ones
    # are slightly lower; the best checkpoint and the restored weights follow the same rule.
    t = make_trainer(data, tmp_path / "es", ["training.val_step=1", "early_stopping.patience=2",
                                             "early_stopping.min_delta=10.0", "training.max_steps=50"])
    result = t.train()
    assert (result.status, result.step) == ("early_stopped", 3)
    last = load_checkpoint(tmp_path / "es" / "ckpt")
    assert last["step"] == 3 and last["early_stopping"]["bad_validations"] == 2
    best = load_checkpoint(tmp_path / "es" / "ckpt" / "best.pt")
    assert best["step"] == 1
    assert_bitwise_equal(weights(t.model), best["model"])


@pytest.mark.usefixtures("no_wandb")
def test_resuming_with_a_different_architecture_names_the_differing_keys(data, tmp_path):
    from utils.config import ConfigError

    make_trainer(data, tmp_path / "r", ["training.max_steps=1"]).train()
    with pytest.raises(ConfigError, match="differing model.* keys: decoder"):
        make_trainer(data, tmp_path / "r", ["model.decoder.layer=1"], resume=str(tmp_path / "r" / "ckpt"))


@pytest.mark.usefixtures("no_wandb")
def test_a_failing_pipeline_stage_saves_the_step_and_stops_the_run_naming_the_stage(
    data, tmp_path, monkeypatch, restore_logging, caplog
):
    import pipeline

    def broken(self, texts, speakers=None, **kw):
        raise pipeline.PipelineError("vocoder", "simulated failure")

    monkeypatch.setattr(pipeline.Synthesizer, "synthesize", broken)
    out = tmp_path / "run"
    code = train_main(["--model_config", MODEL_CFG, "--train_config", TRAIN_CFG, "--train_data_dir", data[0],
                       "--output_dir", str(out), "--set", "training.max_steps=4", "--set", "training.test_step=2",
                       "--set", "training.save_step=1000", "--set", "training.batch_size=4"])
    assert code == 2
    assert load_checkpoint(out / "ckpt")["step"] == 2  # the state of the failing step is kept
    assert "vocoder" in (out / "train.log").read_text()


@pytest.mark.usefixtures("no_wandb")
def test_create_dummy_without_a_step_limit_stops_at_the_dummy_cap_and_says_so_first(tmp_path, monkeypatch):
    # Before: the README quick start (--create_dummy, config/train.yaml without max_steps) ran all
    # 100 epochs of random data, 400 steps of over 6 s each on a 2-core CPU.
    import train

    monkeypatch.setattr(train, "DUMMY_MAX_STEPS", 3)
    argv = ["--model_config", MODEL_CFG, "--train_config", TRAIN_CFG, "--create_dummy", "--dummy_files", "8",
            "--set", "training.max_steps=null", "--set", "training.batch_size=2", "--set", "training.val_step=1000"]
    assert train_main(argv + ["--train_data_dir", str(tmp_path / "a"), "--output_dir", str(tmp_path / "ra")]) == 0
    assert load_checkpoint(tmp_path / "ra" / "ckpt")["step"] == 3  # 8 files / 2 = 4 steps an epoch: the cap stopped it
    first = (tmp_path / "ra" / "train.log").read_text().splitlines()[0]  # before anything else happens
    assert "--create_dummy: random data teaches nothing, so this run stops after 3 steps" in first
    assert "--set training.max_steps=N" in first
    texts = [torch.load(tmp_path / "a" / name, weights_only=True)["text"] for name in os.listdir(tmp_path / "a")
             if name.endswith(".pt")]
    assert max(len(t) for t in texts) <= train.DUMMY_MAX_TEXT_LEN

    # A limit the user set is kept.
    argv[argv.index("training.max_steps=null")] = "training.max_steps=5"
    assert train_main(argv + ["--train_data_dir", str(tmp_path / "a"), "--output_dir", str(tmp_path / "rb")]) == 0
    assert load_checkpoint(tmp_path / "rb" / "ckpt")["step"] == 5


def test_code_levels_that_differ_from_the_codec_that_wrote_the_data_are_refused_naming_the_report(tmp_path):
    import json

    from utils.config import ConfigError

    mcfg, _ = load_configs(MODEL_CFG, TRAIN_CFG)
    for split, seed in (("train", 0), ("val", 1)):
        create_dummy_data_files(str(tmp_path / split), mcfg, n_files=4, max_text_len=10, seed=seed)
    data = (str(tmp_path / "train"), str(tmp_path / "val"))
    (tmp_path / "qa_report.json").write_text(json.dumps({"settings": {"fsq_levels": [10, 10, 10]}}))
    with pytest.raises(ConfigError, match=r"model.code_levels is \[8, 5, 5, 5\], but .*qa_report.json says the "
                                          r"codec that wrote this data has fsq_levels \[10, 10, 10\]"):
        make_trainer(data, tmp_path / "bad", ["model.code_levels=[8,5,5,5]"]).build()
    trainer = make_trainer(data, tmp_path / "good", ["model.code_levels=[10,10,10]"])
    trainer.build()
    assert trainer.model.code_factors is not None
