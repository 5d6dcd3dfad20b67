"""Deterministic character tokenizer with a small English normaliser.

The vocabulary is a fixed, ordered list of symbols written in this file, so every process maps
the same text to the same ids (the first published version hashed characters, which changed
between runs). It is saved into every checkpoint and can be loaded back from there.

Normalisation: unicode -> ASCII (``unidecode``), currency, ordinals and numbers spelled out
(``num2words``), common abbreviations expanded, lower-cased, whitespace collapsed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Optional

from num2words import num2words
from unidecode import unidecode

PAD = "<pad>"
UNK = "<unk>"
# Order matters: ids are positions in this list. Append new symbols at the end only.
DEFAULT_SYMBOLS = [PAD, UNK, " "] + list("abcdefghijklmnopqrstuvwxyz") + list(".,!?'\"-:;()")

_ABBREVIATIONS = {
    "mr": "mister",
    "mrs": "missus",
    "ms": "miss",
    "dr": "doctor",
    "st": "saint",
    "co": "company",
    "jr": "junior",
    "sr": "senior",
    "prof": "professor",
    "gen": "general",
    "lt": "lieutenant",
    "capt": "captain",
    "sgt": "sergeant",
    "col": "colonel",
    "vs": "versus",
    "etc": "et cetera",
    "mt": "mount",
    "ft": "fort",
}
_ABBREV_RE = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.", re.IGNORECASE)
_CURRENCY_RE = re.compile(r"([$£€])\s?(\d[\d,]*(?:\.\d+)?)")
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECIMAL_RE = re.compile(r"\b\d+\.\d+\b")
_NUMBER_RE = re.compile(r"\b\d[\d,]*\b")
_PERCENT_RE = re.compile(r"(\d)\s?%")
_CURRENCY_NAMES = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent")}


def _plural(word: str, n: int) -> str:
    if n == 1:
        return word
    return "pence" if word == "penny" else word + "s"


def _spell_currency(match: re.Match) -> str:
    major_name, minor_name = _CURRENCY_NAMES[match.group(1)]
    amount = match.group(2).replace(",", "")
    whole, _, frac = amount.partition(".")
    major = int(whole)
    minor = int((frac + "00")[:2]) if frac else 0
    parts = []
    if major or not minor:
        parts.append(f"{num2words(major)} {_plural(major_name, major)}")
    if minor:
        parts.append(f"{num2words(minor)} {_plural(minor_name, minor)}")
    return " and ".join(parts)


def normalize_text(text: str) -> str:
    """English text normalisation: ASCII, spelled-out numbers, expanded abbreviations, lower case.

    >>> normalize_text("Dr. Smith paid $3.50 on the 2nd of May, 1999!")
    'doctor smith paid three dollars and fifty cents on the second of may, one thousand, nine hundred and ninety-nine!'
    """
    # Currency first: unidecode would turn "£" into "PS".
    text = _CURRENCY_RE.sub(_spell_currency, text)
    text = unidecode(text)
    text = _PERCENT_RE.sub(r"\1 percent", text)
    text = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], text)
    text = _ORDINAL_RE.sub(lambda m: num2words(int(m.group(1)), to="ordinal"), text)
    text = _DECIMAL_RE.sub(lambda m: num2words(float(m.group(0))), text)
    text = _NUMBER_RE.sub(lambda m: num2words(int(m.group(0).replace(",", ""))), text)
    text = text.lower()
    text = re.sub(r"\s+", " ", text).strip()
    return text


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
        return {"symbols": list(self.symbols), "normalize": self.normalize}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(symbols=list(d["symbols"]), normalize=bool(d.get("normalize", True)))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> CharTokenizer:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
