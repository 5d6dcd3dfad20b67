"""load_echolancer: a checkpoint alone rebuilds model, tokenizer and configs; mismatches are clear errors."""

from __future__ import annotations

import pytest
import torch

from model.echolancer import Echolancer
from model.pretrained import load_echolancer
from utils.char_tokenizer import DEFAULT_SYMBOLS, CharTokenizer
from utils.checkpoint import CheckpointError, checkpoint_name
from utils.config import ConfigError, TrainConfig, config_to_dict, load_config

TINY = "config/model_tiny.yaml"



def tiny_model(*overrides: str, seed: int = 0) -> tuple[Echolancer, object]:
    cfg = load_config(TINY, list(overrides))
    torch.manual_seed(seed)
    return Echolancer.from_config(cfg), cfg


def full_checkpoint(model: Echolancer, cfg, step: int = 5, tokenizer: CharTokenizer | None = None) -> dict:
    tokenizer = tokenizer or CharTokenizer()
    return {
        "format_version": 1,
        "model": model.state_dict(),
        "model_config": config_to_dict(cfg),
        "train_config": config_to_dict(TrainConfig()),
        "tokenizer": tokenizer.to_dict(),
        "special_tokens": {"codebook_size": model.codebook_size, "bos_id": model.bos_id,
                           "eos_id": model.eos_id, "pad_id": model.pad_id},
        "step": step,
    }


def same_weights(a: Echolancer, b: Echolancer) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_full_checkpoint_rebuilds_model_tokenizer_and_configs(tmp_path):
    model, cfg = tiny_model("model.stop_head=true")
    tok = CharTokenizer(DEFAULT_SYMBOLS + ["é"], normalize=False)  # a non-default tokenizer survives
    path = tmp_path / "model.pt"
    torch.save(full_checkpoint(model, cfg, step=123, tokenizer=tok), path)
    loaded = load_echolancer(path)
    assert same_weights(loaded.model, model)
    assert loaded.model.stop_head is not None and not loaded.model.training
    assert loaded.tokenizer.symbols == tok.symbols and loaded.tokenizer.normalize is False
    assert loaded.model_config == cfg
    assert loaded.train_config == TrainConfig()
    assert loaded.step == 123 and loaded.path == str(path)


def test_directory_loads_the_newest_checkpoint(tmp_path):
    old, cfg = tiny_model(seed=0)
    new, _ = tiny_model(seed=1)
    torch.save(full_checkpoint(old, cfg, step=10), tmp_path / checkpoint_name(10))
    torch.save(full_checkpoint(new, cfg, step=200), tmp_path / checkpoint_name(200))
    loaded = load_echolancer(tmp_path)
    assert loaded.step == 200 and same_weights(loaded.model, new)


def test_compiled_model_prefixes_are_stripped(tmp_path):
    model, cfg = tiny_model()
    ckpt = full_checkpoint(model, cfg)
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "c.pt")
    assert same_weights(load_echolancer(tmp_path / "c.pt").model, model)


def test_raw_state_dict_needs_and_accepts_a_model_config(tmp_path):
    model, _ = tiny_model()
    path = tmp_path / "raw.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ConfigError, match="raw state dict.*--model_config"):
        load_echolancer(path)
    loaded = load_echolancer(path, model_config_path=TINY)
    assert same_weights(loaded.model, model)
    assert loaded.step is None and loaded.train_config is None
    assert loaded.tokenizer.symbols == DEFAULT_SYMBOLS


def test_weights_from_another_config_are_an_error_naming_the_mismatch(tmp_path):
    model, _ = tiny_model("model.decoder.layer=3")
    _, claimed = tiny_model()  # the checkpoint claims 2 decoder layers
    ckpt = full_checkpoint(model, claimed)
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys: dec_layers\.2\..*incompatible"):
        load_echolancer(tmp_path / "c.pt")

    wide, _ = tiny_model("model.decoder.hidden=48", "model.decoder.head=2")
    torch.save(model.state_dict() | {"audio_embed.embedding.weight": wide.audio_embed.embedding.weight}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match=r"audio_embed\.embedding\.weight: checkpoint \(1003, 48\) vs model \(1003, 32\)"):
        load_echolancer(tmp_path / "r.pt", model_config_path=TINY)


def test_a_model_config_file_that_contradicts_the_checkpoint_is_an_error(tmp_path):
    model, cfg = tiny_model("model.decoder.layer=3")
    torch.save(full_checkpoint(model, cfg), tmp_path / "c.pt")
    with pytest.raises(ConfigError, match=r"model\.decoder\.layer \(checkpoint 3, file 2\)"):
        load_echolancer(tmp_path / "c.pt", model_config_path=TINY)


def test_special_token_layout_mismatch_is_an_error(tmp_path):
    model, cfg = tiny_model()
    ckpt = full_checkpoint(model, cfg)
    ckpt["special_tokens"]["eos_id"] = 0
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="special token ids .*eos_id"):
        load_echolancer(tmp_path / "c.pt")


def test_tokenizer_larger_than_the_text_vocabulary_is_an_error(tmp_path):
    model, cfg = tiny_model()
    tok = CharTokenizer(DEFAULT_SYMBOLS + [chr(0x100 + i) for i in range(cfg.model.vocab_size)])
    torch.save(full_checkpoint(model, cfg, tokenizer=tok), tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="tokenizer has .* symbols but model.vocab_size is 64"):
        load_echolancer(tmp_path / "c.pt")


def test_empty_directory_and_missing_file_are_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        load_echolancer(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_echolancer(tmp_path / "nope.pt")


def test_inference_export_then_load_gives_the_same_outputs(tmp_path):
    from model.pretrained import export_echolancer

    model, cfg = tiny_model()
    model.eval()
    path = export_echolancer(model, cfg, CharTokenizer(), str(tmp_path / "export"), step=3)
    loaded = load_echolancer(path)
    assert loaded.step == 3 and loaded.tokenizer.to_dict() == CharTokenizer().to_dict()
    assert same_weights(model, loaded.model)
    g = torch.Generator().manual_seed(0)
    texts, src_lens = torch.randint(3, 30, (2, 9), generator=g), torch.tensor([9, 6])
    mels, mel_lens = torch.randint(0, model.codebook_size, (2, 11), generator=g), torch.tensor([11, 7])
    em = torch.randn(2, cfg.model.emotion_input_size, generator=g)
    speakers = torch.tensor([0, 1])
    with torch.no_grad():
        want = model(speakers, texts, src_lens, mels, mel_lens, em)
        got = loaded.model(speakers, texts, src_lens, mels, mel_lens, em)
    assert torch.equal(want.logits, got.logits)
    assert (want.stop_logits is None) == (got.stop_logits is None)
    if want.stop_logits is not None:
        assert torch.equal(want.stop_logits, got.stop_logits)
