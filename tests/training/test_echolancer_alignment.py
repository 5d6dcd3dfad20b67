"""The Echolancer recipe's alignment aid and length bounds: what training feeds the model,
what it logs, and what it saves for inference."""

import os

import pytest
import torch

from data.dummy import create_dummy_data_files
from model.pretrained import load_echolancer
from training.echolancer import RunPaths, Trainer
from utils.config import load_configs
from utils.distributed import DistInfo
from utils.logger import find_run_dir, read_offline_history

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_CFG = os.path.join(ROOT, "config/model_tiny.yaml")
TRAIN_CFG = os.path.join(ROOT, "config/train_tiny.yaml")
BASE = ["training.batch_size=4", "training.log_step=1", "training.val_step=2", "training.save_step=1000",
        "training.test_step=1000", "training.epochs=10", "training.max_steps=4", "training.num_workers=0",
        "scheduler.warmup_steps=2", "early_stopping.restore_best=false",
        "alignment.prior=true", "alignment.prior_hold_steps=1", "alignment.prior_anneal_steps=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    mcfg, _ = load_configs(MODEL_CFG, TRAIN_CFG)
    create_dummy_data_files(str(root / "train"), mcfg, n_files=12, max_text_len=20, seed=0)
    create_dummy_data_files(str(root / "val"), mcfg, n_files=4, max_text_len=20, seed=1)
    return str(root / "train"), str(root / "val")


def run(data, out, *overrides: str) -> Trainer:
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + list(overrides))
    t = Trainer(mcfg, tcfg, RunPaths(data[0], data[1], str(out)), DistInfo())
    t.train()
    return t


def test_prior_fades_on_schedule_and_validation_logs_an_alignment_picture(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    run(data, out)
    rows = {r["_step"]: r for r in read_offline_history(find_run_dir(str(out)))}
    # Updates 1..4 used the weight of steps 0..3: held for 1 step, then 2 steps of fade.
    assert [rows[s]["train/align_prior_weight"] for s in (1, 2, 3, 4)] == [1.0, 1.0, 0.5, 0.0]
    for s in (2, 4):
        assert 0.0 <= rows[s]["val/align_diagonality"] <= 1.0
        assert rows[s]["val/alignment/_type"] == "image-file"


def test_the_prior_enters_the_training_forward_only(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with_prior = run(data, tmp_path / "a", "training.max_steps=1")
    without = run(data, tmp_path / "b", "training.max_steps=1", "alignment.prior=false")
    # Same data, same init: only the prior differs, so the first update differs...
    a, b = with_prior.model.state_dict(), without.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # ...while validation (inference conditions) ignores the prior at any weight.
    with_prior.model.load_state_dict(b)
    assert with_prior.validate().metrics == without.validate().metrics


def test_checkpoints_and_exports_carry_the_data_length_ratios_that_bound_inference(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    t = run(data, tmp_path / "run", "training.max_steps=1")
    ratios = [a / s for s, a in zip(t.train_set.text_lens, t.train_set.audio_lens)]
    lo, hi = min(ratios), max(ratios)
    assert t.length_stats["min_tokens_per_text_token"] == pytest.approx(lo)
    assert t.length_stats["max_tokens_per_text_token"] == pytest.approx(hi)
    for where in (tmp_path / "run" / "export", tmp_path / "run" / "ckpt"):
        loaded = load_echolancer(where)
        assert loaded.model.length_bounds == pytest.approx((lo / 1.5, hi * 1.5))  # generation.length_margin
    # The model config's explicit bounds win over the data.
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + ["generation.max_tokens_per_text_token=3.0"])
    assert Trainer(mcfg, tcfg, RunPaths(data[0], data[1], str(tmp_path / "c")), DistInfo()).model.length_bounds[1] == 3.0
    # infer() applies the bounds: a model that wants to stop at once still speaks floor(lo * S) tokens.
    model = load_echolancer(tmp_path / "run" / "export").model
    with torch.no_grad():
        model.head.bias[model.eos_id] = 1.0e4
    texts, lens = torch.randint(2, 30, (2, 10)), torch.tensor([10, 6])
    res = model.infer(torch.tensor([0, 1]), texts, lens, max_length=400, temperature=0.0)
    assert res.lengths.tolist() == [int(lo / 1.5 * 10), int(lo / 1.5 * 6)]


def test_resume_from_a_checkpoint_written_before_newer_model_keys(data, tmp_path, monkeypatch):
    # A checkpoint from before `attention_backend` (or any key added later with a neutral default)
    # resumes; before, the key-by-key comparison refused it ("None in the checkpoint, 'sdpa' now").
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    run(data, out, "training.max_steps=1", "training.save_step=1")
    from utils.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    _, path = list_checkpoints(str(out / "ckpt"))[-1]
    state = load_checkpoint(path)
    del state["model_config"]["model"]["attention_backend"]
    save_checkpoint(state, path)
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + ["training.max_steps=2"])
    t = Trainer(mcfg, tcfg, RunPaths(data[0], data[1], str(out), resume=path), DistInfo())
    t.train()
    assert t.step == 2
    # A key that changes the model still refuses, naming it.
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + ["model.encoder_position=absolute"])
    with pytest.raises(Exception, match="encoder_position"):
        Trainer(mcfg, tcfg, RunPaths(data[0], data[1], str(out), resume=path), DistInfo())


