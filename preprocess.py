"""Recordings -> Echolancer training files, with a QA report.

    python preprocess.py --input_dir DATASET --output_dir OUT --pre_encoder_dir DIR \
        [--config config/model.yaml] [--bert_model NAME_OR_PATH] [--val_fraction 0.02] [--workers N]

Inputs (``--layout auto`` tells them apart):

* ``ljspeech``: ``DATASET/wavs/<id>.wav`` and ``DATASET/metadata.csv`` with rows
  ``id|text|normalized text`` (the normalised column may be empty; then ``text`` is used).
* ``speaker_column``: the same, with a speaker column: ``id|speaker|text|normalized text``.
* ``speaker_folders``: one folder per speaker, each in the LJSpeech layout
  (``DATASET/<speaker>/wavs``, ``DATASET/<speaker>/metadata.csv``).

Outputs:

* ``OUT/train/*.pt``, ``OUT/val/*.pt``: one dict per utterance, exactly the dataset format:
  ``text`` (1-D long, tokenizer ids), ``mel`` (1-D long pre-encoder tokens in
  ``[0, codebook_size)``), ``speaker`` (int), and ``emotion`` (1-D float32 BERT sentence vector)
  when ``--bert_model`` is given.
* ``OUT/speakers.json`` (speaker name -> id; ids never change on a rerun), ``OUT/tokenizer.json``,
  ``OUT/manifest.jsonl`` (one line per finished utterance), ``OUT/qa_report.json``.

Audio of any rate and channel count is converted to the model's audio settings (torchaudio
resampling, channels averaged) and turned into log-mels by ``utils.audio.mel_spectrogram``, the
function the pre-encoder and vocoder were trained with. Silence trimming is off by default, so a
clip of N samples gives N // hop tokens.

The split is deterministic: utterances are ordered by a hash of their key and the first
``val_fraction`` of them (at least one) go to ``val``. Every ``.pt`` carries a ``fingerprint`` of
its inputs (the text and its normalised ids, the audio file's bytes, the speaker id, and the
settings: audio, trimming, the pre-encoder's weights, the BERT model). Reruns keep a file whose
fingerprint still matches and never rewrite it; they redo one whose text, audio or settings changed
and replace one that cannot be read (files are written under a temporary name and renamed, so an
interrupted run leaves no half-written file). Per-file problems (missing or unreadable WAV,
empty or unspeakable text, a CSV row with the wrong number of fields) are reported with the file
and line, counted, and the run ends with a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.corpus import LAYOUTS, Problem, Row, discover
from data.qa_report import build_report, print_report
from training.command import bad_input_errors
from utils.audio import check_same_audio, load_wav, mel_spectrogram
from utils.char_tokenizer import CharTokenizer
from utils.cli import run_command
from utils.config import AudioConfig, ConfigError, load_config
from utils.device import pick_device
from utils.phonemes import make_tokenizer
from utils.text_normalizer import NORMALIZER_VERSION, verbalises


def split_keys(keys: list[str], val_fraction: float) -> set[str]:
    """The validation keys: the first ``val_fraction`` (at least one) in hash order.

    Hash order does not depend on listing order, so the same corpus always splits the same way.
    """
    if val_fraction <= 0 or len(keys) < 2:
        return set()
    n_val = max(1, round(len(keys) * val_fraction))
    ordered = sorted(keys, key=lambda k: hashlib.sha1(k.encode("utf-8")).hexdigest())
    return set(ordered[:n_val])


def speaker_ids(out_dir: str, names: list[str]) -> dict[str, int]:
    """Speaker name -> id, extending ``OUT/speakers.json`` so ids of finished files stay valid."""
    path = os.path.join(out_dir, "speakers.json")
    mapping: dict[str, int] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            mapping = {str(k): int(v) for k, v in json.load(f).items()}
    for name in sorted(set(names)):
        if name not in mapping:
            mapping[name] = len(mapping)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(mapping, f, indent=1)
    return mapping


# --------------------------------------------------------------------------------------------
# Audio: loading, optional trimming, mels (runs in DataLoader workers)
# --------------------------------------------------------------------------------------------


def trim_silence(wav: torch.Tensor, audio: AudioConfig, top_db: float = 40.0) -> torch.Tensor:
    """Cut leading and trailing frames quieter than ``top_db`` below the loudest frame.

    Frame energy is the RMS over windows of ``win_length`` samples taken every ``hop_length``.
    """
    if wav.numel() < audio.win_length:
        return wav
    frames = wav.unfold(0, audio.win_length, audio.hop_length)
    db = 20.0 * torch.log10(frames.pow(2).mean(dim=1).sqrt().clamp(min=1.0e-8))
    loud = torch.nonzero(db > db.max() - top_db).flatten()
    start = int(loud[0]) * audio.hop_length
    end = min(wav.numel(), int(loud[-1]) * audio.hop_length + audio.win_length)
    return wav[start:end]


class AudioRows(Dataset):
    """Loads each row's WAV and computes its log-mel; a failure becomes an ``error`` string."""

    def __init__(self, rows: list[Row], audio: AudioConfig, trim: bool) -> None:
        self.rows, self.audio, self.trim = rows, audio, trim

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        if not os.path.isfile(row.wav_path):
            return {"index": i, "kind": "missing_wav", "error": f"{row.wav_path}: file not found"}
        try:
            wav = load_wav(row.wav_path, self.audio.sampling_rate)
            if self.trim:
                wav = trim_silence(wav, self.audio)
            mel = mel_spectrogram(wav, self.audio)[0].T.contiguous()  # (T, n_mels)
        except Exception as e:  # corrupt headers, unsupported formats, clips too short for one frame
            return {"index": i, "kind": "unreadable_wav", "error": f"{row.wav_path}: {type(e).__name__}: {e}"}
        return {"index": i, "mel": mel, "seconds": wav.numel() / self.audio.sampling_rate}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers each do one clip at a time; the main process encodes


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def screen_texts(rows: list[Row], tokenizer: CharTokenizer, problems: list[Problem]
                 ) -> tuple[list[Row], dict[str, list[int]], Counter]:
    """Tokenise every row; empty or unspeakable texts become problems.

    Returns:
        the rows to keep, their token ids by key, and a count of characters the tokenizer could
        not map (kept as ``unk``; the QA report lists them).
    """
    unknown: Counter[str] = Counter()
    good: list[Row] = []
    tokens: dict[str, list[int]] = {}
    for row in rows:
        ids = tokenizer.encode(row.text)
        if not ids:
            problems.append(Problem(row.source, "empty_text", f"id {row.key}: empty text"))
            continue
        if not tokenizer.is_speakable(ids):
            problems.append(Problem(row.source, "unspeakable_text", f"id {row.key}: no letters in {row.text!r}"))
            continue
        normalized = tokenizer.normalize_text(row.text)
        for ch in tokenizer.unknown_chars(row.text):
            unknown[ch] += normalized.count(ch)
        tokens[row.key] = ids
        good.append(row)
    return good, tokens, unknown


