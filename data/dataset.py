"""The Echolancer dataset: one ``.pt`` file per utterance, validated once, padded by :class:`Collate`.

File format (a dict, loaded with ``weights_only=True`` so a file can never run code):

    text     1-D integer tensor, text token ids in [0, model.vocab_size)
    mel      1-D integer tensor, codec tokens in [0, model.codebook_size)  (raw: no BOS/EOS/PAD)
    speaker  int, or a 0-d / 1-element integer tensor, in [0, model.n_speaker)
    emotion  optional 1-D float tensor of model.emotion_input_size (a BERT sentence vector);
             missing -> zeros (the model's "no emotion" vector), with one warning per dataset
    ref_mel  optional 1-D integer tensor in [0, model.vq_vocab_size): the reference utterance used
             by the speaker encoder in ``vq_token_mode``

Every file is read and checked when the dataset is built, so a bad file fails at start-up with its
path, the key and what was expected, not hours into training. With
``dataset.skip_invalid_files: true`` bad files are skipped, counted and reported in one warning.
Utterances longer than ``dataset.max_text_len`` / ``max_audio_len`` are left out and counted.

Start-up reads each file once; what it learned (lengths, speaker, id ranges) is kept in
``<data_dir>/.echolancer_index.npz`` keyed on each file's name, size and modification time, so later
start-ups read only new or changed files and check the cached id ranges against the current config
(the same checks, the same messages). Files that failed are never cached: they are read again.

A directory written by :mod:`data.packed` (a ``packed.json`` header) is opened as a
:class:`data.packed.PackedDataset` by the same constructor, so callers need not know the format.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from utils.config import ModelConfig

TEXT_PAD_ID = 0  # CharTokenizer.pad_id
# Collate rounds padded text and audio lengths up to a multiple of this, so torch.compile sees a
# few shapes instead of one per batch; the padding is masked like any other.
PAD_MULTIPLE = 16
INDEX_CACHE = ".echolancer_index.npz"
_INDEX_CACHE_VERSION = 1


class DataError(ValueError):
    """A data file that does not match the expected format."""


@dataclass
class Sample:
    text: Tensor  # (S,) long
    mel: Tensor  # (T,) long
    speaker: int
    emotion: Optional[Tensor]  # (E,) float or None (missing)
    ref_mel: Optional[Tensor]  # (R,) long or None


def _int_seq(d: dict, key: str, path: str, high: int, what: str) -> Tensor:
    v = d[key]
    if not torch.is_tensor(v):
        raise DataError(f"{path}: '{key}' must be a 1-D integer tensor ({what}), got {type(v).__name__}")
    if v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
        raise DataError(f"{path}: '{key}' must be an integer tensor ({what}), got dtype {v.dtype}")
    if v.dim() != 1:
        raise DataError(f"{path}: '{key}' must be 1-D ({what}), got shape {tuple(v.shape)}")
    if v.numel() == 0:
        raise DataError(f"{path}: '{key}' is empty; expected at least one token")
    _check_range(path, key, int(v.min()), int(v.max()), high, what)
    return v.long()


def _check_range(path: str, key: str, lo: int, hi: int, high: int, what: str) -> None:
    if lo < 0 or hi >= high:
        raise DataError(f"{path}: '{key}' has token ids in [{lo}, {hi}]; expected ids in [0, {high}) ({what})")


def _check_speaker(path: str, spk: int, n_speaker: int) -> None:
    if not 0 <= spk < n_speaker:
        raise DataError(f"{path}: 'speaker' is {spk}; expected [0, {n_speaker}) (model.n_speaker)")


def _check_emotion_width(path: str, width: int, expected: int) -> None:
    if width != expected:
        raise DataError(f"{path}: 'emotion' has shape ({width},); expected ({expected},) (model.emotion_input_size)")


def parse_sample(d: Any, path: str, cfg: ModelConfig) -> Sample:
    """Validate one loaded file against the model config; raise :class:`DataError` naming the problem."""
    m = cfg.model
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict with keys text, mel, speaker[, emotion], got {type(d).__name__}")
    for key in ("text", "mel", "speaker"):
        if key not in d:
            raise DataError(f"{path}: missing key '{key}'; a data file needs text, mel, speaker (emotion optional)")
    text = _int_seq(d, "text", path, m.vocab_size, f"model.vocab_size = {m.vocab_size}")
    mel = _int_seq(d, "mel", path, m.codebook_size, f"raw codec tokens, model.codebook_size = {m.codebook_size}")

    spk = d["speaker"]
    if torch.is_tensor(spk):
        if spk.numel() != 1 or spk.dtype.is_floating_point:
            raise DataError(f"{path}: 'speaker' must be an int or a one-element integer tensor, "
                            f"got dtype {spk.dtype} shape {tuple(spk.shape)}")
        spk = int(spk.item())
    elif isinstance(spk, bool) or not isinstance(spk, int):
        raise DataError(f"{path}: 'speaker' must be an int or a one-element integer tensor, got {type(spk).__name__}")
    _check_speaker(path, spk, m.n_speaker)

    emotion = d.get("emotion")
    if emotion is not None:
        if not torch.is_tensor(emotion) or not emotion.dtype.is_floating_point:
            raise DataError(f"{path}: 'emotion' must be a 1-D float tensor of {m.emotion_input_size} values, "
                            f"got {getattr(emotion, 'dtype', type(emotion).__name__)}")
        if emotion.dim() != 1:
            raise DataError(f"{path}: 'emotion' has shape {tuple(emotion.shape)}; expected "
                            f"({m.emotion_input_size},) (model.emotion_input_size)")
        _check_emotion_width(path, emotion.shape[0], m.emotion_input_size)
        if not bool(torch.isfinite(emotion).all()):
            raise DataError(f"{path}: 'emotion' contains NaN or infinite values")
        emotion = emotion.float()

    ref = None
    if d.get("ref_mel") is not None:
        ref = _int_seq(d, "ref_mel", path, m.vq_vocab_size, f"model.vq_vocab_size = {m.vq_vocab_size}")
    return Sample(text, mel, spk, emotion, ref)


def load_sample_file(path: str, cfg: ModelConfig) -> Sample:
    return parse_sample(load_file_dict(path), path, cfg)


def load_file_dict(path: str) -> Any:
    """``torch.load(path, weights_only=True)``; any failure becomes a :class:`DataError` naming the file."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files, foreign formats, pickles that would run code
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"{path}: cannot load with torch.load(weights_only=True) ({type(e).__name__}: {first}); "
            "expected a dict of tensors saved with torch.save. Files that need arbitrary code to "
            "load are refused."
        ) from e
    return d


