"""How far apart the speaker-similarity score puts voices: the figures in the README.

    python bench/speaker_similarity.py                          # scripts/sentences/eval.txt, 4 voices
    python bench/speaker_similarity.py --voices joe espeak:en-us+f3 --work_dir /tmp/spk

Every sentence is rendered offline by ``scripts/make_corpus.py`` in each voice (the first is the
reference voice). Reported, with ``utils/speaker_similarity.py``:

* the reference voice against itself on *other* sentences (every pair i != j): the score a
  perfect clone of the speaker would get, since a model never reproduces the reference clip;
* every other voice against the reference voice, on the *same* sentence;
* white noise of the same length against the reference voice.

espeak-ng voices need ``apt-get install espeak-ng``; they are left out with a note without it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.make_corpus import make_corpus, parse_voice, read_sentences  # noqa: E402
from utils.audio import load_wav  # noqa: E402
from utils.speaker_similarity import SpeakerEncoder, cosine_similarity  # noqa: E402

RATE = 22050


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", default=os.path.join("scripts", "sentences", "eval.txt"))
    p.add_argument("--voices", nargs="+", default=["joe", "joe,pitch=1.2", "espeak:en-us", "espeak:en-us+f3"],
                   help="make_corpus.py --voice specs; the first is the reference")
    p.add_argument("--work_dir", default=None, help="keep the rendered clips here (default: a temporary dir)")
    args = p.parse_args()

    voices = [v for v in args.voices if not v.startswith("espeak:") or shutil.which("espeak-ng")]
    for v in sorted(set(args.voices) - set(voices)):
        print(f"note: {v} left out (espeak-ng is not installed)")
    sentences = read_sentences(args.sentences)
    work = args.work_dir or tempfile.mkdtemp(prefix="spk_bench_")
    make_corpus(sentences, work, voices=voices)
    names = [parse_voice(v).name for v in voices]

    def clips(name: str) -> list[np.ndarray]:
        folder = os.path.join(work, name) if len(voices) > 1 else work  # one voice: LJSpeech layout
        wavs = sorted(os.listdir(os.path.join(folder, "wavs")))
        return [load_wav(os.path.join(folder, "wavs", w), RATE).numpy().reshape(-1) for w in wavs]

    enc = SpeakerEncoder()
    t0 = time.perf_counter()
    audio = {n: clips(n) for n in names}
    emb = {n: [enc.embed(w, RATE) for w in ws] for n, ws in audio.items()}
    seconds = sum(len(w) for ws in audio.values() for w in ws) / RATE
    spent = time.perf_counter() - t0
    ref = names[0]
    rng = np.random.default_rng(0)
    noise = [enc.embed((0.1 * rng.standard_normal(len(w))).astype(np.float32), RATE) for w in audio[ref]]

    def row(label: str, scores: list[float]) -> str:
        return f"| {label} | {len(scores)} | {np.mean(scores):.3f} | {np.min(scores):.3f} | {np.max(scores):.3f} |"

    print(f"\n{len(sentences)} sentences of {args.sentences}, reference voice {voices[0]}")
    print("| against the reference voice | pairs | mean | min | max |\n|---|---|---|---|---|")
    same = [cosine_similarity(emb[ref][i], emb[ref][j]) for i, j in itertools.combinations(range(len(sentences)), 2)]
    print(row(f"{voices[0]}, other sentences", same))
    for v, n in zip(voices[1:], names[1:]):
        print(row(f"{v}, same sentence", [cosine_similarity(a, b) for a, b in zip(emb[n], emb[ref])]))
    print(row("white noise, same length", [cosine_similarity(a, b) for a, b in zip(noise, emb[ref])]))
    print(f"\nembedding speed: {seconds:.0f} s of audio in {spent:.1f} s (CPU, including loading the clips)")


if __name__ == "__main__":
    main()