def _save_atomic(obj: dict, path: str) -> None:
    tmp = path + ".part"  # not *.pt: the dataset never lists a half-written file
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_manifest(path: str) -> dict[str, dict]:
    records = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    records[r["key"]] = r
    return records


def _settings_fingerprint(audio: AudioConfig, trim: bool, pre_encoder_dir: str, bert_model: Optional[str]) -> str:
    """What every output depends on besides its own text and audio (the pre-encoder by content)."""
    h = hashlib.sha256(json.dumps({"audio": asdict(audio), "trim": trim, "bert": bert_model}, sort_keys=True).encode())
    for name in ("model_cpu.pt", "model_config.yaml"):
        path = os.path.join(pre_encoder_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _fingerprint(settings: str, row: Row, token_ids: list[int], speaker_id: int) -> str:
    """Fingerprint of one output: settings + text (raw and normalised ids) + audio bytes + speaker id."""
    h = hashlib.sha256(settings.encode())
    h.update(json.dumps([row.raw_text, row.text, list(token_ids), speaker_id]).encode())
    if os.path.isfile(row.wav_path):
        with open(row.wav_path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _stored_fingerprint(path: str) -> Optional[str]:
    """The fingerprint in a finished file; "" if it has none (older runs); None if it cannot be read."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or "mel" not in d or "text" not in d:
            return None
    except Exception:  # truncated, foreign or corrupt: replaced
        return None
    return str(d.get("fingerprint", ""))


def _record_from_file(path: str, row: Row, split: str, spk_id: int, audio: AudioConfig, downsample: int) -> dict:
    """Manifest entry of a finished file that the manifest lacks (a run killed between the two writes).

    The duration is reconstructed from the token count (exact to one token), the round-trip error
    is unknown.
    """
    d = torch.load(path, map_location="cpu", weights_only=True)
    tokens = int(d["mel"].numel())
    frames = tokens * downsample
    return {"key": row.key, "split": split, "speaker": row.speaker, "speaker_id": spk_id, "text": row.text,
            "wav": row.wav_path, "seconds": frames * audio.hop_length / audio.sampling_rate, "frames": frames,
            "tokens": tokens, "chars": int(d["text"].numel()), "mel_l1": None}


@dataclass
class _Targets:
    """What every output of one run is written with: where, split, token ids, speaker ids, fingerprints."""

    output_dir: str
    val_keys: set[str]
    tokens: dict[str, list[int]]
    spk_map: dict[str, int]
    fingerprints: dict[str, str]

    def split(self, row: Row) -> str:
        return "val" if row.key in self.val_keys else "train"


def _load_front_ends(cfg, config_path: str, pre_encoder_dir: str, bert_model: Optional[str], device: str):
    """The pre-encoder (checked against the config's audio) and, if asked for, the BERT front end.

    Returns:
        ``(pre, bert)``; ``bert`` is None without ``bert_model``.
    """
    from scripted_preencoder import ScriptedPreEncoder  # a front end: imported only when used

    pre = ScriptedPreEncoder(pre_encoder_dir, device)
    check_same_audio(cfg.preprocessing.audio, pre.audio, f"--pre_encoder_dir {pre_encoder_dir}")
    bert = None
    if bert_model:
        from bertfe import BERTFrontEnd

        bert = BERTFrontEnd(bert_model, device=device)
        bert.check_width(cfg.model.emotion_input_size, config_path)  # before hours of work, not after
    return pre, bert


def _sort_existing(good: list[Row], t: _Targets, previous: dict[str, dict], audio: AudioConfig, downsample: int
                   ) -> tuple[list[dict], list[Row], dict[str, int]]:
    """Keep finished outputs whose fingerprint matches; delete the stale or unreadable ones.

    Returns:
        the manifest records of the kept outputs, the rows still to do, and the count of outputs
        redone because their inputs changed (``changed``) or they could not be read (``unreadable``).
    """
    redone = {"changed": 0, "unreadable": 0}
    records: list[dict] = []
    todo: list[Row] = []
    for row in good:
        done = [os.path.join(t.output_dir, s, row.key + ".pt") for s in ("train", "val")]
        existing = next((p for p in done if os.path.isfile(p)), None)
        if existing is not None:
            stored = _stored_fingerprint(existing)
            if stored != t.fingerprints[row.key]:  # text, audio or settings changed, or unreadable: redo
                redone["unreadable" if stored is None else "changed"] += 1
                for p in done:
                    if os.path.isfile(p):
                        os.remove(p)
                existing = None
        if existing is None:
            todo.append(row)
            continue
        old_split = os.path.basename(os.path.dirname(existing))
        if row.key in previous and previous[row.key].get("fingerprint") == t.fingerprints[row.key]:
            records.append(previous[row.key])
        else:
            records.append(_record_from_file(existing, row, old_split, t.spk_map[row.speaker], audio, downsample))
    return records, todo, redone


def _write_batch(ok: list[tuple[Row, dict]], t: _Targets, pre, bert) -> list[dict]:
    """Encode one batch of loaded clips, save their ``.pt`` files and return their manifest records.

    Args:
        ok: (row, item) pairs; ``item["mel"]`` is the clip's (T_i, n_mels) log-mel.
    """
    codes, mel_l1 = _encode(pre, [it["mel"] for _, it in ok])
    emotions = bert.encode([r.raw_text for r, _ in ok]).float().cpu() if bert is not None else None
    records = []
    for j, (row, item) in enumerate(ok):
        split = t.split(row)
        sample = {"text": torch.tensor(t.tokens[row.key], dtype=torch.long), "mel": codes[j],
                  "speaker": t.spk_map[row.speaker], "fingerprint": t.fingerprints[row.key]}
        if emotions is not None:
            sample["emotion"] = emotions[j].clone()  # clone: do not save the batch's storage
        _save_atomic(sample, os.path.join(t.output_dir, split, row.key + ".pt"))
        records.append({"key": row.key, "split": split, "speaker": row.speaker,
                        "speaker_id": t.spk_map[row.speaker], "text": row.text, "wav": row.wav_path,
                        "seconds": round(item["seconds"], 4), "frames": int(item["mel"].shape[0]),
                        "tokens": int(codes[j].numel()), "chars": len(t.tokens[row.key]),
                        "mel_l1": round(mel_l1[j], 5), "fingerprint": t.fingerprints[row.key]})
    return records


def _process_audio(todo: list[Row], t: _Targets, pre, bert, audio: AudioConfig, trim: bool, batch_size: int,
                   workers: int, progress: bool, manifest_path: str, problems: list[Problem]) -> list[dict]:
    """Load, encode and write every row in ``todo``, appending each record to the manifest as it lands.

    Clips that cannot be loaded become problems. Returns the new records.
    """
    loader = DataLoader(AudioRows(todo, audio, trim), batch_size=batch_size, num_workers=workers,
                        collate_fn=list, worker_init_fn=_worker_init if workers else None)
    records: list[dict] = []
    with open(manifest_path, "a", encoding="utf-8") as manifest, \
            tqdm(total=len(todo), desc="preprocess", unit="utt", disable=not progress) as bar:
        for batch in loader:
            ok = []
            for item in batch:
                row = todo[item["index"]]
                if "error" in item:
                    problems.append(Problem(row.source, item["kind"], item["error"]))
                else:
                    ok.append((row, item))
            if ok:
                for rec in _write_batch(ok, t, pre, bert):
                    manifest.write(json.dumps(rec) + "\n")
                    records.append(rec)
                manifest.flush()
            bar.update(len(batch))
    return records


def preprocess(
    input_dir: str,
    output_dir: str,
    pre_encoder_dir: str,
    config_path: str = "config/model.yaml",
    bert_model: Optional[str] = None,
    val_fraction: Optional[float] = None,
    workers: int = 0,
    layout: str = "auto",
    trim: Optional[bool] = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    text_frontend: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> dict:
    """Convert a dataset; returns the QA report (also written to ``OUT/qa_report.json``).

    ``text_frontend`` (chars or phonemes) overrides the config's ``model.text_frontend``;
    ``overrides`` are ``KEY=VALUE`` changes to the model config, as ``train.py --set`` takes them."""
    cfg = load_config(config_path, overrides)
    audio = cfg.preprocessing.audio
    val_fraction = cfg.preprocessing.val_fraction if val_fraction is None else val_fraction
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    trim = cfg.preprocessing.trim_silence if trim is None else trim
    pre, bert = _load_front_ends(cfg, config_path, pre_encoder_dir, bert_model, device)

    layout, rows, problems = discover(input_dir, layout)
    tokenizer = make_tokenizer(text_frontend or cfg.model.text_frontend)
    for d in ("train", "val"):
        os.makedirs(os.path.join(output_dir, d), exist_ok=True)
    tokenizer.save(os.path.join(output_dir, "tokenizer.json"))

    # Text first: a row without speakable text never costs an audio load.
    good, tokens, unknown = screen_texts(rows, tokenizer, problems)
    changed = sum(verbalises(r.text) for r in good)  # sentences whose numbers, symbols ... were read out
    spk_map = speaker_ids(output_dir, [r.speaker for r in good])
    settings_fp = _settings_fingerprint(audio, trim, pre_encoder_dir, bert_model)
    targets = _Targets(output_dir, split_keys([r.key for r in good], val_fraction), tokens, spk_map,
                       {r.key: _fingerprint(settings_fp, r, tokens[r.key], spk_map[r.speaker]) for r in good})
    manifest_path = os.path.join(output_dir, "manifest.jsonl")
    records, todo, redone = _sort_existing(good, targets, _load_manifest(manifest_path), audio, pre.downsample)
    skipped = len(records)
    records += _process_audio(todo, targets, pre, bert, audio, trim, batch_size, workers, progress,
                              manifest_path, problems)

    report = build_report(records, problems, unknown, spk_map, layout, skipped)
    report["redone"] = redone  # outputs whose inputs changed, and unreadable outputs replaced
    report["normalizer"] = {"version": NORMALIZER_VERSION, "sentences": len(good), "changed": changed,
                            "changed_share": round(changed / max(len(good), 1), 4)}
    report["settings"] = {"config": config_path, "pre_encoder_dir": pre_encoder_dir, "bert_model": bert_model,
                          "val_fraction": val_fraction, "trim_silence": trim, "audio": asdict(audio),
                          "codebook_size": int(pre.codebook_size), "fsq_levels": list(pre.fsq_levels)}
    with open(os.path.join(output_dir, "qa_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


@torch.no_grad()
def _encode(pre, mels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float]]:
    """Pre-encoder tokens and round-trip mel L1 of a batch of (T_i, C) mels.

    Returns:
        tokens: per clip, (ceil(T_i / downsample),) long on the CPU.
        mel_l1: per clip, mean |mel - decode(encode(mel))| over its frames.
    """
    lengths = torch.tensor([m.shape[0] for m in mels])
    T = int(lengths.max())
    batch = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True)  # (B, T, C)
    idx = pre.encode(batch, lengths).cpu()  # (B, T'), T' = ceil(T / downsample)
    tok_len = (lengths + pre.downsample - 1) // pre.downsample
    recon = pre.decode(idx, tok_len)[:, :T].float().cpu()  # (B, >= T, C)
    out_tokens, errs = [], []
    for b, n in enumerate(lengths.tolist()):
        out_tokens.append(idx[b, : int(tok_len[b])].long().cpu().clone())
        errs.append(float((recon[b, :n] - batch[b, :n]).abs().mean()))
    return out_tokens, errs


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_dir", required=True, help="dataset root (LJSpeech layout or one folder per speaker)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--pre_encoder_dir", required=True, help="exported pre-encoder (model_cpu.pt + model_config.yaml)")
    p.add_argument("--config", default="config/model.yaml", help="model config: preprocessing.audio and defaults")
    p.add_argument("--bert_model", default=None, help="hub name or local dir; adds 'emotion' vectors")
    p.add_argument("--val_fraction", type=float, default=None, help="default: preprocessing.val_fraction")
    p.add_argument("--workers", type=int, default=0, help="audio-loading processes (0 = in the main process)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS)
    p.add_argument("--trim_silence", action=argparse.BooleanOptionalAction, default=None,
                   help="default: preprocessing.trim_silence (off)")
    p.add_argument("--batch_size", type=int, default=8, help="clips per pre-encoder / BERT call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--text_frontend", default=None, choices=["chars", "phonemes"],
                   help="text ids: characters or phonemes (default: the config's model.text_frontend)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. model.emotion_input_size=384 (as train.py's --set)")
    args = p.parse_args(argv)

    def body() -> dict:
        pick_device(args.device)  # an unusable or misspelt device is one line, not a failed model load
        return preprocess(args.input_dir, args.output_dir, args.pre_encoder_dir, args.config, args.bert_model,
                          args.val_fraction, args.workers, args.layout, args.trim_silence, args.batch_size,
                          args.device, progress=not args.no_progress, text_frontend=args.text_frontend,
                          overrides=args.set)

    # OSError too: the recordings and model directories it reads are the user's.
    report = run_command("preprocess.py", body, bad_input_errors() + (OSError,))
    if isinstance(report, int):
        return report
    print_report(report, args.output_dir)
    u = report["utterances"]
    return 0 if u["train"] + u["val"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
