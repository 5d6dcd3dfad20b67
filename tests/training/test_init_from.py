"""Fine-tuning: a new run from a trained model's weights only (train.py --init_from), and training.freeze."""


import pytest
import torch

from model.echolancer import Echolancer
from model.pretrained import load_echolancer
from tests.training.tiny_run import BASE, MODEL_CFG, TRAIN_CFG, dummy_data
from train import main as train_main
from training.echolancer import RunPaths, Trainer
from training.engine import seed_everything
from training.init_from import freeze_parts, init_from_pretrained
from utils.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from utils.config import ConfigError, load_configs
from utils.distributed import DistInfo
from utils.phonemes import make_tokenizer


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dummy_data(tmp_path_factory.mktemp("data"), 12)


def make_trainer(data, out, overrides=(), **kw) -> Trainer:
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + list(overrides))
    return Trainer(mcfg, tcfg, RunPaths(data[0], data[1], str(out), **kw), DistInfo())


@pytest.fixture(scope="module")
def source(data, tmp_path_factory):
    """A trained run (3 steps, another seed than the fine-tuning runs): its ckpt/ and export/."""
    out = tmp_path_factory.mktemp("source") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        make_trainer(data, out, ["training.max_steps=3", "training.seed=7"]).train()
    return out


def tiny(*sets):
    """A model built from the tiny config with ``sets``, and the config and tokenizer."""
    mcfg, _ = load_configs(MODEL_CFG, TRAIN_CFG, list(sets))
    seed_everything(0)
    return Echolancer.from_config(mcfg), mcfg, make_tokenizer(mcfg.model.text_frontend)


def source_weights(path) -> dict:
    return load_echolancer(path).model.state_dict()


@pytest.mark.parametrize("where", ["export", "export/echolancer.pt", "ckpt", "newest ckpt file"])
def test_every_kind_of_source_gives_its_exact_weights(source, where):
    path = latest_checkpoint(source / "ckpt") if where == "newest ckpt file" else str(source / where)
    model, mcfg, tok = tiny()
    loaded = init_from_pretrained(model, mcfg, tok, path)
    expected = source_weights(path)
    assert model.state_dict().keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert loaded.step == 3 and loaded.grown == {}


def test_a_fine_tuning_run_starts_at_step_0_with_a_fresh_optimizer_and_records_its_source(data, source, tmp_path):
    t = make_trainer(data, tmp_path / "ft", ["training.max_steps=1"], init_from=str(source / "export"))
    for k, v in source_weights(source / "export").items():
        assert torch.equal(t.model.state_dict()[k], v), k
    assert (t.step, t.epoch, t.epoch_position) == (0, 0, 0)
    assert t.optimizer.state_dict()["state"] == {}  # no Adam moments carried over
    assert t.scheduler.last_epoch == 0 and t.early_stopping.best_loss is None
    assert t.train().step == 1
    ck = load_checkpoint(tmp_path / "ft" / "ckpt")
    assert ck["step"] == 1 and ck["init_from"] == str(source / "export" / "echolancer.pt")


def test_more_speakers_extend_the_table_keeping_the_old_rows_and_fresh_new_ones(source):
    model, mcfg, tok = tiny("model.n_speaker=6")
    fresh = model.speaker_embed.weight.detach().clone()
    loaded = init_from_pretrained(model, mcfg, tok, str(source / "export"))
    old = source_weights(source / "export")["speaker_embed.weight"]
    assert old.shape[0] == 4 and loaded.grown == {"n_speaker": (4, 6)}
    assert torch.equal(model.speaker_embed.weight[:4], old)
    assert torch.equal(model.speaker_embed.weight[4:], fresh[4:])


def test_a_larger_text_vocabulary_extends_the_text_embedding_keeping_the_old_rows(source):
    model, mcfg, tok = tiny("model.vocab_size=80")
    fresh = model.text_embed.embedding.weight.detach().clone()
    loaded = init_from_pretrained(model, mcfg, tok, str(source / "export"))
    old = source_weights(source / "export")["text_embed.embedding.weight"]
    assert loaded.grown == {"vocab_size": (64, 80)}
    assert torch.equal(model.text_embed.embedding.weight[:64], old)
    assert torch.equal(model.text_embed.embedding.weight[64:], fresh[64:])


@pytest.mark.parametrize("key, smaller, was", [("n_speaker", 2, 4), ("vocab_size", 63, 64)])
def test_a_smaller_table_than_the_source_is_refused_naming_both_numbers(source, key, smaller, was):
    model, mcfg, tok = tiny(f"model.{key}={smaller}")
    with pytest.raises(ConfigError, match=rf"model\.{key} is {smaller} but the source has {was}"):
        init_from_pretrained(model, mcfg, tok, str(source / "export"))


