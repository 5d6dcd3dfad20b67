"""The phoneme text front end: normalised English -> IPA phonemes (espeak-ng) -> ids.

Chosen with ``model.text_frontend: phonemes`` (the default, ``chars``, is the character tokenizer
of ``utils/char_tokenizer.py``). The text is first normalised exactly as for characters (numbers,
dates, symbols read out), then espeak-ng turns it into IPA, one symbol per Unicode code point
(stress marks and the length mark are symbols of their own), and the symbols become ids.

The grapheme-to-phoneme step is espeak-ng with its ``en-us`` voice, through the copy that ships
inside the ``piper-tts`` wheel (``piper.espeakbridge`` and its ``espeak-ng-data``): it installs from
PyPI alone and reads nothing from the network. ``piper-tts`` is in ``requirements-dev.txt`` (it also
renders the demo corpora); both it and espeak-ng are GPL-3.0 licensed, which is why the phoneme front
end is optional and imported only when chosen.

The symbol table is the fixed, ordered list :data:`PHONEME_SYMBOLS` below, so ids never depend on
the data. It is saved with every checkpoint (``to_dict`` adds ``"frontend": "phonemes"``), and
:meth:`utils.char_tokenizer.CharTokenizer.from_dict` gives back a :class:`PhonemeTokenizer` for
such a dict. Symbols espeak produces that are not in the table map to ``<unk>`` and are counted,
like unknown characters.
"""

from __future__ import annotations

import unicodedata
from typing import Optional

from utils.char_tokenizer import PAD, UNK, CharTokenizer

FRONTENDS = ("chars", "phonemes")
G2P = "espeak-ng en-us (piper-tts)"
VOICE = "en-us"

# Order matters: ids are positions in this list. Append new symbols at the end only.
PHONEME_SYMBOLS = (
    [PAD, UNK, " "]
    + list(".,!?;:-'\"()")
    + list("abcdefhijklmnopqrstuvwxyz")  # ASCII letters espeak uses as IPA (no 'g': IPA writes ɡ)
    + list("æçðøŋœɐɑɒɔɕəɘɚɛɜɝɞɟɡɣɤɥɨɪɬɭɯɰɱɲɳɴɵɸɹɺɻɽɾʀʁʂʃʈʉʊʋʌʍʎʏʐʑʒʔʕʝθχβᵻ")
    + ["ʰ", "ʲ", "ʷ", "ˈ", "ˌ", "ː", "ˑ", "\u0303", "\u0329", "\u032a", "\u0306", "\u031a", "↓", "↑"]
)


class G2PUnavailable(RuntimeError):
    """The phoneme front end was chosen but piper-tts (which ships espeak-ng) is not installed."""


class _Espeak:
    """One process-wide espeak-ng (its C library keeps global state)."""

    _phonemizer = None

    @classmethod
    def get(cls):
        if cls._phonemizer is None:
            try:
                from piper.phonemize_espeak import EspeakPhonemizer
            except ImportError as e:
                raise G2PUnavailable(
                    "the phoneme front end needs espeak-ng from the piper-tts package: "
                    "pip install piper-tts==1.8.0 (it is in requirements-dev.txt)") from e
            cls._phonemizer = EspeakPhonemizer()
        return cls._phonemizer


def phonemize(normalized: str, voice: str = VOICE) -> str:
    """Normalised text -> IPA string (sentences joined by a space, punctuation kept).

    >>> phonemize("hello, world.")  # doctest: +SKIP
    'həlˈoʊ, wˈɜːld.'
    """
    if not normalized.strip():
        return ""
    sentences = _Espeak.get().phonemize(voice, normalized)
    text = " ".join("".join(s).strip() for s in sentences if s)
    # espeak's code points are already decomposed (NFD); keep it that way for stable symbols.
    return unicodedata.normalize("NFD", " ".join(text.split()))


class PhonemeTokenizer(CharTokenizer):
    """Like :class:`CharTokenizer`, over IPA symbols: ``normalize_text`` returns the phonemes.

    Everything that reads a tokenizer (preprocessing, training, the pipeline, evaluation) calls
    ``normalize_text`` / ``encode`` / ``is_speakable``, so the phoneme front end needs no other
    change. ``normalize=False`` skips the English normaliser (the input is phonemised as it is).
    """

    frontend = "phonemes"

    def __init__(self, symbols: Optional[list[str]] = None, normalize: bool = True) -> None:
        super().__init__(symbols if symbols is not None else PHONEME_SYMBOLS, normalize=normalize)
        self._cache: dict[str, str] = {}

    def normalize_text(self, text: str) -> str:
        hit = self._cache.get(text)
        if hit is None:
            hit = phonemize(super().normalize_text(text))
            if len(self._cache) < 100_000:
                self._cache[text] = hit
        return hit

    def to_dict(self) -> dict:
        return {**super().to_dict(), "frontend": self.frontend, "g2p": G2P}


def make_tokenizer(frontend: str = "chars") -> CharTokenizer:
    """The tokenizer of ``model.text_frontend``: ``chars`` (default) or ``phonemes``."""
    if frontend == "chars":
        return CharTokenizer()
    if frontend == "phonemes":
        return PhonemeTokenizer()
    raise ValueError(f"text front end {frontend!r}: expected one of {', '.join(FRONTENDS)}")
