"""The English normaliser reads the project's own cases (tests/utils/normalizer_cases.tsv) as a person would.

One test per class of case; a failure names every input of that class that was misread.

The per-class table (for an issue's closing note, or to compare with another normaliser):

    python tests/utils/test_text_normalizer.py                          # utils.text_normalizer.normalize
    python tests/utils/test_text_normalizer.py --against /tmp/old.py:normalize_text
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.text_normalizer import NORMALIZER_VERSION, normalize  # noqa: E402

CASES_FILE = os.path.join(HERE, "normalizer_cases.tsv")


def load_cases(path: str = CASES_FILE) -> dict[str, list[tuple[str, str]]]:
    """class -> [(input, expected reading)], in file order."""
    cases: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path} line {n}: expected class<TAB>input<TAB>expected, got {line!r}")
            cls, text, expected = fields
            cases[cls].append((text, expected))
    return dict(cases)


CASES = load_cases()


def misread(fn: Callable[[str], str], cases: list[tuple[str, str]]) -> list[str]:
    out = []
    for text, expected in cases:
        try:
            got = fn(text)
        except Exception as e:  # a crash is a misreading too; name it
            got = f"<{type(e).__name__}: {e}>"
        if got != expected:
            out.append(f"{text!r}: got {got!r}, expected {expected!r}")
    return out


@pytest.mark.parametrize("cls", sorted(CASES))
def test_cases_of_class(cls):
    failures = misread(normalize, CASES[cls])
    assert not failures, f"{len(failures)}/{len(CASES[cls])} {cls} cases misread:\n" + "\n".join(failures)


def test_the_case_file_is_large_enough():
    assert sum(len(v) for v in CASES.values()) >= 200
    assert len(CASES) >= 14


@pytest.mark.parametrize("text, reading", [
    # Inputs that are easy to misread (units, decades, times, numerals ...), as the tokenizer sees them.
    ("The file is 250MB.", "the file is two hundred fifty megabytes."),
    ("It weighs 3kg.", "it weighs three kilograms."),
    ("In the 1990s, music changed.", "in the nineteen nineties, music changed."),
    ("The meeting is at 10:30am.", "the meeting is at ten thirty a m."),
    ("It was -5 degrees outside.", "it was minus five degrees outside."),
    ("Salt & pepper.", "salt and pepper."),
    ("in 1987", "in nineteen eighty-seven"),
    ("555-0199", "five five five, oh one nine nine"),
    ("1/2", "one half"),
    ("Henry VIII", "henry the eighth"),
    ("No. 7", "number seven"),
    ("e.g. this", "for example this"),
    ("Fifth Ave.", "fifth avenue."),
])
def test_easily_misread_inputs_have_no_digits_or_dropped_words(text, reading):
    from utils.char_tokenizer import CharTokenizer

    tok = CharTokenizer()
    assert normalize(text) == reading
    assert tok.unknown_chars(text) == []


def test_output_has_no_digits_and_keeps_unverbalisable_characters():
    for cases in CASES.values():
        for text, _ in cases:
            assert not any(c.isdigit() for c in normalize(text)), text
    assert normalize("5 * 3") == "five * three"  # kept, so the tokenizer counts it


def test_deterministic_across_processes():
    texts = [t for cases in CASES.values() for t, _ in cases]
    here = [normalize(t) for t in texts]
    code = ("import json, sys; sys.path.insert(0, '.');"
            "from utils.text_normalizer import normalize;"
            "print(json.dumps([normalize(t) for t in json.load(sys.stdin)]))")
    import json

    other = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                           check=True, cwd=ROOT)
    assert json.loads(other.stdout) == here


def test_idempotent_on_its_own_output():
    for cases in CASES.values():
        for _, expected in cases:
            if "'" in expected or "*" in expected or " v. " in expected:
                continue  # kept characters, and a kept initial "v." that lower case makes "versus"
            assert normalize(expected) == expected, expected


def test_verbalises_tells_reading_out_from_case_and_spacing():
    from utils.text_normalizer import plain, verbalises

    assert plain("  Café  NAÏVE ") == "cafe naive"
    assert not verbalises("Hello,   World!")
    assert verbalises("Fish & chips @ noon") and verbalises("It is 5 km.")


def test_version_is_a_non_empty_string():
    assert isinstance(NORMALIZER_VERSION, str) and NORMALIZER_VERSION


# --------------------------------------------------------------------------------------------
# The per-class table
# --------------------------------------------------------------------------------------------

def _load_function(spec: str) -> Callable[[str], str]:
    path, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location("normaliser_under_test", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def table(fn: Callable[[str], str]) -> str:
    rows = ["| class | cases | pass | rate |", "|---|---:|---:|---:|"]
    total = passed = 0
    for cls, cases in CASES.items():
        ok = len(cases) - len(misread(fn, cases))
        rows.append(f"| {cls} | {len(cases)} | {ok} | {100 * ok / len(cases):.0f} % |")
        total, passed = total + len(cases), passed + ok
    rows.append(f"| **all** | {total} | {passed} | {100 * passed / total:.1f} % |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Per-class pass table of a normaliser on the project's cases.")
    parser.add_argument("--against", help="FILE.py:FUNCTION to measure instead of utils.text_normalizer.normalize")
    parser.add_argument("--failures", action="store_true", help="also list the misread inputs")
    args = parser.parse_args()
    fn = _load_function(args.against) if args.against else normalize
    print(table(fn))
    if args.failures:
        for cls, cases in CASES.items():
            for line in misread(fn, cases):
                print(f"{cls}: {line}")