def test_an_architecture_mismatch_is_refused_naming_every_key_with_both_values(source):
    model, mcfg, tok = tiny("model.decoder.layer=1", "model.activation=relu", "model.encoder_position=absolute",
                            "model.decoder.dropout=0.2")  # dropout alone may differ
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as e:
        init_from_pretrained(model, mcfg, tok, str(source / "export"))
    msg = str(e.value)
    for part in ("model.decoder.layer: 2 in the checkpoint, 1 now", "model.activation: 'gelu' in the checkpoint, 'relu' now",
                 "model.encoder_position: 'directional' in the checkpoint, 'absolute' now"):
        assert part in msg
    assert "decoder.dropout" not in msg  # not among the differing keys
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing copied


def test_freezing_the_encoder_keeps_it_bit_identical_while_the_decoder_trains(data, source, tmp_path):
    t = make_trainer(data, tmp_path / "ft", ["training.max_steps=3", "training.freeze=[encoder]"],
                     init_from=str(source / "export"))
    src = source_weights(source / "export")
    in_optimizer = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(not p.requires_grad and id(p) not in in_optimizer for p in t.model.encoder.parameters())
    t.train()
    after = t.model.state_dict()
    encoder = [k for k in after if k.startswith("encoder.")]
    assert encoder and all(torch.equal(after[k], src[k]) for k in encoder)
    assert not torch.equal(after["dec_layers.0.ffn.w_in.weight"], src["dec_layers.0.ffn.w_in.weight"])
    assert not torch.equal(after["text_embed.embedding.weight"], src["text_embed.embedding.weight"])
    # Resuming keeps the same parts frozen; changing them is refused, naming both lists.
    with pytest.raises(ConfigError, match=r"training\.freeze was \['encoder'\] in the checkpoint and is \[\] now"):
        make_trainer(data, tmp_path / "ft", ["training.max_steps=4"], resume=str(tmp_path / "ft" / "ckpt"))


def test_an_unknown_freeze_name_is_refused_listing_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"training\.freeze\[0\]' must be one of 'encoder', 'decoder', "
                                          r"'text_embedding', 'speaker_embedding', got 'encodr'"):
        load_configs(MODEL_CFG, TRAIN_CFG, ["training.freeze=[encodr]"])


def test_a_frozen_table_cannot_grow_and_a_missing_part_cannot_be_frozen():
    model, _, _ = tiny("model.n_speaker=6")
    with pytest.raises(ConfigError, match="speaker_embedding cannot be frozen while model.n_speaker grows from 4 to 6"):
        freeze_parts(model, ["speaker_embedding"], {"n_speaker": (4, 6)})
    single, _, _ = tiny("model.multi_speaker=false")
    with pytest.raises(ConfigError, match="no speaker_embedding"):
        freeze_parts(single, ["speaker_embedding"])


def cli(data, out, *extra):
    argv = ["--model_config", MODEL_CFG, "--train_config", TRAIN_CFG, "--train_data_dir", data[0],
            "--output_dir", str(out), *extra]
    for s in BASE + ["training.max_steps=1"]:
        argv += ["--set", s]
    return argv


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_init_from_with_resume_or_into_a_run_with_checkpoints_is_refused(data, source, tmp_path, capsys,
                                                                         restore_logging):
    assert train_main(cli(data, tmp_path / "new", "--init_from", str(source / "export"), "--resume")) == 2
    assert "--init_from and --resume contradict each other" in one_error_line(capsys)
    for extra in ([], ["--overwrite"]):  # the source run itself, even with --overwrite
        assert train_main(cli(data, source, "--init_from", str(source / "ckpt"), *extra)) == 2
        assert f"--output_dir {source} already holds a run's checkpoints" in one_error_line(capsys)
    assert latest_checkpoint(source / "ckpt") is not None  # nothing moved aside


def test_a_missing_source_is_one_line_naming_it(data, tmp_path, capsys, restore_logging):
    missing = tmp_path / "no_such_run" / "export"
    assert train_main(cli(data, tmp_path / "new", "--init_from", str(missing))) == 2
    line = one_error_line(capsys)
    assert line.startswith("train.py: error: --init_from ") and f"{missing}: no such file or directory" in line


def test_a_raw_state_dict_is_refused_as_a_source(tmp_path):
    model, mcfg, tok = tiny()
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    with pytest.raises(CheckpointError, match="raw state dict carries no config"):
        init_from_pretrained(model, mcfg, tok, str(tmp_path / "raw.pt"))


def test_a_source_inside_the_new_output_dir_is_refused(source):
    # A run directory with an export but no checkpoints: the new run's export would replace the source.
    model, mcfg, tok = tiny()
    with pytest.raises(ConfigError, match="lies inside --output_dir"):
        init_from_pretrained(model, mcfg, tok, str(source / "export"), output_dir=str(source))
