"""Deterministic character tokenizer with an English normaliser.

The vocabulary is a fixed, ordered list of symbols written in this file, so every process maps
the same text to the same ids (the first published version hashed characters, which changed
between runs). It is saved into every checkpoint and can be loaded back from there.

Normalisation is ``utils.text_normalizer.normalize`` (numbers, dates, times, money, units, symbols,
abbreviations and initialisms read as words; lower case). Its version string is saved with the
tokenizer: loading a tokenizer saved under another version, or under none (checkpoints older than
the versioning), still works but warns (:class:`NormalizerVersionWarning`), because the model was
trained on text normalised differently. A warning, not an error: most sentences read the same, and
an old checkpoint must stay usable; pass ``warnings.simplefilter("error", NormalizerVersionWarning)``
to make it fatal.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterable
from typing import Optional

from utils.text_normalizer import NORMALIZER_VERSION, normalize

PAD = "<pad>"
UNK = "<unk>"
# Order matters: ids are positions in this list. Append new symbols at the end only.
DEFAULT_SYMBOLS = [PAD, UNK, " "] + list("abcdefghijklmnopqrstuvwxyz") + list(".,!?'\"-:;()")


def normalize_text(text: str) -> str:
    """English text normalisation (``utils.text_normalizer``): the words a person says, lower case.

    >>> normalize_text("Dr. Smith paid $3.50 on the 2nd of May, 1999!")
    'doctor smith paid three dollars and fifty cents on the second of may, nineteen ninety-nine!'
    """
    return normalize(text)


class NormalizerVersionWarning(UserWarning):
    """A tokenizer was saved with another version of the text normaliser than this code runs."""


class CharTokenizer:
    """Maps normalised text to character ids; unknown characters become ``unk_id`` and are counted.

    Args:
        symbols: the ordered vocabulary; ``symbols[0]`` must be the pad symbol, ``symbols[1]`` unk.
        normalize: whether :meth:`encode` normalises text first.
    """

    def __init__(self, symbols: Optional[list[str]] = None, normalize: bool = True) -> None:
        self.symbols = list(symbols if symbols is not None else DEFAULT_SYMBOLS)
        if self.symbols[:2] != [PAD, UNK]:
            raise ValueError(f"the first two symbols must be {PAD!r} and {UNK!r}, got {self.symbols[:2]}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("tokenizer symbols must be unique")
        self.normalize = normalize
        self._ids = {s: i for i, s in enumerate(self.symbols)}
        self.unknown_counts: Counter[str] = Counter()

    pad_id = 0
    unk_id = 1

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def normalize_text(self, text: str) -> str:
        return normalize_text(text) if self.normalize else text

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Characters outside the vocabulary map to ``unk_id`` and are counted."""
        ids = []
        for ch in self.normalize_text(text):
            i = self._ids.get(ch)
            if i is None:
                self.unknown_counts[ch] += 1
                i = self.unk_id
            ids.append(i)
        return ids

    def unknown_chars(self, text: str) -> list[str]:
        """The characters of ``text`` (after normalisation) that the vocabulary cannot map."""
        return sorted({ch for ch in self.normalize_text(text) if ch not in self._ids})

    def is_speakable(self, ids: Iterable[int]) -> bool:
        """True if the ids contain at least one letter (not only spaces, punctuation or unk)."""
        return any(self.symbols[i].isalpha() for i in ids if i > self.unk_id)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.symbols[i] if i > self.unk_id else ("" if i == self.pad_id else "?") for i in ids)

    # ---- persistence: a plain dict so it can live inside a weights_only checkpoint ----
    def to_dict(self) -> dict:
        return {"symbols": list(self.symbols), "normalize": self.normalize, "normalizer_version": NORMALIZER_VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("frontend", "chars") == "phonemes" and cls is CharTokenizer:  # saved by utils/phonemes.py
            from utils.phonemes import PhonemeTokenizer

            return PhonemeTokenizer.from_dict(d)
        tok = cls(symbols=list(d["symbols"]), normalize=bool(d.get("normalize", True)))
        saved = d.get("normalizer_version")
        if tok.normalize and saved != NORMALIZER_VERSION:
            was = f"version {saved!r}" if saved else "a normaliser older than versioning (no version saved)"
            warnings.warn(
                f"this tokenizer was saved with text normaliser {was}, but this code normalises with version "
                f"{NORMALIZER_VERSION!r}: numbers, dates, units, symbols or abbreviations may now be read "
                "differently from the text the model was trained on. Check the normalised text (infer.py prints "
                "it), or retrain/fine-tune on text prepared with this version.",
                NormalizerVersionWarning, stacklevel=2)
        return tok

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> CharTokenizer:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
