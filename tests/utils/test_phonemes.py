from __future__ import annotations

import os

import pytest
import torch

from utils.char_tokenizer import CharTokenizer
from utils.config import ConfigError, TrainConfig, config_to_dict, load_config
from utils.phonemes import PHONEME_SYMBOLS, PhonemeTokenizer, make_tokenizer

pytest.importorskip("piper.phonemize_espeak", reason="the phoneme front end uses espeak-ng from piper-tts")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_symbol_table_is_fixed_unique_and_starts_with_pad_unk_space():
    assert PHONEME_SYMBOLS[:3] == ["<pad>", "<unk>", " "]
    assert len(set(PHONEME_SYMBOLS)) == len(PHONEME_SYMBOLS)
    assert all(len(s) == 1 for s in PHONEME_SYMBOLS[2:])  # one code point each, as espeak's output is split
    assert PhonemeTokenizer().symbols == PHONEME_SYMBOLS
    assert len(PHONEME_SYMBOLS) <= 128  # fits model.vocab_size: 128 of the speech recipe


def test_text_becomes_ipa_after_the_english_normaliser():
    tok = PhonemeTokenizer()
    ipa = tok.normalize_text("Hello, world.")
    assert ipa.startswith("h") and "ˈ" in ipa and "," in ipa and ipa.endswith(".")
    assert ipa == tok.normalize_text("hello, world.")  # the normaliser lower-cases first
    # Numbers are read out before phonemisation: "2" sounds like "two".
    assert tok.normalize_text("I have 2 cats.") == tok.normalize_text("I have two cats.")
    # Different words, different phonemes; the same text, the same ids every time.
    assert tok.encode("a cat") != tok.encode("a hat")
    assert tok.encode("The kettle began to whistle.") == PhonemeTokenizer().encode("The kettle began to whistle.")


def test_recipe_sentences_have_no_unknown_phonemes():
    tok = PhonemeTokenizer()
    for name in ("speech_train.txt", "speech_eval.txt", "train.txt", "eval.txt"):
        with open(os.path.join(ROOT, "scripts", "sentences", name), encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    ids = tok.encode(line.strip())
                    assert tok.is_speakable(ids)
    assert not tok.unknown_counts, f"espeak symbols missing from PHONEME_SYMBOLS: {dict(tok.unknown_counts)}"


def test_saved_dict_restores_a_phoneme_tokenizer_through_char_tokenizer(tmp_path):
    tok = PhonemeTokenizer()
    d = tok.to_dict()
    assert d["frontend"] == "phonemes" and d["symbols"] == PHONEME_SYMBOLS
    back = CharTokenizer.from_dict(d)  # what checkpoints and tokenizer.json loading call
    assert isinstance(back, PhonemeTokenizer)
    assert back.encode("Seven gray geese.") == tok.encode("Seven gray geese.")
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    assert isinstance(CharTokenizer.load(str(path)), PhonemeTokenizer)
    # A character tokenizer's dict (no "frontend") still gives a character tokenizer.
    assert type(CharTokenizer.from_dict(CharTokenizer().to_dict())) is CharTokenizer


def test_unknown_phonemes_map_to_unk_and_are_counted():
    tok = PhonemeTokenizer(symbols=PHONEME_SYMBOLS[:20])  # most IPA symbols missing
    ids = tok.encode("thin")
    assert tok.unk_id in ids and sum(tok.unknown_counts.values()) > 0


def test_make_tokenizer_chooses_the_front_end():
    assert type(make_tokenizer()) is CharTokenizer
    assert type(make_tokenizer("chars")) is CharTokenizer
    assert isinstance(make_tokenizer("phonemes"), PhonemeTokenizer)
    with pytest.raises(ValueError, match="chars, phonemes"):
        make_tokenizer("graphemes")


def test_model_config_key_text_frontend():
    cfg = load_config(os.path.join(ROOT, "config", "model_tiny.yaml"))
    assert cfg.model.text_frontend == "chars"  # the default
    cfg = load_config(os.path.join(ROOT, "config", "model_tiny.yaml"),
                      ["model.text_frontend=phonemes", "model.vocab_size=128"])
    assert cfg.model.text_frontend == "phonemes"
    with pytest.raises(ConfigError):
        load_config(os.path.join(ROOT, "config", "model_tiny.yaml"), ["model.text_frontend=graphemes"])


def test_checkpoint_with_phonemes_loads_a_phoneme_tokenizer(tmp_path):
    from model.echolancer import Echolancer
    from model.pretrained import load_echolancer

    cfg = load_config(os.path.join(ROOT, "config", "model_tiny.yaml"),
                      ["model.text_frontend=phonemes", "model.vocab_size=128"])
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg)
    tok = make_tokenizer(cfg.model.text_frontend)
    state = {"format_version": 1, "model": model.state_dict(), "model_config": config_to_dict(cfg),
             "train_config": config_to_dict(TrainConfig()), "tokenizer": tok.to_dict(),
             "special_tokens": {"codebook_size": model.codebook_size, "bos_id": model.bos_id,
                                "eos_id": model.eos_id, "pad_id": model.pad_id}, "step": 3}
    torch.save(state, tmp_path / "m.pt")
    loaded = load_echolancer(tmp_path / "m.pt")
    assert isinstance(loaded.tokenizer, PhonemeTokenizer)
    assert loaded.model_config.model.text_frontend == "phonemes"
