"""Natural English training text from WordNet's usage examples, offline.

    apt-get install wordnet-base                        # Debian: /usr/share/wordnet/data.*
    python scripts/sentences/wordnet.py                 # rewrites wordnet_train*.txt and wordnet_eval.txt
    python scripts/sentences/wordnet.py --check         # exit 1 if the committed files are stale

Source: the quoted usage examples in the glosses of WordNet 3.0 (Princeton University), as Debian's
``wordnet-base`` package ships them. About 42,000 distinct examples of 3-30 words, written by
lexicographers to show a word in use: broad vocabulary, names, numbers, some questions, lengths from
a phrase to a long sentence. Licence: the WordNet 3.0 licence (permissive; it asks that its notice,
below, travel with every copy, so it heads each generated file).

The training list is drawn with a fixed seed, weighted towards longer examples (most examples are
phrases of 3-8 words; a corpus of only those would never teach a long utterance). The in-domain
held-out list is drawn from the remaining examples, so it never repeats a training sentence. Long
examples are rare (about 800 of 15+ words), so a second training list takes every one of them that
the first two lists did not (drawn after both, so adding it changed neither). The
natural held-out and long-sentence lists (``natural_eval.txt``, ``long_eval.txt``) are a different
source, written by hand for this project.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
WORDNET_DIR = "/usr/share/wordnet"
TRAIN_FILE = os.path.join(HERE, "wordnet_train.txt")
EVAL_FILE = os.path.join(HERE, "wordnet_eval.txt")
LONG_FILE = os.path.join(HERE, "wordnet_train_long.txt")
SEED = 20261203
N_TRAIN = 4200
N_EVAL = 60
MIN_WORDS, MAX_WORDS = 3, 30
LONG_WORDS = 15  # every example this long that neither list took goes to the second training list

NOTICE = """\
# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
# THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
# WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO
# REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
# OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS,
# COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
"""

# Examples a TTS voice cannot read as written: quoted words (`word'), brackets, abbreviations with dots,
# symbols the normaliser has no reading for.
_REJECT = re.compile(r"[`\"()\[\]{}<>_/\\|*#@~^=+&%$]|\.\.|\b[A-Za-z]\.[A-Za-z]|'(?![a-z])|(?<![A-Za-z])'")
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:?!'-]+$")  # an apostrophe only inside a word (don't, John's)


def read_examples(wordnet_dir: str = WORDNET_DIR) -> list[str]:
    """Every distinct quoted usage example of the four data files, in sorted order."""
    examples = set()
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(wordnet_dir, f"data.{pos}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found; install WordNet with `apt-get install wordnet-base`")
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # the licence header, or no gloss
                    continue
                for quote in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    examples.add(" ".join(quote.split()))
    return sorted(examples)


def usable(text: str) -> bool:
    """An example a reader can say as written, of MIN_WORDS..MAX_WORDS words."""
    words = text.split()
    return MIN_WORDS <= len(words) <= MAX_WORDS and bool(_ALLOWED.match(text)) and not _REJECT.search(text)


def as_sentence(text: str) -> str:
    """Capitalise and close with a full stop, as the voice reads a sentence (questions keep their mark)."""
    text = text.strip(" ,;:-")
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


def split_examples(examples: list[str], n_train: int = N_TRAIN, n_eval: int = N_EVAL,
                   seed: int = SEED) -> tuple[list[str], list[str]]:
    """Draw the training list (weighted towards long examples) and a disjoint held-out list."""
    pool = [as_sentence(e) for e in examples if usable(e)]
    pool = sorted(set(pool))
    rng = random.Random(seed)
    # Weight ~ words**1.5: a 20-word example is ~30x as likely as a 3-word one, so the list covers
    # every length rather than mirroring WordNet's mass of short phrases.
    keyed = sorted(pool, key=lambda s: rng.random() ** (1.0 / len(s.split()) ** 1.5), reverse=True)
    train = keyed[:n_train]
    rest = keyed[n_train:]
    rng.shuffle(rest)
    held_out = rest[:n_eval]
    if set(train) & set(held_out):
        raise AssertionError("held-out sentences repeat training sentences")
    return train, held_out


def long_examples(examples: list[str], taken: set[str]) -> list[str]:
    """Every usable example of ``LONG_WORDS``+ words not in ``taken``, in sorted order."""
    pool = sorted({as_sentence(e) for e in examples if usable(e)} - taken)
    return [s for s in pool if len(s.split()) >= LONG_WORDS]


def _render(sentences: list[str], what: str) -> str:
    head = (f"# {what}: usage examples of WordNet 3.0 (Debian wordnet-base), drawn by "
            f"scripts/sentences/wordnet.py (seed {SEED}).\n# Do not edit by hand: regenerate.\n")
    return head + NOTICE + "\n".join(sentences) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the committed lists are not what this makes")
    p.add_argument("--wordnet_dir", default=WORDNET_DIR)
    args = p.parse_args(argv)
    examples = read_examples(args.wordnet_dir)
    train, held_out = split_examples(examples)
    long = long_examples(examples, set(train) | set(held_out))
    files = {TRAIN_FILE: _render(train, "Training sentences"), EVAL_FILE: _render(held_out, "In-domain held-out"),
             LONG_FILE: _render(long, f"Training sentences of {LONG_WORDS}+ words (the rest of them)")}
    if args.check:
        stale = [path for path, text in files.items()
                 if not os.path.isfile(path) or open(path, encoding="utf-8").read() != text]
        for path in stale:
            print(f"{path}: stale; run python scripts/sentences/wordnet.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    words = [len(s.split()) for s in train]
    print(f"{TRAIN_FILE}: {len(train)} sentences, {min(words)}-{max(words)} words (mean {sum(words)/len(words):.1f})")
    print(f"{EVAL_FILE}: {len(held_out)} sentences")
    print(f"{LONG_FILE}: {len(long)} sentences")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