# ---- the start-up index cache of a .pt directory ---------------------------------------------------

# Per file: what start-up needs and what the config checks need, so a cached file is checked against
# the current config exactly as parse_sample would (same limits, same messages) without reading it.
_COLS = ("size", "mtime_ns", "text_len", "audio_len", "speaker", "text_min", "text_max", "mel_min", "mel_max",
         "emotion_dim", "ref_min", "ref_max")  # emotion_dim / ref_* are -1 when the key is absent
_C = {name: i for i, name in enumerate(_COLS)}


def _file_stats(size: int, mtime_ns: int, s: Sample) -> list[int]:
    ref = (int(s.ref_mel.min()), int(s.ref_mel.max())) if s.ref_mel is not None else (-1, -1)
    return [size, mtime_ns, len(s.text), len(s.mel), s.speaker, int(s.text.min()), int(s.text.max()),
            int(s.mel.min()), int(s.mel.max()), -1 if s.emotion is None else len(s.emotion), *ref]


def _check_stats(path: str, st: list[int], cfg: ModelConfig) -> None:
    """The config-dependent checks of :func:`parse_sample`, on a file's cached statistics."""
    m = cfg.model
    _check_range(path, "text", st[_C["text_min"]], st[_C["text_max"]], m.vocab_size, f"model.vocab_size = {m.vocab_size}")
    _check_range(path, "mel", st[_C["mel_min"]], st[_C["mel_max"]], m.codebook_size,
                 f"raw codec tokens, model.codebook_size = {m.codebook_size}")
    _check_speaker(path, st[_C["speaker"]], m.n_speaker)
    if st[_C["emotion_dim"]] >= 0:
        _check_emotion_width(path, st[_C["emotion_dim"]], m.emotion_input_size)
    if st[_C["ref_max"]] >= 0:
        _check_range(path, "ref_mel", st[_C["ref_min"]], st[_C["ref_max"]], m.vq_vocab_size,
                     f"model.vq_vocab_size = {m.vq_vocab_size}")


