"""The character tokenizer is deterministic across processes and normalises English text."""

import subprocess
import sys
import warnings

import pytest

from utils.char_tokenizer import CharTokenizer, NormalizerVersionWarning, normalize_text
from utils.text_normalizer import NORMALIZER_VERSION

SENTENCE = "Hello, World! Dr. Who's 2nd visit cost $12.50."


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Dr. Smith arrived.", "doctor smith arrived."),
        ("It costs $3.50", "it costs three dollars and fifty cents"),
        ("£5 each", "five pounds each"),
        ("the 21st century", "the twenty-first century"),
        ("I have 3 cats", "i have three cats"),
        ("pi is 3.14", "pi is three point one four"),
        ("1,000 people", "one thousand people"),
        ("50% off", "fifty percent off"),
        ("Café  naïve", "cafe naive"),
        ("Mr. and Mrs. Jones", "mister and missus jones"),
    ],
)
def test_normalisation_examples(text, expected):
    assert normalize_text(text) == expected


def test_ids_are_identical_in_a_fresh_process():
    tok = CharTokenizer()
    code = (
        "import sys; sys.path.insert(0, '.');"
        "from utils.char_tokenizer import CharTokenizer;"
        f"print(CharTokenizer().encode({SENTENCE!r}))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(tok.encode(SENTENCE))


def test_unknown_characters_map_to_unk_and_are_counted():
    tok = CharTokenizer()
    ids = tok.encode("a#b#")
    assert ids == [tok.encode("a")[0], tok.unk_id, tok.encode("b")[0], tok.unk_id]
    assert tok.unknown_counts["#"] == 2
    assert tok.unknown_chars("a#b~") == ["#", "~"]


def test_vocabulary_round_trips_through_save_and_load(tmp_path):
    tok = CharTokenizer()
    tok.save(tmp_path / "vocab.json")
    again = CharTokenizer.load(tmp_path / "vocab.json")
    assert again.symbols == tok.symbols and again.encode(SENTENCE) == tok.encode(SENTENCE)
    assert CharTokenizer.from_dict(tok.to_dict()).encode(SENTENCE) == tok.encode(SENTENCE)


def test_speakability_and_decoding():
    tok = CharTokenizer()
    assert tok.is_speakable(tok.encode("hi!"))
    assert not tok.is_speakable(tok.encode("?! ..."))
    assert tok.decode(tok.encode("Hello, world.")) == "hello, world."
    assert tok.pad_id == 0 and tok.symbols[tok.pad_id] == "<pad>"


def test_normaliser_version_is_saved_and_a_matching_one_loads_silently():
    d = CharTokenizer().to_dict()
    assert d["normalizer_version"] == NORMALIZER_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = CharTokenizer.from_dict(d)
    assert again.encode(SENTENCE) == CharTokenizer().encode(SENTENCE)


@pytest.mark.parametrize("saved", [None, "en-0.1"])
def test_another_or_missing_normaliser_version_loads_with_a_clear_warning(saved):
    d = {"symbols": CharTokenizer().symbols, "normalize": True}  # a checkpoint from before versioning
    if saved:
        d["normalizer_version"] = saved
    with pytest.warns(NormalizerVersionWarning, match=NORMALIZER_VERSION):
        tok = CharTokenizer.from_dict(d)
    assert tok.encode(SENTENCE) == CharTokenizer().encode(SENTENCE)  # same symbols, same ids


def test_a_tokenizer_that_does_not_normalise_never_warns_about_versions():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = CharTokenizer.from_dict({"symbols": CharTokenizer().symbols, "normalize": False})
    assert tok.normalize_text("A1") == "A1"


def test_symbol_ids_are_unchanged():
    # Checkpoints store ids: the vocabulary may only grow at the end.
    assert CharTokenizer().symbols[:3] == ["<pad>", "<unk>", " "]
    assert "".join(CharTokenizer().symbols[3:]) == "abcdefghijklmnopqrstuvwxyz.,!?'\"-:;()"
