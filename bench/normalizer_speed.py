"""Text normaliser speed: start-up time and sentences per second, on one CPU core.

    python bench/normalizer_speed.py                      # utils.text_normalizer.normalize
    python bench/normalizer_speed.py --seconds 5          # longer runs, steadier figures
    python bench/normalizer_speed.py --against /tmp/old_char_tokenizer.py:normalize_text

Two sentence sets: "cases" (the inputs of tests/utils/normalizer_cases.tsv, dense with numbers,
dates and symbols: the worst case) and "prose" (plain sentences of the length of a TTS corpus line,
with an occasional number: the usual case). Each set is normalised repeatedly for ``--seconds``;
the figure is sentences normalised / wall time. Start-up is the import of the module (the regular
expressions compile there) plus the first call.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROSE = [
    "The old house stood at the end of the lane, its windows dark and its garden overgrown.",
    "She walked slowly along the river, listening to the water and thinking about the letter.",
    "Nobody in the village could remember a winter as cold as that one.",
    "He opened the door, looked around the empty room, and sighed.",
    "We had been waiting for nearly three hours when the train finally arrived.",
    "The committee met on Tuesday and agreed to postpone the decision until spring.",
    "In 1889 the tower was finished, and 2 million visitors came in the first year.",
    "Her brother, who had travelled widely, told stories of deserts, mountains and strange cities.",
    "It is not easy to explain why some songs stay with us for a lifetime.",
    "Dr. Hale said the results were encouraging, but more work was needed.",
]


def _cases() -> list[str]:
    path = os.path.join(ROOT, "tests", "utils", "normalizer_cases.tsv")
    with open(path, encoding="utf-8") as f:
        return [line.split("\t")[1] for line in f if line.strip() and not line.startswith("#")]


def _load(spec: str | None):
    t0 = time.perf_counter()
    if spec is None:
        from utils.text_normalizer import normalize as fn
    else:
        path, _, name = spec.rpartition(":")
        module_spec = importlib.util.spec_from_file_location("normaliser_under_test", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        fn = getattr(module, name)
    t1 = time.perf_counter()
    fn("Dr. Smith paid $3.50 at 10:30am on March 3, 2024.")
    return fn, t1 - t0, time.perf_counter() - t1


def _rate(fn, sentences: list[str], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for s in sentences:
            fn(s)
        n += len(sentences)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per sentence set")
    parser.add_argument("--against", help="FILE.py:FUNCTION to measure instead of utils.text_normalizer.normalize")
    args = parser.parse_args()
    fn, import_s, first_s = _load(args.against)
    name = args.against or "utils.text_normalizer.normalize"
    print(f"normaliser: {name}")
    print(f"start-up: import {import_s * 1000:.0f} ms, first call {first_s * 1000:.1f} ms")
    for label, sentences in (("cases", _cases()), ("prose", PROSE)):
        rate = _rate(fn, sentences, args.seconds)
        mean_chars = sum(map(len, sentences)) / len(sentences)
        print(f"{label:>5}: {rate:,.0f} sentences/s ({len(sentences)} sentences, mean {mean_chars:.0f} chars)")


if __name__ == "__main__":
    main()