def _read_index_cache(data_dir: str) -> dict[str, list[int]]:
    path = os.path.join(data_dir, INDEX_CACHE)
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != _INDEX_CACHE_VERSION or tuple(z["columns"].tolist()) != _COLS:
                return {}
            names = z["names"].tobytes().decode("utf-8").split("\n")
            stats = z["stats"].tolist()
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return {}  # absent, unreadable or foreign: rebuilt from the files
    return dict(zip(names, stats)) if len(names) == len(stats) else {}


def _write_index_cache(data_dir: str, entries: dict[str, list[int]]) -> None:
    """Atomically (write, then rename); a read-only data directory just goes without a cache."""
    names = sorted(entries)
    tmp = os.path.join(data_dir, f"{INDEX_CACHE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f, version=np.int64(_INDEX_CACHE_VERSION), columns=np.array(_COLS),
                names=np.frombuffer("\n".join(names).encode("utf-8"), dtype=np.uint8),
                stats=np.array([entries[n] for n in names], dtype=np.int64).reshape(len(names), len(_COLS)),
            )
        os.replace(tmp, os.path.join(data_dir, INDEX_CACHE))
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass


def _pick_other(group: Any, index: int, rng: random.Random) -> int:
    """``rng.choice([j for j in group if j != index])`` for a sorted ``group`` holding ``index``,
    in O(log n) (the same draw: ``choice`` takes element ``randbelow(len)``)."""
    k = rng.randrange(len(group) - 1)
    return int(group[k + 1] if k >= bisect.bisect_left(group, index) else group[k])


