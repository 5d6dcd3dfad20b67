"""Reading speech corpora: ``metadata.csv`` files in the LJSpeech layout and its multi-speaker
variants. Used by ``preprocess.py`` (recordings -> training files) and ``evaluate.py``
(reference recordings), so there is one reader.

Layouts (``auto`` tells them apart):

* ``ljspeech``: ``DATASET/wavs/<id>.wav`` and ``DATASET/metadata.csv`` with rows
  ``id|text|normalized text`` (the normalised column may be empty; then ``text`` is used).
* ``speaker_column``: the same, with a speaker column: ``id|speaker|text|normalized text``.
* ``speaker_folders``: one folder per speaker, each in the LJSpeech layout.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from utils.config import ConfigError

LAYOUTS = ("auto", "ljspeech", "speaker_column", "speaker_folders")
FIELDS = {"ljspeech": 3, "speaker_column": 4}  # columns of a metadata.csv row per layout


@dataclass
class Row:
    """One utterance listed in a metadata file.

    ``key`` names the output file (``<key>.pt``): the id, prefixed with the speaker folder in the
    multi-speaker layouts so ids may repeat across speakers.
    """

    key: str
    speaker: str
    text: str  # what the tokenizer reads: the normalised column, else the raw text
    raw_text: str  # what BERT reads (case and punctuation carry emotion)
    wav_path: str
    source: str  # "metadata.csv:12", for error messages


@dataclass
class Problem:
    where: str  # file and line (or file)
    kind: str  # csv_fields, missing_wav, unreadable_wav, empty_text, unspeakable_text, ...
    message: str


# --------------------------------------------------------------------------------------------
# Reading the dataset's metadata
# --------------------------------------------------------------------------------------------


def read_metadata(csv_path: str, layout: str, speaker: Optional[str], key_prefix: str) -> tuple[list[Row], list[Problem]]:
    """Rows of one ``metadata.csv`` (``|``-separated, no header, no quoting, as LJSpeech)."""
    n_fields = FIELDS[layout]
    wav_dir = os.path.join(os.path.dirname(csv_path), "wavs")
    rows, problems = [], []
    with open(csv_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            where = f"{csv_path}:{line_no}"
            fields = line.split("|")
            if len(fields) != n_fields:
                expected = "id|text|normalized text" if n_fields == 3 else "id|speaker|text|normalized text"
                problems.append(Problem(where, "csv_fields", f"{len(fields)} fields, expected {n_fields} ({expected})"))
                continue
            utt_id = fields[0].strip()
            spk = fields[1].strip() if layout == "speaker_column" else speaker
            text, norm = fields[-2].strip(), fields[-1].strip()
            if not utt_id or not spk:
                problems.append(Problem(where, "csv_fields", "empty id or speaker field"))
                continue
            key = f"{key_prefix}{utt_id}" if layout != "speaker_column" else f"{spk}_{utt_id}"
            rows.append(Row(key, spk, norm or text, text or norm, os.path.join(wav_dir, utt_id + ".wav"), where))
    return rows, problems


def detect_layout(input_dir: str) -> str:
    """``speaker_folders`` without a top-level metadata.csv, else by the most common field count."""
    csv_path = os.path.join(input_dir, "metadata.csv")
    if not os.path.isfile(csv_path):
        if any(os.path.isfile(os.path.join(input_dir, d, "metadata.csv")) for d in os.listdir(input_dir)):
            return "speaker_folders"
        raise ConfigError(
            f"{input_dir}: no metadata.csv, and no speaker folders with one; expected wavs/ + metadata.csv "
            "(LJSpeech) or one folder per speaker, each with wavs/ + metadata.csv"
        )
    with open(csv_path, encoding="utf-8") as f:
        counts = Counter(len(line.split("|")) for line in f if line.strip())
    common = counts.most_common(1)[0][0] if counts else 3
    return "speaker_column" if common == 4 else "ljspeech"


def discover(input_dir: str, layout: str = "auto") -> tuple[str, list[Row], list[Problem]]:
    """Every utterance of the dataset, the layout used, and the metadata problems found."""
    if not os.path.isdir(input_dir):
        raise ConfigError(f"--input_dir {input_dir}: not a directory")
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: allowed values are {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(input_dir)
    if layout == "speaker_folders":
        rows, problems = [], []
        for name in sorted(os.listdir(input_dir)):
            csv_path = os.path.join(input_dir, name, "metadata.csv")
            if os.path.isfile(csv_path):
                r, p = read_metadata(csv_path, "ljspeech", name, f"{name}_")
                rows += r
                problems += p
    else:
        csv_path = os.path.join(input_dir, "metadata.csv")
        if not os.path.isfile(csv_path):
            raise ConfigError(f"{input_dir}: layout {layout} needs {csv_path}")
        single = os.path.basename(os.path.normpath(input_dir)) or "speaker"
        rows, problems = read_metadata(csv_path, layout, single, "")
    # Keys name files: two rows with the same key would overwrite each other.
    seen: dict[str, str] = {}
    unique = []
    for row in rows:
        if row.key in seen:
            problems.append(Problem(row.source, "duplicate_id", f"id {row.key!r} already listed at {seen[row.key]}"))
            continue
        seen[row.key] = row.source
        unique.append(row)
    return layout, unique, problems
