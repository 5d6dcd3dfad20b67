"""Synthesise codec tokens (and, with the front ends, audio) from a trained Echolancer checkpoint.

    python infer.py --checkpoint outputs/run/ckpt --text "Hello there." --output_dir out
    python infer.py --checkpoint model.pt --text_file sentences.txt --batch_size 8 --temperature 0.8 --seed 1
    python infer.py --checkpoint outputs/run/ckpt --text "Hello." --bert_model ./minilm \\
        --pre_encoder_dir ./pre_encoder --istftnet_dir ./istftnet       # also writes 16-bit WAVs
    python infer.py ... --pre_encoder_dir ./pre_encoder --istftnet_dir ./istftnet --stream --chunk_tokens 16

``--checkpoint`` is a checkpoint file or a ``ckpt/`` directory (its newest file); the checkpoint
alone rebuilds the model, tokenizer and configs (``--model_config`` is only needed for a raw
state dict). Synthesis goes through ``pipeline.py``, the one text -> BERT -> Echolancer ->
pre-encoder -> vocoder chain shared with training and evaluation.

Per sentence ``utt_NNNN`` it writes, under ``--output_dir``: ``utt_NNNN.tokens.npy/.pt`` (codec
tokens, length L), ``utt_NNNN.gate.npy/.pt`` (stop probability per step), ``utt_NNNN.json``
(text, normalised text, speaker, sampling settings, length, whether max_length was hit, time,
tokens/s) and, when a pre-encoder is given, ``utt_NNNN.wav``.

``--stream`` speaks each sentence through ``Synthesizer.stream`` (one at a time): audio comes a chunk
every ``--chunk_tokens`` codec tokens while decoding goes on; the files are the same (the WAV is the
chunks joined: with ISTFTNet, one-shot synthesis of the same tokens), the JSON adds ``stream``
(``first_audio_s``, ``chunks``) and the time to first audio is printed.

Batch synthesis from a file: ``--text_file lines.txt`` speaks every non-empty line (``utt_0000`` is
the first non-empty line, ``utt_0001`` the next, ...); ``--text_file lines.jsonl`` takes one JSON
object a line, ``{"text": "...", "speaker": 2, "id": "intro"}``: ``text`` required, ``speaker`` (an
int id, default ``--speaker_id``) and ``id`` or ``name`` (the file stem, default ``utt_NNNN``)
optional. The whole file is checked before any synthesis; a file-mode run never replaces files
already in ``--output_dir`` unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from model.pretrained import LoadedModel, load_echolancer
from pipeline import build_synthesizer
from training.command import bad_input_errors
from utils.cli import run_command
from utils.device import pick_device

PROG = "infer.py"  # how its error lines begin
DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."  # when neither --text nor --text_file is given
DEFAULT_CHUNK_TOKENS = 32  # --stream without --chunk_tokens: about 0.37 s of audio per chunk
JSONL_KEYS = ("text", "speaker", "id", "name")  # the keys a --text_file .jsonl line may have
# A file stem from a JSONL id: no path separators, no hidden files, nothing a shell needs quoting for.
STEM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
OUTPUT_SUFFIXES = (".tokens.npy", ".tokens.pt", ".gate.npy", ".gate.pt", ".json", ".wav")  # per sentence


class InferError(ValueError):
    """A user input infer.py cannot work with (the message says which and why)."""


@dataclass
class Item:
    """One sentence to speak, and where it came from."""

    text: str
    where: str  # for messages: "--text #1" or "FILE line N"
    stem: str  # its output files are <stem>.json, <stem>.wav, ...
    speaker: Optional[int] = None  # None: --speaker_id
    line: Optional[int] = None  # its line in --text_file


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="inference export (export/echolancer.pt or its directory), a checkpoint file, or a ckpt/ "
                        "directory (newest file)")
    p.add_argument("--model_config", default=None, help="model YAML; only for raw state dicts")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", action="append",
                     help=f"a sentence to speak (repeat for several); default: {DEFAULT_TEXT!r}")
    src.add_argument("--text_file",
                     help="UTF-8 file, one sentence per line (blank lines skipped); a .jsonl file has one JSON "
                          "object a line: text (required), speaker (int id), id or name (the output file stem)")
    p.add_argument("--speaker_id", type=int, default=0, help="speaker id of a multi-speaker model")
    p.add_argument("--reference_tokens", default=None,
                   help="vq_token_mode models: a reference utterance's codec tokens (.npy or .pt, 1-D)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=0, help="0 = off")
    p.add_argument("--top_p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--gate_threshold", type=float, default=0.5, help="stop-head models stop above this")
    p.add_argument("--max_length", type=int, default=1000, help="most codec tokens per sentence (86.13 = 1 s)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--compile", action="store_true",
                   help="CUDA: replay the one-step decode as a CUDA graph; CPU: compile it with Inductor "
                        "(tens of seconds once, then faster per step)")
    p.add_argument("--batch_size", type=int, default=8, help="sentences generated together")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0 = torch default); 1 is often fastest for small batches on a busy CPU")
    p.add_argument("--output_dir", default="outputs/infer")
    p.add_argument("--overwrite", action="store_true",
                   help="--text_file runs: replace files of the same names already in --output_dir (refused otherwise)")
    p.add_argument("--bert_model", default=None, help="hub name or local dir of the BERT emotion front end")
    p.add_argument("--pre_encoder_dir", default=None, help="exported pre-encoder (codec tokens -> mel)")
    p.add_argument("--istftnet_dir", default=None, help="exported ISTFTNet vocoder (mel -> waveform)")
    p.add_argument("--stream", action="store_true",
                   help="synthesise each sentence as a stream of audio chunks (batch 1; needs --pre_encoder_dir): the "
                        "same files, and the time to first audio is printed")
    p.add_argument("--chunk_tokens", type=int, default=None,
                   help=f"--stream: codec tokens decoded between audio chunks (default {DEFAULT_CHUNK_TOKENS})")
    return p.parse_args(argv)


def check_stream_args(args: argparse.Namespace) -> None:
    """--stream and --chunk_tokens: usable values, or one clear error (before the model loads)."""
    if args.chunk_tokens is not None and not args.stream:
        raise InferError(f"--chunk_tokens {args.chunk_tokens} is for --stream runs; add --stream (or leave it out)")
    if not args.stream:
        return
    if args.chunk_tokens is None:
        args.chunk_tokens = DEFAULT_CHUNK_TOKENS
    if args.chunk_tokens < 1:
        raise InferError(f"--chunk_tokens must be >= 1 (codec tokens per audio chunk), got {args.chunk_tokens}")
    if args.pre_encoder_dir is None:
        raise InferError("--stream needs --pre_encoder_dir: it streams audio, and codec tokens become audio through "
                         "the pre-encoder (and --istftnet_dir, else Griffin-Lim)")


def read_items(args: argparse.Namespace) -> list[Item]:
    """The sentences to speak, each with its file stem and speaker; a bad line fails here, before the model loads."""
    if args.text is None and args.text_file is None:
        args.text = [DEFAULT_TEXT]
    if args.text is not None:
        return [Item(t.strip(), f"--text #{i + 1}", f"utt_{i:04d}") for i, t in enumerate(args.text)]
    path = args.text_file
    if not os.path.isfile(path):
        raise InferError(f"--text_file {path}: file not found")
    with open(path, encoding="utf-8") as f:
        lines = [(n + 1, line.strip()) for n, line in enumerate(f)]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        raise InferError(f"--text_file {path}: no text to speak (only blank lines)")
    if path.lower().endswith(".jsonl"):
        items = [_jsonl_item(path, n, line, i) for i, (n, line) in enumerate(lines)]
    else:
        items = [Item(line, f"{path} line {n}", f"utt_{i:04d}", line=n) for i, (n, line) in enumerate(lines)]
    seen: dict[str, int] = {}
    for it in items:
        if it.stem in seen:
            raise InferError(f"{it.where}: file name {it.stem!r} is already taken by line {seen[it.stem]}; "
                             "give every line its own id (or leave id out: utt_NNNN by position)")
        seen[it.stem] = it.line
    return items


def _jsonl_item(path: str, n: int, line: str, index: int) -> Item:
    where = f"{path} line {n}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InferError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line is one object like "
                         '{"text": "Hello.", "speaker": 0, "id": "hello"}') from None
    if not isinstance(obj, dict):
        raise InferError(f"{where}: expected a JSON object, got {type(obj).__name__}; allowed keys: "
                         f"{', '.join(JSONL_KEYS)}")
    unknown = sorted(set(obj) - set(JSONL_KEYS))
    if unknown:
        raise InferError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: "
                         f"{', '.join(JSONL_KEYS)} (text required)")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InferError(f"{where}: 'text' is required and must be a non-empty string, got {text!r}")
    speaker = obj.get("speaker")
    if speaker is not None and (isinstance(speaker, bool) or not isinstance(speaker, int)):
        raise InferError(f"{where}: 'speaker' must be an integer speaker id, got {speaker!r}")
    if "id" in obj and "name" in obj:
        raise InferError(f"{where}: give 'id' or 'name', not both (they are the same thing: the file name)")
    name = obj.get("id", obj.get("name"))
    if name is None:
        stem = f"utt_{index:04d}"
    else:
        stem = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
        if not STEM_RE.fullmatch(stem):
            raise InferError(f"{where}: id/name {name!r} cannot be a file name: use 1-100 letters, digits, '.', "
                             "'_' or '-', starting with a letter or digit")
    return Item(text.strip(), where, stem, speaker, n)


def check_output_clashes(out_dir: str, items: list[Item]) -> None:
    """Refuse to replace what an earlier run wrote (--text_file runs without --overwrite)."""
    if not os.path.isdir(out_dir):
        return
    present = set(os.listdir(out_dir))
    clashes = [it.stem + suffix for it in items for suffix in OUTPUT_SUFFIXES if it.stem + suffix in present]
    if clashes:
        more = f" and {len(clashes) - 1} more file(s)" if len(clashes) > 1 else ""
        raise InferError(f"--output_dir {out_dir} already has {clashes[0]}{more} of these sentences; pass "
                         "--overwrite to replace them, or choose another --output_dir")


def check_texts(loaded: LoadedModel, items: list[Item]) -> None:
    """Fail before any model work when a sentence cannot be spoken."""
    tok = loaded.tokenizer
    for it in items:
        ids = tok.encode(it.text)
        if not tok.is_speakable(ids):
            raise InferError(
                f"{it.where}: {it.text!r} has no speakable characters after normalisation "
                f"({tok.normalize_text(it.text)!r}); the tokenizer speaks letters a-z"
            )
        if len(ids) > loaded.model_config.dataset.max_text_len:
            print(f"warning: {it.where} has {len(ids)} characters, more than the "
                  f"{loaded.model_config.dataset.max_text_len} the model was trained on; split long sentences for "
                  "best results", file=sys.stderr)


def check_speaker(loaded: LoadedModel, speaker_id: int, where: str = "--speaker_id") -> Optional[int]:
    """The speaker id to pass (None for single-speaker models), or a clear error naming ``where``."""
    m = loaded.model_config.model
    if m.multi_speaker:
        if not 0 <= speaker_id < m.n_speaker:
            subject = "--speaker_id" if where == "--speaker_id" else f"{where}: speaker"
            raise InferError(
                f"{subject} {speaker_id} is not a speaker of this model: allowed ids are 0..{m.n_speaker - 1} "
                f"(model.n_speaker = {m.n_speaker})"
            )
        return speaker_id
    if speaker_id != 0:
        subject = "--speaker_id" if where == "--speaker_id" else f"{where}: speaker"
        raise InferError(f"{subject} {speaker_id}: this model is single-speaker (model.multi_speaker = false); "
                         "use 0")
    return None


def load_reference(loaded: LoadedModel, path: Optional[str], device: torch.device) -> Optional[torch.Tensor]:
    m = loaded.model_config.model
    if not m.vq_token_mode:
        if path is not None:
            raise InferError("--reference_tokens is only for vq_token_mode models; this one is not")
        return None
    if path is None:
        raise InferError("this model is in vq_token_mode: pass a reference utterance with --reference_tokens")
    ref = torch.from_numpy(np.load(path)) if path.endswith(".npy") else torch.load(path, map_location="cpu", weights_only=True)
    ref = torch.as_tensor(ref).long().reshape(-1)
    if ref.numel() == 0 or bool((ref < 0).any() | (ref >= m.vq_vocab_size).any()):
        raise InferError(f"--reference_tokens {path}: need a non-empty 1-D tensor of ids in [0, {m.vq_vocab_size})")
    return ref.to(device)


def save_wav(path: str, wav: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf  # imported here: token-only runs do not need it

    sf.write(path, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")


def write_utterance(out_dir: str, stem: str, utt, length: int, meta: dict) -> dict:
    """Write one sentence's files; returns the metadata written."""
    tokens = torch.as_tensor(utt.tokens).detach().cpu().long()[:length]
    gate = torch.as_tensor(utt.gate).detach().cpu().float()
    files = {}
    for name, tensor in (("tokens", tokens), ("gate", gate)):
        np.save(os.path.join(out_dir, f"{stem}.{name}.npy"), tensor.numpy())
        torch.save(tensor.clone(), os.path.join(out_dir, f"{stem}.{name}.pt"))
        files[name] = [f"{stem}.{name}.npy", f"{stem}.{name}.pt"]
    if utt.wav is not None:
        save_wav(os.path.join(out_dir, f"{stem}.wav"), utt.wav, utt.sample_rate)
        files["wav"] = f"{stem}.wav"
    meta = {**meta, "files": files}
    with open(os.path.join(out_dir, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    return meta


def check_run_args(args: argparse.Namespace, items: list[Item]) -> None:
    """Reject flags that cannot run together, and outputs that would overwrite others, before loading."""
    if args.batch_size < 1:
        raise InferError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.istftnet_dir is not None and args.pre_encoder_dir is None:
        raise InferError("--istftnet_dir needs --pre_encoder_dir: the vocoder speaks mels, the model codec tokens")
    check_stream_args(args)
    if args.text_file is not None and not args.overwrite:
        check_output_clashes(args.output_dir, items)


def _generate(synth, args: argparse.Namespace, texts: list[str], spk: Optional[list], sampling: dict,
              reference: Optional[torch.Tensor], generator: torch.Generator, device: torch.device
              ) -> tuple[list, Optional[dict], float]:
    """Synthesise one batch (or stream one sentence), timed with the device synchronised.

    Args:
        reference: (N,) long reference codec tokens, or None.

    Returns:
        the utterances, the stream's timings (None unless ``--stream``) and the seconds spent.
    """
    gen_kwargs = {k: sampling[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty",
                                             "gate_threshold", "max_length", "compile")}
    if reference is not None:
        gen_kwargs["vq_tokens"] = reference[None].expand(len(texts), -1)
        gen_kwargs["vq_token_lens"] = torch.full((len(texts),), reference.numel(), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    if args.stream:
        utts, streamed = stream_one(synth, texts[0], None if spk is None else spk[0], args.chunk_tokens,
                                    generator, gen_kwargs)
    else:
        utts, streamed = synth.synthesize(texts, spk, generator=generator, **gen_kwargs), None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return utts, streamed, time.perf_counter() - t0


def _utterance_meta(index: int, utt, length: int, loaded: LoadedModel, sampling: dict, elapsed: float,
                    batch_tokens: int, tokens_per_second_of_audio: float) -> dict:
    """The metadata written next to one sentence's audio: text, checkpoint, sampling, timings."""
    return {
        "index": index,
        "text": utt.text,
        "normalized_text": utt.normalized_text,
        "speaker": utt.speaker,
        "checkpoint": loaded.path,
        "checkpoint_step": loaded.step,
        "sampling": sampling,
        "length": length,
        "audio_seconds": round(length / tokens_per_second_of_audio, 3),
        "hit_max_length": bool(utt.hit_max_length),
        "batch_time_s": round(elapsed, 4),
        "batch_tokens_per_s": round(batch_tokens / elapsed, 2) if elapsed > 0 else None,
        "real_time_factor": round(elapsed / max(batch_tokens / tokens_per_second_of_audio, 1e-9), 4),
        "sample_rate": utt.sample_rate if utt.wav is not None else None,
        "vocoder": utt.vocoder,
    }


def _print_utterance(item: Item, utt, length: int, meta: dict, streamed: Optional[dict], elapsed: float,
                     chunk_tokens: int) -> None:
    """One sentence's lines: tokens and seconds, what the normaliser made of it, stream timings."""
    flag = "  (hit max_length: no stop)" if meta["hit_max_length"] else ""
    print(f"{item.stem}: {length} tokens ({meta['audio_seconds']} s){flag}  {utt.text[:60]!r}")
    print(f"  spoken as: {utt.normalized_text!r}")  # what the normaliser made of it: the model reads this
    if streamed is not None:
        first = streamed["first_audio_s"]
        print(f"  streamed: first audio after {first:.3f} s, {streamed['chunks']} chunk(s) of "
              f"{chunk_tokens} tokens, whole sentence {elapsed:.3f} s" if first is not None
              else "  streamed: no audio (the sentence stopped at once)")


def run(args: argparse.Namespace) -> list[dict]:
    """Everything after argument parsing; returns the metadata of each sentence."""
    items = read_items(args)
    check_run_args(args, items)
    device = pick_device(args.device)  # no silent CPU run when CUDA was asked for or a GPU is present
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    loaded = load_echolancer(args.checkpoint, device=device, model_config_path=args.model_config)
    default_speaker = check_speaker(loaded, args.speaker_id)
    speakers = [default_speaker if it.speaker is None else check_speaker(loaded, it.speaker, it.where)
                for it in items]
    check_texts(loaded, items)
    reference = load_reference(loaded, args.reference_tokens, device)

    synth = build_synthesizer(
        loaded.model, loaded.tokenizer, bert_model=args.bert_model, pre_encoder_dir=args.pre_encoder_dir,
        istftnet_dir=args.istftnet_dir, device=device, audio=loaded.model_config.preprocessing.audio,
    )
    sampling = {
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty, "gate_threshold": args.gate_threshold,
        "max_length": args.max_length, "seed": args.seed, "batch_size": args.batch_size, "compile": args.compile,
    }
    generator = torch.Generator(device=device).manual_seed(args.seed)
    if args.stream:
        args.batch_size = 1  # a stream is one sentence
        sampling.update(batch_size=1, stream=True, chunk_tokens=args.chunk_tokens)
        synth.stream_reach()  # measured once, before any sentence's clock starts
    audio = loaded.model_config.preprocessing.audio
    tokens_per_second_of_audio = audio.sampling_rate / audio.hop_length
    os.makedirs(args.output_dir, exist_ok=True)

    metas: list[dict] = []
    for start in range(0, len(items), args.batch_size):
        batch = items[start : start + args.batch_size]
        spk = None if default_speaker is None else speakers[start : start + args.batch_size]
        utts, streamed, elapsed = _generate(synth, args, [it.text for it in batch], spk, sampling, reference,
                                            generator, device)
        # Codec tokens are < codebook_size; PAD (if the pipeline keeps it) only follows them.
        lengths = [int((torch.as_tensor(u.tokens) < loaded.model.codebook_size).sum()) for u in utts]
        batch_tokens = sum(lengths)
        for i, (item, utt, length) in enumerate(zip(batch, utts, lengths)):
            meta = _utterance_meta(start + i, utt, length, loaded, sampling, elapsed, batch_tokens,
                                   tokens_per_second_of_audio)
            if streamed is not None:
                meta["stream"] = streamed
            if item.line is not None:
                meta["source"] = {"file": args.text_file, "line": item.line}
            metas.append(write_utterance(args.output_dir, item.stem, utt, length, meta))
            _print_utterance(item, utt, length, meta, streamed, elapsed, args.chunk_tokens)
        print(f"batch of {len(batch)}: {batch_tokens} tokens in {elapsed:.2f} s = {batch_tokens / elapsed:.1f} tokens/s")
    print(f"wrote {len(metas)} sentence(s) to {args.output_dir}")
    return metas


def stream_one(synth, text: str, speaker: Optional[int], chunk_tokens: int, generator: torch.Generator,
               gen_kwargs: dict) -> tuple[list, dict]:
    """Speak one sentence through ``Synthesizer.stream``; its utterance (as ``synthesize`` gives one,
    the wav joined from the chunks) and what the stream did (time to first audio, chunks)."""
    kwargs = {k: v for k, v in gen_kwargs.items() if k not in ("vq_tokens", "vq_token_lens")}
    if "vq_tokens" in gen_kwargs:
        kwargs.update(vq_tokens=gen_kwargs["vq_tokens"][:1], vq_token_lens=gen_kwargs["vq_token_lens"][:1])
    stream = synth.stream(text, speaker, chunk_tokens=chunk_tokens, generator=generator, **kwargs)
    for _ in stream:  # a player would play each chunk here; the files get the joined audio
        pass
    first = None if stream.first_audio_s is None else round(stream.first_audio_s, 4)
    return [stream.utterance], {"chunk_tokens": chunk_tokens, "first_audio_s": first,
                                "chunks": len(stream.chunk_sizes)}


def main(argv: Optional[list[str]] = None) -> int:
    """The command: 0 done; 2 and one line ``infer.py: error: ...`` on stderr for bad input.

    A stage that fails unexpectedly (a bug) keeps its traceback. ``run`` returns the metadata."""
    args = parse_args(argv)
    outcome = run_command(PROG, lambda: run(args), bad_input_errors() + (InferError,))
    return outcome if isinstance(outcome, int) else 0


if __name__ == "__main__":
    sys.exit(main())