class EcholancerDataset(Dataset):
    """Utterances of a directory of ``.pt`` files (see the module docstring for the format).

    A directory written by :mod:`data.packed` is opened as a :class:`data.packed.PackedDataset`
    (the same items, lengths and checks), so ``EcholancerDataset(data_dir, cfg)`` reads either format.

    Args:
        data_dir: directory with ``*.pt`` files (not recursive).
        model_cfg: the model config; supplies vocab/codebook/speaker/emotion sizes and ``dataset.*``.
        skip_invalid: override ``dataset.skip_invalid_files``.
        filter_long: leave out utterances longer than ``dataset.max_text_len`` / ``max_audio_len``.
        seed: seeds the choice of reference utterances in ``vq_token_mode``.
        use_index_cache: read and update ``<data_dir>/.echolancer_index.npz`` (see the module docstring).
    """

    def __new__(cls, data_dir: Optional[str] = None, *args: Any, **kwargs: Any) -> EcholancerDataset:
        # data_dir is None when pickle rebuilds an instance (DataLoader workers under spawn).
        if cls is EcholancerDataset and data_dir is not None:
            from data.packed import PackedDataset, is_packed_dir

            if is_packed_dir(data_dir):
                return super().__new__(PackedDataset)
        return super().__new__(cls)

    def __init__(
        self,
        data_dir: str,
        model_cfg: ModelConfig,
        skip_invalid: Optional[bool] = None,
        filter_long: bool = True,
        seed: int = 0,
        use_index_cache: bool = True,
    ) -> None:
        if not os.path.isdir(data_dir):
            raise DataError(f"{data_dir}: data directory not found")
        self.data_dir = data_dir
        self.cfg = model_cfg
        self.seed = seed
        self.epoch = 0
        skip = model_cfg.dataset.skip_invalid_files if skip_invalid is None else skip_invalid
        with os.scandir(data_dir) as it:
            found = {e.name: e.stat() for e in it if e.name.endswith(".pt") and e.is_file()}
        if not found:
            raise DataError(f"{data_dir}: no .pt files")
        cache = _read_index_cache(data_dir) if use_index_cache else {}
        fresh: dict[str, list[int]] = {}

        self.paths: list[str] = []
        self.text_lens: list[int] = []
        self.audio_lens: list[int] = []
        self.speakers: list[int] = []
        self.has_ref: list[bool] = []
        self.skipped: list[tuple[str, str]] = []  # (path, reason)
        self.too_long = 0
        missing_emotion = 0
        ds = model_cfg.dataset
        for name in sorted(found):
            path = os.path.join(data_dir, name)
            size, mtime = found[name].st_size, found[name].st_mtime_ns
            st = cache.get(name)
            try:
                if st is not None and st[0] == size and st[1] == mtime:
                    _check_stats(path, st, model_cfg)
                else:
                    st = _file_stats(size, mtime, load_sample_file(path, model_cfg))
            except DataError as e:
                if not skip:
                    if use_index_cache and fresh:
                        _write_index_cache(data_dir, {**cache, **fresh})  # keep the work done so far
                    raise
                self.skipped.append((path, str(e)))
                continue
            fresh[name] = st
            t_len, a_len = st[_C["text_len"]], st[_C["audio_len"]]
            if filter_long and (t_len > ds.max_text_len or a_len > ds.max_audio_len):
                self.too_long += 1
                continue
            missing_emotion += st[_C["emotion_dim"]] < 0
            self.paths.append(path)
            self.text_lens.append(t_len)
            self.audio_lens.append(a_len)
            self.speakers.append(st[_C["speaker"]])
            self.has_ref.append(st[_C["ref_max"]] >= 0)
        if use_index_cache and fresh != cache:
            _write_index_cache(data_dir, fresh)
        self._finish(missing_emotion)

    def _finish(self, missing_emotion: int) -> None:
        """Warnings, the per-speaker index and the ``vq_token_mode`` check, shared by both formats."""
        data_dir, ds = self.data_dir, self.cfg.dataset
        if self.skipped:
            warnings.warn(
                f"{data_dir}: skipped {len(self.skipped)} invalid file(s) (dataset.skip_invalid_files); "
                f"first: {self.skipped[0][1]}", stacklevel=3,
            )
        if self.too_long:
            warnings.warn(
                f"{data_dir}: left out {self.too_long} utterance(s) longer than dataset.max_text_len="
                f"{ds.max_text_len} or dataset.max_audio_len={ds.max_audio_len}", stacklevel=3,
            )
        if missing_emotion:
            warnings.warn(
                f"{data_dir}: {missing_emotion} file(s) have no 'emotion'; using the zero vector "
                f"({self.cfg.model.emotion_input_size} values), the model's 'no emotion' input", stacklevel=3,
            )
        if len(self) == 0:
            raise DataError(f"{data_dir}: no usable utterances (skipped {len(self.skipped)}, too long {self.too_long})")
        self._index_speakers()

    def _index_speakers(self) -> None:
        self.by_speaker: dict[int, list[int]] = defaultdict(list)
        for i, spk in enumerate(self.speakers):
            self.by_speaker[spk].append(i)
        if self.cfg.model.vq_token_mode:
            for i, spk in enumerate(self.speakers):
                if not self.has_ref[i] and len(self.by_speaker[spk]) < 2:
                    raise DataError(
                        f"{self.paths[i]}: vq_token_mode needs a reference utterance: add a 'ref_mel' key, or "
                        f"another utterance of speaker {spk} (it has only this one)"
                    )

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Reference choices depend on (seed, epoch, index) only, so resumed runs see the same data."""
        self.epoch = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch_cell[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        # In shared memory, so DataLoader workers that persist across epochs see set_epoch too.
        if "_epoch_cell" not in self.__dict__:
            self._epoch_cell = torch.zeros(1, dtype=torch.long).share_memory_()
        self._epoch_cell[0] = int(value)

    def lengths(self) -> list[int]:
        """Audio lengths (codec tokens) for the bucketed sampler."""
        return list(self.audio_lens)

    def _reference_index(self, index: int) -> int:
        rng = random.Random(self.seed * 1_000_003 + self.epoch * 7919 + index)
        return _pick_other(self.by_speaker[int(self.speakers[index])], index, rng)

    def _reference(self, index: int, sample: Sample) -> Tensor:
        if sample.ref_mel is not None:
            return sample.ref_mel
        return load_sample_file(self.paths[self._reference_index(index)], self.cfg).mel

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = load_sample_file(self.paths[index], self.cfg)
        emotion = s.emotion if s.emotion is not None else torch.zeros(self.cfg.model.emotion_input_size)
        item = {"text": s.text, "mel": s.mel, "speaker": s.speaker, "emotion": emotion, "index": index}
        if self.cfg.model.vq_token_mode:
            item["ref"] = self._reference(index, s)
        return item


def recorded_codec_levels(data_dir: str) -> tuple[Optional[list[int]], str]:
    """The FSQ levels of the codec that wrote ``data_dir``'s tokens, and the file that says so.

    ``preprocess.py`` records them in ``qa_report.json`` beside the split directories (``settings.
    fsq_levels``). Returns None for the levels when there is no such report or it predates them.
    """
    report = os.path.join(os.path.dirname(os.path.normpath(data_dir)), "qa_report.json")
    try:
        with open(report, encoding="utf-8") as f:
            levels = json.load(f).get("settings", {}).get("fsq_levels")
    except (OSError, ValueError):
        return None, report
    return (list(levels) if levels else None), report


def _pad(seqs: list[Tensor], value: int, multiple: int = 1) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    width = -(-int(lens.max()) // multiple) * multiple
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lens


class Collate:
    """Pads a list of dataset items into a batch.

    Returns a dict: ``speakers (B,)``, ``texts (B, S)`` padded with the text PAD id, ``src_lens (B,)``,
    ``mels (B, T)`` padded with the model's ``pad_id``, ``mel_lens (B,)``, ``em_hidden (B, E)``,
    ``indices (B,)`` and, in ``vq_token_mode``, ``vq_tokens (B, R)`` / ``vq_token_lens (B,)``.
    BOS/EOS are not added here: the model frames the audio itself.

    ``S``, ``T`` (and ``R``) are the longest text and audio (and reference) rounded up to a multiple of
    ``pad_multiple``, so a compiled model sees a handful of shapes rather than one per batch. The
    model masks positions at and beyond the lengths (+1 for EOS), so the padding does not change
    its outputs.

    Args:
        audio_pad_id: the model's ``pad_id`` (``codebook_size + 2``).
        text_pad_id: the tokenizer's PAD id (0).
        pad_multiple: round padded lengths up to a multiple of this (1 = longest item exactly).
    """

    def __init__(self, audio_pad_id: int, text_pad_id: int = TEXT_PAD_ID, pad_multiple: int = PAD_MULTIPLE) -> None:
        if pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
        self.audio_pad_id = audio_pad_id
        self.text_pad_id = text_pad_id
        self.pad_multiple = pad_multiple

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        texts, src_lens = _pad([it["text"] for it in items], self.text_pad_id, self.pad_multiple)
        mels, mel_lens = _pad([it["mel"] for it in items], self.audio_pad_id, self.pad_multiple)
        batch = {
            "speakers": torch.tensor([it["speaker"] for it in items], dtype=torch.long),
            "texts": texts,
            "src_lens": src_lens,
            "mels": mels,
            "mel_lens": mel_lens,
            "em_hidden": torch.stack([it["emotion"] for it in items]),
            "indices": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }
        if "ref" in items[0]:
            # Padded positions are masked by the reference encoder; 0 is just a valid id.
            batch["vq_tokens"], batch["vq_token_lens"] = _pad([it["ref"] for it in items], 0, self.pad_multiple)
        return batch
