"""The packed dataset format: a whole corpus in a few memory-mapped files, for large corpora.

A directory of one ``.pt`` file per utterance costs a file open and an unpickle per item, and its
first start-up reads every file. A packed directory holds the same utterances as

    packed.json   header: format, version, counts, dtypes, the id ranges seen (written last)
    index.npy     int64 (N, 8): text offset/length, audio offset/length, speaker, emotion row
                  (-1 = none), ref_mel offset/length (length 0 = none)
    text.bin      every utterance's text ids, concatenated (raw little-endian ``token_dtype``)
    mel.bin       every utterance's codec tokens, concatenated
    ref.bin       the optional ``ref_mel`` tokens, concatenated
    emotion.bin   (n_emotion, emotion_dim) emotion vectors (``emotion_dtype``)
    names.txt     one utterance name per line (the ``.pt`` file name without ``.pt``)

Every utterance is checked when it is written (:class:`PackedWriter`), and the header records the
id ranges found. Opening a packed directory maps the files (no read), checks the sizes against the
header, the index's offsets (a few vector operations) and the recorded ranges against the model
config; start-up time barely grows with the corpus. An utterance is then two slices of a mapping.

``EcholancerDataset(data_dir, cfg)`` opens a packed directory as a :class:`PackedDataset`: the same
item dicts, ``lengths()``, length filter, ``vq_token_mode`` references and warnings as the ``.pt``
format, so the trainer, its collate and the sampler need no change.

Command line::

    python -m data.packed convert SRC_DIR DST_DIR [--config config/model.yaml] [--skip-invalid]
    python -m data.packed verify DIR      # re-reads every token and compares with the header
    python -m data.packed info DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from data.dataset import DataError, EcholancerDataset, load_file_dict, parse_sample
from utils.config import ModelConfig

HEADER = "packed.json"
FORMAT = "echolancer-packed"
VERSION = 1
FILES = {"text": "text.bin", "mel": "mel.bin", "ref": "ref.bin", "emotion": "emotion.bin"}
INDEX, NAMES = "index.npy", "names.txt"
# Columns of index.npy.
TEXT_OFF, TEXT_LEN, MEL_OFF, MEL_LEN, SPEAKER, EMO_ROW, REF_OFF, REF_LEN = range(8)
N_COLS = 8
TOKEN_DTYPES = ("uint16", "int32")
EMOTION_DTYPES = ("float32", "float16")
_MAX_LISTED_SKIPS = 1000  # skipped files named in the header (the count is always exact)


def is_packed_dir(data_dir: str) -> bool:
    return os.path.isfile(os.path.join(data_dir, HEADER))


def read_header(data_dir: str) -> dict:
    path = os.path.join(data_dir, HEADER)
    try:
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the packed-data header ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: not an Echolancer packed-data header (format {FORMAT!r} expected)")
    if header.get("version") != VERSION:
        raise DataError(f"{path}: packed-data version {header.get('version')}; this code reads version {VERSION}. "
                        "Convert the .pt files again with this version (python -m data.packed convert).")
    return header


# ---- writing ---------------------------------------------------------------------------------------


def _as_array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


class _Range:
    def __init__(self) -> None:
        self.lo: Optional[int] = None
        self.hi: Optional[int] = None

    def update(self, lo: int, hi: int) -> None:
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def to_json(self) -> Optional[list[int]]:
        return None if self.lo is None else [self.lo, self.hi]


class PackedWriter:
    """Writes utterances into a packed directory, checking each one; :meth:`close` makes it readable.

    Args:
        out_dir: created if missing; must not already hold a packed corpus unless ``overwrite``.
        token_dtype: storage of text, audio and reference ids: ``uint16`` (ids < 65536, half the
            size) or ``int32``.
        emotion_dtype: ``float32`` (exact) or ``float16`` (half the size; vectors are read back as float32).
        source: recorded in the header (e.g. the converted directory).

    Use as a context manager, or call :meth:`close` (or :meth:`abort` to drop a partial corpus).
    """

    def __init__(self, out_dir: str, token_dtype: str = "uint16", emotion_dtype: str = "float32",
                 overwrite: bool = False, source: Optional[str] = None) -> None:
        if token_dtype not in TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {TOKEN_DTYPES}, got {token_dtype!r}")
        if emotion_dtype not in EMOTION_DTYPES:
            raise ValueError(f"emotion_dtype must be one of {EMOTION_DTYPES}, got {emotion_dtype!r}")
        os.makedirs(out_dir, exist_ok=True)
        if is_packed_dir(out_dir):
            if not overwrite:
                raise DataError(f"{out_dir}: already holds a packed corpus ({HEADER}); remove it or pass overwrite")
            os.remove(os.path.join(out_dir, HEADER))  # unreadable until the new header is written
        self.out_dir = out_dir
        self.token_dtype = np.dtype(token_dtype).newbyteorder("<")
        self.emotion_dtype = np.dtype(emotion_dtype).newbyteorder("<")
        self.source = source
        self._tok_max = int(np.iinfo(self.token_dtype).max)
        self._files = {k: open(os.path.join(out_dir, name), "wb", buffering=1 << 20) for k, name in FILES.items()}
        self._sizes = dict.fromkeys(FILES, 0)  # elements written (emotion: rows)
        self._index: list[list[int]] = []
        self._names: list[str] = []
        self._seen: set[str] = set()
        self._ranges = {k: _Range() for k in ("text", "mel", "ref", "speaker")}
        self.emotion_dim: Optional[int] = None
        self.skipped: list[tuple[str, str]] = []
        self.n_skipped = 0
        self.closed = False

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._index)

    def _tokens(self, x: Any, key: str, where: str) -> np.ndarray:
        a = _as_array(x)
        if a.dtype.kind not in "iu":
            raise DataError(f"{where}: '{key}' must be an integer tensor, got dtype {a.dtype}")
        if a.ndim != 1:
            raise DataError(f"{where}: '{key}' must be 1-D, got shape {tuple(a.shape)}")
        if a.size == 0:
            raise DataError(f"{where}: '{key}' is empty; expected at least one token")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            raise DataError(f"{where}: '{key}' has token ids in [{lo}, {hi}]; ids must be >= 0")
        if hi > self._tok_max:
            raise DataError(f"{where}: '{key}' has id {hi}, more than token_dtype {self.token_dtype.name} holds; "
                            "write with token_dtype='int32' (--token-dtype int32)")
        return np.ascontiguousarray(a, dtype=self.token_dtype)

    def add(self, text: Any, mel: Any, speaker: Any, emotion: Any = None, ref_mel: Any = None,
            name: Optional[str] = None, where: Optional[str] = None) -> None:
        """Check one utterance and append it; a :class:`DataError` leaves the corpus unchanged.

        Args:
            text, mel, ref_mel: 1-D integer tensors/arrays (raw ids, no BOS/EOS/PAD).
            speaker: a non-negative int (or one-element integer tensor).
            emotion: a 1-D float vector, all utterances the same width, or None.
            name: the utterance's name (unique, no newline); default its number.
            where: how errors name the utterance (e.g. its source file); default directory and name.
        """
        name = f"{len(self._index):08d}" if name is None else str(name)
        where = where or f"{self.out_dir}: utterance {name!r}"
        if self.closed:
            raise RuntimeError("PackedWriter is closed")
        if "\n" in name or name in self._seen:
            raise DataError(f"{where}: names must be unique and hold no newline")
        t = self._tokens(text, "text", where)
        m = self._tokens(mel, "mel", where)
        r = self._tokens(ref_mel, "ref_mel", where) if ref_mel is not None else None
        spk = speaker
        if torch.is_tensor(spk) or isinstance(spk, np.ndarray):
            a = _as_array(spk)
            if a.size != 1 or a.dtype.kind not in "iu":
                raise DataError(f"{where}: 'speaker' must be an int or a one-element integer tensor, "
                                f"got dtype {a.dtype} shape {tuple(a.shape)}")
            spk = int(a.reshape(()))
        elif isinstance(spk, (bool, np.bool_)) or not isinstance(spk, (int, np.integer)):
            raise DataError(f"{where}: 'speaker' must be an int, got {type(spk).__name__}")
        spk = int(spk)
        if spk < 0:
            raise DataError(f"{where}: 'speaker' is {spk}; speaker ids are >= 0")
        e = None
        if emotion is not None:
            e = _as_array(emotion)
            if e.dtype.kind != "f" or e.ndim != 1:
                raise DataError(f"{where}: 'emotion' must be a 1-D float vector, got dtype {e.dtype} shape {tuple(e.shape)}")
            if self.emotion_dim is not None and e.shape[0] != self.emotion_dim:
                raise DataError(f"{where}: 'emotion' has {e.shape[0]} values; earlier utterances have {self.emotion_dim}")
            if not np.isfinite(e).all():
                raise DataError(f"{where}: 'emotion' contains NaN or infinite values")
            e = np.ascontiguousarray(e, dtype=self.emotion_dtype)
            if not np.isfinite(e).all():
                raise DataError(f"{where}: 'emotion' overflows {self.emotion_dtype.name}; write with float32")
            self.emotion_dim = e.shape[0]

        # Checked: append.
        row = [self._sizes["text"], len(t), self._sizes["mel"], len(m), spk, -1, self._sizes["ref"], 0]
        self._write("text", t, len(t))
        self._write("mel", m, len(m))
        self._ranges["text"].update(int(t.min()), int(t.max()))
        self._ranges["mel"].update(int(m.min()), int(m.max()))
        self._ranges["speaker"].update(spk, spk)
        if r is not None:
            row[REF_LEN] = len(r)
            self._write("ref", r, len(r))
            self._ranges["ref"].update(int(r.min()), int(r.max()))
        if e is not None:
            row[EMO_ROW] = self._sizes["emotion"]
            self._write("emotion", e, 1)
        self._index.append(row)
        self._names.append(name)
        self._seen.add(name)

    def _write(self, key: str, a: np.ndarray, n: int) -> None:
        self._files[key].write(memoryview(a).cast("B"))
        self._sizes[key] += n

    def skip(self, name: str, reason: str) -> None:
        """Record an utterance left out (shown by ``info``, kept in the header)."""
        self.n_skipped += 1
        if len(self.skipped) < _MAX_LISTED_SKIPS:
            self.skipped.append((name, reason))

    def close(self) -> dict:
        """Write the index, the names and, last, the header; returns the header."""
        if self.closed:
            raise RuntimeError("PackedWriter is already closed")
        if not self._index:
            self.abort()
            raise DataError(f"{self.out_dir}: no utterances written (skipped {self.n_skipped})")
        for f in self._files.values():
            f.close()
        d = self.out_dir
        np.save(os.path.join(d, INDEX), np.array(self._index, dtype="<i8").reshape(-1, N_COLS))
        with open(os.path.join(d, NAMES), "w", encoding="utf-8") as f:
            f.write("\n".join(self._names))
        header = {
            "format": FORMAT, "version": VERSION, "count": len(self._index),
            "token_dtype": self.token_dtype.name, "emotion_dtype": self.emotion_dtype.name,
            "emotion_dim": self.emotion_dim,
            "sizes": {k: self._sizes[k] for k in FILES},  # elements (emotion: rows)
            "ranges": {k: r.to_json() for k, r in self._ranges.items()},
            "n_skipped": self.n_skipped, "skipped": [list(s) for s in self.skipped],
            "source": self.source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = os.path.join(d, HEADER + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(header, f, indent=1)
        os.replace(tmp, os.path.join(d, HEADER))
        self.closed = True
        return header

    def abort(self) -> None:
        """Close and remove the partial files (no header is written)."""
        for f in self._files.values():
            f.close()
        for name in (*FILES.values(), INDEX, NAMES):
            try:
                os.remove(os.path.join(self.out_dir, name))
            except OSError:
                pass
        self.closed = True


def _sample_fields(d: Any, path: str) -> dict:
    """The keys of a loaded ``.pt`` dict (the structural checks come from :meth:`PackedWriter.add`)."""
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict with keys text, mel, speaker[, emotion], got {type(d).__name__}")
    for key in ("text", "mel", "speaker"):
        if key not in d:
            raise DataError(f"{path}: missing key '{key}'; a data file needs text, mel, speaker (emotion optional)")
    return {"text": d["text"], "mel": d["mel"], "speaker": d["speaker"], "emotion": d.get("emotion"),
            "ref_mel": d.get("ref_mel")}


def convert(src_dir: str, dst_dir: str, model_cfg: Optional[ModelConfig] = None, skip_invalid: bool = False,
            token_dtype: str = "uint16", emotion_dtype: str = "float32", overwrite: bool = False,
            progress: bool = False) -> dict:
    """Pack a directory of ``.pt`` utterance files; returns the header.

    With ``model_cfg`` every file gets exactly the ``.pt`` dataset's checks (id ranges, speaker
    count, emotion width); without it the structural ones, and the id ranges are checked against
    the config each time the packed corpus is opened. Bad files raise :class:`DataError` naming the
    file, or with ``skip_invalid`` are left out and listed in the header.
    """
    if not os.path.isdir(src_dir):
        raise DataError(f"{src_dir}: data directory not found")
    if os.path.abspath(src_dir) == os.path.abspath(dst_dir):
        raise DataError(f"{dst_dir}: write the packed corpus to another directory than the .pt files")
    names = sorted(n for n in os.listdir(src_dir) if n.endswith(".pt"))
    if not names:
        raise DataError(f"{src_dir}: no .pt files")
    t0 = time.perf_counter()
    with PackedWriter(dst_dir, token_dtype, emotion_dtype, overwrite, source=os.path.abspath(src_dir)) as w:
        for k, name in enumerate(names):
            path = os.path.join(src_dir, name)
            try:
                d = load_file_dict(path)
                if model_cfg is not None:
                    s = parse_sample(d, path, model_cfg)
                    fields = {"text": s.text, "mel": s.mel, "speaker": s.speaker, "emotion": s.emotion,
                              "ref_mel": s.ref_mel}
                else:
                    fields = _sample_fields(d, path)
                w.add(**fields, name=name[: -len(".pt")], where=path)
            except DataError as e:
                if not skip_invalid:
                    raise DataError(f"{e} (skip_invalid / --skip-invalid leaves bad files out)") from e
                w.skip(name, str(e))
            if progress and (k + 1) % 10000 == 0:
                rate = (k + 1) / (time.perf_counter() - t0)
                print(f"  {k + 1}/{len(names)} files ({rate:.0f}/s)", file=sys.stderr, flush=True)
    return read_header(dst_dir)


# ---- reading ---------------------------------------------------------------------------------------


def _map(path: str, dtype: np.dtype, count: int, shape: tuple = ()) -> np.ndarray:
    """A read-only array over a file (a plain ndarray view of a memory map: cheap to slice)."""
    if count == 0:
        return np.empty((0, *shape), dtype=dtype)
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", shape=(count, *shape)))


class _Arrays:
    """The mapped files of a packed directory, after the size and index checks."""

    def __init__(self, data_dir: str, header: dict) -> None:
        n = header["count"]
        tok = np.dtype(header["token_dtype"]).newbyteorder("<")
        emo = np.dtype(header["emotion_dtype"]).newbyteorder("<")
        dim = header["emotion_dim"] or 0
        sizes = header["sizes"]
        itemsize = {"text": tok.itemsize, "mel": tok.itemsize, "ref": tok.itemsize, "emotion": emo.itemsize * dim}
        for key, name in FILES.items():
            path = os.path.join(data_dir, name)
            want = sizes[key] * itemsize[key]
            have = os.path.getsize(path) if os.path.isfile(path) else -1
            if have != want:
                raise DataError(f"{path}: {have} bytes, the header expects {want} (missing, truncated or from "
                                "another conversion); convert the corpus again")
        try:
            self.index = np.asarray(np.load(os.path.join(data_dir, INDEX), mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as e:
            raise DataError(f"{os.path.join(data_dir, INDEX)}: cannot read the index ({e})") from e
        if self.index.shape != (n, N_COLS) or self.index.dtype != np.dtype("<i8"):
            raise DataError(f"{os.path.join(data_dir, INDEX)}: shape {self.index.shape} dtype {self.index.dtype}; "
                            f"expected ({n}, {N_COLS}) int64")
        self.text = _map(os.path.join(data_dir, FILES["text"]), tok, sizes["text"])
        self.mel = _map(os.path.join(data_dir, FILES["mel"]), tok, sizes["mel"])
        self.ref = _map(os.path.join(data_dir, FILES["ref"]), tok, sizes["ref"])
        self.emotion = _map(os.path.join(data_dir, FILES["emotion"]), emo, sizes["emotion"], (dim,))

    def check_index(self, data_dir: str, header: dict) -> None:
        """Offsets contiguous, lengths positive, rows in range: a few vector operations."""
        ix, sizes = self.index, header["sizes"]
        where = os.path.join(data_dir, INDEX)
        for off, ln, key, may_be_empty in ((TEXT_OFF, TEXT_LEN, "text", False), (MEL_OFF, MEL_LEN, "mel", False),
                                           (REF_OFF, REF_LEN, "ref", True)):
            o, n = ix[:, off], ix[:, ln]
            ok = (n.min() >= (0 if may_be_empty else 1) and o[0] == 0 and o[-1] + n[-1] == sizes[key]
                  and np.array_equal(o[1:], o[:-1] + n[:-1]))
            if not ok:
                raise DataError(f"{where}: the {key} offsets and lengths are inconsistent; convert the corpus again")
        e = ix[:, EMO_ROW]
        if e.min() < -1 or e.max() >= sizes["emotion"]:
            raise DataError(f"{where}: emotion rows outside [-1, {sizes['emotion']}); convert the corpus again")


class PackedDataset(EcholancerDataset):
    """The utterances of a packed directory; built by ``EcholancerDataset(data_dir, cfg)`` or directly.

    Items, ``lengths()``, ``set_epoch``, the length filter, the warnings and the ``vq_token_mode``
    references are those of :class:`data.dataset.EcholancerDataset`. ``text_lens``, ``audio_lens`` and
    ``speakers`` are numpy arrays; ``rows`` maps a dataset index to its row in the packed files
    (utterances left out by the length filter have none); :meth:`name` gives an utterance's name.

    ``skip_invalid`` leaves out utterances whose ids or speaker the current config cannot take;
    ``use_index_cache`` is accepted for symmetry (a packed corpus is its own index).
    """

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
        if any(n.endswith(".pt") for n in os.listdir(data_dir)):
            raise DataError(f"{data_dir}: holds both a packed corpus ({HEADER}) and .pt files; keep them in "
                            "separate directories so it is clear which one is trained on")
        self.data_dir = data_dir
        self.cfg = model_cfg
        self.seed = seed
        self.epoch = 0
        self.header = read_header(data_dir)
        skip = model_cfg.dataset.skip_invalid_files if skip_invalid is None else skip_invalid
        self._arrays: Optional[_Arrays] = _Arrays(data_dir, self.header)
        self._arrays.check_index(data_dir, self.header)
        self._names: Optional[list[str]] = None
        ix = self._arrays.index
        self.skipped: list[tuple[str, str]] = []
        ok = self._check_config(skip)

        m, ds = model_cfg.model, model_cfg.dataset
        text_lens, audio_lens = ix[:, TEXT_LEN], ix[:, MEL_LEN]
        long = (text_lens > ds.max_text_len) | (audio_lens > ds.max_audio_len) if filter_long else np.zeros(len(ix), bool)
        self.too_long = int((long & ok).sum())
        keep = ok & ~long
        self.rows = np.arange(len(ix)) if keep.all() else np.flatnonzero(keep)
        self.text_lens = np.ascontiguousarray(text_lens[self.rows])
        self.audio_lens = np.ascontiguousarray(audio_lens[self.rows])
        self.speakers = np.ascontiguousarray(ix[self.rows, SPEAKER])
        self.has_ref = ix[self.rows, REF_LEN] > 0
        self._emotion_dim = m.emotion_input_size
        self._finish(int((ix[self.rows, EMO_ROW] < 0).sum()))

    # -- checks against the config (the ranges were recorded when the corpus was written) --

    def name(self, row: int) -> str:
        """The name of packed row ``row`` (the converted ``.pt`` file without ``.pt``)."""
        if self._names is None:
            with open(os.path.join(self.data_dir, NAMES), encoding="utf-8") as f:
                self._names = f.read().split("\n")
        return self._names[int(row)]

    def _where(self, row: int) -> str:
        return f"{self.data_dir}: utterance {self.name(row)!r}"

    def _bad_rows(self, key: str, high: int) -> np.ndarray:
        """Rows with a ``key`` id >= ``high`` (reads that array: only when the header says some exist)."""
        a = self._arrays
        flat, off, ln = {"text": (a.text, TEXT_OFF, TEXT_LEN), "mel": (a.mel, MEL_OFF, MEL_LEN),
                         "ref": (a.ref, REF_OFF, REF_LEN)}[key]
        has = a.index[:, ln] > 0
        bad = np.zeros(len(a.index), bool)
        bad[has] = np.maximum.reduceat(flat, a.index[has, off]) >= high
        return bad

    def _check_config(self, skip: bool) -> np.ndarray:
        m, ix, ranges = self.cfg.model, self._arrays.index, self.header["ranges"]
        ok = np.ones(len(ix), bool)
        dim = self.header["emotion_dim"]
        if dim is not None and dim != m.emotion_input_size:
            raise DataError(f"{self.data_dir}: the packed emotion vectors have {dim} values; expected "
                            f"{m.emotion_input_size} (model.emotion_input_size)")
        checks = [("text", "text", m.vocab_size, f"model.vocab_size = {m.vocab_size}"),
                  ("mel", "mel", m.codebook_size, f"raw codec tokens, model.codebook_size = {m.codebook_size}"),
                  ("ref", "ref_mel", m.vq_vocab_size, f"model.vq_vocab_size = {m.vq_vocab_size}")]
        for key, shown, high, what in checks:
            r = ranges[key]
            if r is None or r[1] < high:
                continue
            bad = self._bad_rows(key, high)
            first = int(np.flatnonzero(bad)[0])
            msg = f"{self._where(first)}: '{shown}' has ids up to {r[1]}; expected ids in [0, {high}) ({what})"
            self._reject(bad, ok, msg, skip)
        spk = ix[:, SPEAKER]
        if ranges["speaker"][1] >= m.n_speaker:
            bad = spk >= m.n_speaker
            first = int(np.flatnonzero(bad)[0])
            msg = f"{self._where(first)}: 'speaker' is {int(spk[first])}; expected [0, {m.n_speaker}) (model.n_speaker)"
            self._reject(bad, ok, msg, skip)
        return ok

    def _reject(self, bad: np.ndarray, ok: np.ndarray, msg: str, skip: bool) -> None:
        if not skip:
            raise DataError(msg)
        first = msg.split(": ", 2)[-1]  # the reason, without the directory and utterance
        self.skipped.extend((f"{self.data_dir}/{self.name(r)}", first) for r in np.flatnonzero(bad & ok))
        ok &= ~bad

    # -- the speaker index, vectorised (a corpus may hold millions of utterances) --

    def _index_speakers(self) -> None:
        order = np.argsort(self.speakers, kind="stable")
        spk_sorted = self.speakers[order]
        uniq, starts, counts = np.unique(spk_sorted, return_index=True, return_counts=True)
        self.by_speaker = {int(s): order[a : a + c] for s, a, c in zip(uniq, starts, counts)}
        if self.cfg.model.vq_token_mode:
            alone = np.zeros(len(self.speakers), bool)
            alone[order[starts[counts == 1]]] = True
            bad = np.flatnonzero(alone & ~self.has_ref)
            if len(bad):
                i = int(bad[0])
                raise DataError(
                    f"{self._where(int(self.rows[i]))}: vq_token_mode needs a reference utterance: add a 'ref_mel' "
                    f"key, or another utterance of speaker {int(self.speakers[i])} (it has only this one)"
                )

    # -- items --

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> list[int]:
        return self.audio_lens.tolist()

    def __getstate__(self) -> dict:
        # Workers re-map the files instead of receiving copies of them.
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_names"] = None
        return state

    def _tokens(self, key: str, off: int, n: int) -> Tensor:
        return torch.from_numpy(getattr(self._arrays, key)[off : off + n].astype(np.int64))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = _Arrays(self.data_dir, self.header)
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} utterances")
        t_off, t_len, m_off, m_len, spk, e_row, r_off, r_len = self._arrays.index[self.rows[index]].tolist()
        mel = self._tokens("mel", m_off, m_len)
        if e_row >= 0:
            emotion = torch.from_numpy(self._arrays.emotion[e_row].astype(np.float32))
        else:
            emotion = torch.zeros(self._emotion_dim)
        item = {"text": self._tokens("text", t_off, t_len), "mel": mel, "speaker": spk, "emotion": emotion,
                "index": index}
        if self.cfg.model.vq_token_mode:
            if r_len > 0:
                item["ref"] = self._tokens("ref", r_off, r_len)
            else:
                other = self._arrays.index[self.rows[self._reference_index(index)]]
                item["ref"] = self._tokens("mel", int(other[MEL_OFF]), int(other[MEL_LEN]))
        return item


def verify(data_dir: str) -> dict:
    """Re-read every array and compare it with the header (the full check ``open`` skips)."""
    header = read_header(data_dir)
    a = _Arrays(data_dir, header)
    a.check_index(data_dir, header)
    for key, flat in (("text", a.text), ("mel", a.mel), ("ref", a.ref)):
        r = header["ranges"][key]
        found = None if flat.size == 0 else [int(flat.min()), int(flat.max())]
        if found != r:
            raise DataError(f"{data_dir}: {key} ids span {found}, the header says {r}")
    spk = a.index[:, SPEAKER]
    if [int(spk.min()), int(spk.max())] != header["ranges"]["speaker"]:
        raise DataError(f"{data_dir}: speaker ids differ from the header")
    if a.emotion.size and not np.isfinite(a.emotion).all():
        raise DataError(f"{data_dir}: emotion vectors hold NaN or infinite values")
    with open(os.path.join(data_dir, NAMES), encoding="utf-8") as f:
        names = f.read().split("\n")
    if len(names) != header["count"] or len(set(names)) != len(names):
        raise DataError(f"{data_dir}: {NAMES} does not hold {header['count']} unique names")
    return header


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.packed", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="pack a directory of .pt utterance files")
    c.add_argument("src_dir")
    c.add_argument("dst_dir")
    c.add_argument("--config", help="model config: check ids/speakers/emotion width now (else at load)")
    c.add_argument("--override", nargs="*", default=[], help="config overrides, key=value")
    c.add_argument("--skip-invalid", action="store_true", help="leave bad files out (listed in the header)")
    c.add_argument("--token-dtype", choices=TOKEN_DTYPES, default="uint16")
    c.add_argument("--emotion-dtype", choices=EMOTION_DTYPES, default="float32")
    c.add_argument("--overwrite", action="store_true")
    v = sub.add_parser("verify", help="re-read a packed corpus and check it against its header")
    v.add_argument("data_dir")
    i = sub.add_parser("info", help="print a packed corpus's header")
    i.add_argument("data_dir")
    args = p.parse_args(argv)
    try:
        if args.cmd == "convert":
            cfg = None
            if args.config:
                from utils.config import load_config

                cfg = load_config(args.config, args.override)
            t0 = time.perf_counter()
            h = convert(args.src_dir, args.dst_dir, cfg, args.skip_invalid, args.token_dtype, args.emotion_dtype,
                        args.overwrite, progress=True)
            print(f"packed {h['count']} utterances into {args.dst_dir} in {time.perf_counter() - t0:.1f} s "
                  f"(skipped {h['n_skipped']})")
            for name, reason in h["skipped"][:5]:
                print(f"  skipped {name}: {reason}")
        elif args.cmd == "verify":
            h = verify(args.data_dir)
            print(f"{args.data_dir}: OK, {h['count']} utterances")
        else:
            h = read_header(args.data_dir)
            h["skipped"] = h["skipped"][:10]
            print(json.dumps(h, indent=1))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