def test_guided_attention_loss_is_logged_and_added_to_the_training_loss(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = {}
    for weight in (0.0, 0.5):
        out = tmp_path / f"w{weight}"
        run(data, out, f"alignment.guided_weight={weight}")
        rows[weight] = {r["_step"]: r for r in read_offline_history(find_run_dir(str(out))) if "train/loss" in r}
    for r in rows[0.0].values():
        assert r["train/align_loss"] == 0.0 and r["train/loss"] == pytest.approx(r["train/ce"])
    for r in rows[0.5].values():
        # Weighted off-diagonal mass per step of an untrained attention: 0.5 x (0.1 .. 1).
        assert 0.025 < r["train/align_loss"] < 0.5
        assert r["train/loss"] == pytest.approx(r["train/ce"] + r["train/align_loss"], rel=1e-5)


def test_validations_while_the_prior_is_on_do_not_count_for_early_stopping(data, tmp_path, monkeypatch):
    from utils.early_stopping import EarlyStopping

    monkeypatch.setenv("WANDB_MODE", "disabled")
    counted = []
    real = EarlyStopping.step

    def record(self, val_loss, step):
        counted.append(step)
        return real(self, val_loss, step)

    monkeypatch.setattr(EarlyStopping, "step", record)
    # Prior held for 3 steps, faded to 0 at step 5; validation after every step.
    t = run(data, tmp_path / "run", "alignment.prior_hold_steps=3", "alignment.prior_anneal_steps=2",
            "training.val_step=1", "training.max_steps=8", "early_stopping.patience=100")
    assert counted == [5, 6, 7, 8]
    assert t.early_stopping.best_step >= 5


def test_max_minutes_stops_training_as_if_finished_and_exports(data, tmp_path, monkeypatch):
    import training.echolancer as recipe

    monkeypatch.setenv("WANDB_MODE", "disabled")
    clock = iter(range(0, 10_000, 20))  # every reading of the clock is 20 s later

    monkeypatch.setattr(recipe.time, "perf_counter", lambda: float(next(clock)))
    out = tmp_path / "run"
    # 1 minute = 3 readings; checked every 2 steps: the budget is seen at step 2.
    t = run(data, out, "training.max_minutes=1.0", "training.check_step=2", "training.max_steps=50")
    assert t.step == 2
    assert os.path.isfile(out / "export" / "echolancer.pt")


def test_text_recognition_loss_is_logged_added_to_the_training_loss_and_kept_out_of_validation(data, tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = {}
    for weight in (0.0, 2.0):
        out = tmp_path / f"w{weight}"
        run(data, out, "alignment.guided_weight=0", f"model.decoder.text_ctc_weight={weight}")
        rows[weight] = [r for r in read_offline_history(find_run_dir(str(out)))]
    train0 = [r for r in rows[0.0] if "train/loss" in r]
    train2 = [r for r in rows[2.0] if "train/loss" in r]
    assert all(r["train/text_ctc"] == 0.0 and r["train/loss"] == pytest.approx(r["train/ce"]) for r in train0)
    for r in train2:
        # Twice the per-step CTC of an untrained head over ~vocab_size classes: well above zero.
        assert r["train/text_ctc"] > 0.1
        assert r["train/loss"] == pytest.approx(r["train/ce"] + r["train/text_ctc"], rel=1e-5)



def test_validation_ignores_the_text_recognition_head(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with_head = run(data, tmp_path / "a", "training.max_steps=1", "model.decoder.text_ctc_weight=1.0")
    plain = run(data, tmp_path / "b", "training.max_steps=1")
    state = {k: v for k, v in with_head.model.state_dict().items() if not k.startswith("text_ctc_head.")}
    plain.model.load_state_dict(state)
    assert with_head.validate().metrics == plain.validate().metrics
