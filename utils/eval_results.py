"""evaluate.py's results: one stage's scores, WER by sentence length, the worst sentences, the tables.

Apart from the run because these only summarise scored utterances: no models, audio or ASR calls
(``score_texts`` rescores transcripts already made).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from utils.asr import score_texts

# Sentence-length buckets (words): the training text runs to 30 words, so 31-45 and 46+ are the
# 1.5x and 2x lengths of the long-sentence list.
DEFAULT_LENGTH_EDGES = (10, 20, 30, 45)


@dataclass
class StageResult:
    """One stage's scores over its clips (the report's ``stages`` entry)."""

    stage: str
    utterances: int
    wer: float
    cer: float
    audio_seconds: float
    synthesis_seconds: Optional[float]  # None for recordings
    rtf: Optional[float]  # synthesis seconds per audio second
    stop_failure_rate: Optional[float]  # model only
    length_ratio: Optional[float]  # mean generated / expected duration
    per_utterance: list[dict] = field(default_factory=list)
    # Model only, from each decode's attention: mean share of the text ever attended, mean steps
    # per sentence that jump back 2+ symbols, share of sentences whose attention reached the end.
    coverage: Optional[float] = None
    backward_jumps: Optional[float] = None
    reached_end: Optional[float] = None
    by_length: list[dict] = field(default_factory=list)  # WER/CER per sentence-length bucket (words)
    # Mean cosine similarity of the clips' speaker embeddings to the recordings of the same
    # sentences (None without recordings or with --no_speaker_similarity).
    speaker_similarity: Optional[float] = None


def bucket_label(words: int, edges: tuple[int, ...]) -> str:
    """``words`` -> its bucket of ``edges`` (e.g. 10, 20 -> "1-10", "11-20", "21+")."""
    lo = 1
    for edge in edges:
        if words <= edge:
            return f"{lo}-{edge}"
        lo = edge + 1
    return f"{lo}+"


def length_buckets(per_utt: list[dict], edges: tuple[int, ...] = DEFAULT_LENGTH_EDGES) -> list[dict]:
    """WER and CER (corpus-level, within the bucket), stop failures and length ratio per bucket of
    sentence length in words; buckets with no sentence are left out, the rest in order."""
    groups: dict[str, list[dict]] = {}
    for u in per_utt:
        groups.setdefault(bucket_label(len(u["text"].split()), edges), []).append(u)
    order = [bucket_label(e, edges) for e in edges] + [bucket_label(edges[-1] + 1, edges)] if edges else ["1+"]
    rows = []
    for label in order:
        us = groups.get(label)
        if not us:
            continue
        rates = score_texts([u["text"] for u in us], [u["transcript"] for u in us])
        stops = [u["hit_max_length"] for u in us if u["hit_max_length"] is not None]
        ratios = [u["seconds"] / u["expected_seconds"] for u in us if u["expected_seconds"]]
        rows.append({"words": label, "n": len(us), "wer": round(rates.wer, 4), "cer": round(rates.cer, 4),
                     "stop_failure_rate": round(float(np.mean(stops)), 4) if stops else None,
                     "length_ratio": round(float(np.mean(ratios)), 4) if ratios else None})
    return rows


def worst_sentences(per_utt: list[dict], n: int) -> list[dict]:
    """The ``n`` sentences with the highest WER (then CER), with what the ASR heard."""
    ranked = sorted(per_utt, key=lambda u: (u["wer"], u["cer"]), reverse=True)[:n]
    return [{k: u[k] for k in ("text", "transcript", "wer", "cer", "hit_max_length", "wav")} for u in ranked]


def format_buckets(results: list[StageResult]) -> str:
    """A markdown table of WER by sentence length, one row per stage and bucket."""
    lines = ["| stage | words | n | WER | CER | stop failures | length ratio |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for b in r.by_length:
            stop = "-" if b["stop_failure_rate"] is None else f"{100 * b['stop_failure_rate']:.1f}%"
            ratio = "-" if b["length_ratio"] is None else f"{b['length_ratio']:.2f}"
            lines.append(f"| {r.stage} | {b['words']} | {b['n']} | {100 * b['wer']:.1f}% | {100 * b['cer']:.1f}% "
                         f"| {stop} | {ratio} |")
    return "\n".join(lines)


def format_table(results: list[StageResult]) -> str:
    """A markdown table of the stages (pasteable into a README)."""

    def pct(x: Optional[float]) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x: Optional[float], fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = ["| stage | n | WER | CER | stop failures | length ratio | coverage | back jumps | speaker sim | RTF |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.stage} | {r.utterances} | {pct(r.wer)} | {pct(r.cer)} | {pct(r.stop_failure_rate)} "
                     f"| {num(r.length_ratio, '.2f')} | {pct(r.coverage)} | {num(r.backward_jumps, '.2f')} "
                     f"| {num(r.speaker_similarity, '.3f')} | {num(r.rtf, '.3f')} |")
    return "\n".join(lines)
