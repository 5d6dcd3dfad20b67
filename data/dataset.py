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
"""

from __future__ import annotations

import os
import random
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from utils.config import ModelConfig

TEXT_PAD_ID = 0  # CharTokenizer.pad_id


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
    lo, hi = int(v.min()), int(v.max())
    if lo < 0 or hi >= high:
        raise DataError(f"{path}: '{key}' has token ids in [{lo}, {hi}]; expected ids in [0, {high}) ({what})")
    return v.long()


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
    if not 0 <= spk < m.n_speaker:
        raise DataError(f"{path}: 'speaker' is {spk}; expected [0, {m.n_speaker}) (model.n_speaker)")

    emotion = d.get("emotion")
    if emotion is not None:
        if not torch.is_tensor(emotion) or not emotion.dtype.is_floating_point:
            raise DataError(f"{path}: 'emotion' must be a 1-D float tensor of {m.emotion_input_size} values, "
                            f"got {getattr(emotion, 'dtype', type(emotion).__name__)}")
        if emotion.shape != (m.emotion_input_size,):
            raise DataError(f"{path}: 'emotion' has shape {tuple(emotion.shape)}; expected "
                            f"({m.emotion_input_size},) (model.emotion_input_size)")
        if not bool(torch.isfinite(emotion).all()):
            raise DataError(f"{path}: 'emotion' contains NaN or infinite values")
        emotion = emotion.float()

    ref = None
    if d.get("ref_mel") is not None:
        ref = _int_seq(d, "ref_mel", path, m.vq_vocab_size, f"model.vq_vocab_size = {m.vq_vocab_size}")
    return Sample(text, mel, spk, emotion, ref)


def load_sample_file(path: str, cfg: ModelConfig) -> Sample:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files, foreign formats, pickles that would run code
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"{path}: cannot load with torch.load(weights_only=True) ({type(e).__name__}: {first}); "
            "expected a dict of tensors saved with torch.save. Files that need arbitrary code to "
            "load are refused."
        ) from e
    return parse_sample(d, path, cfg)


class EcholancerDataset(Dataset):
    """Utterances of a directory of ``.pt`` files (see the module docstring for the format).

    Args:
        data_dir: directory with ``*.pt`` files (not recursive).
        model_cfg: the model config; supplies vocab/codebook/speaker/emotion sizes and ``dataset.*``.
        skip_invalid: override ``dataset.skip_invalid_files``.
        filter_long: leave out utterances longer than ``dataset.max_text_len`` / ``max_audio_len``.
        seed: seeds the choice of reference utterances in ``vq_token_mode``.
    """

    def __init__(
        self,
        data_dir: str,
        model_cfg: ModelConfig,
        skip_invalid: Optional[bool] = None,
        filter_long: bool = True,
        seed: int = 0,
    ) -> None:
        if not os.path.isdir(data_dir):
            raise DataError(f"{data_dir}: data directory not found")
        self.data_dir = data_dir
        self.cfg = model_cfg
        self.seed = seed
        self.epoch = 0
        skip = model_cfg.dataset.skip_invalid_files if skip_invalid is None else skip_invalid
        names = sorted(n for n in os.listdir(data_dir) if n.endswith(".pt"))
        if not names:
            raise DataError(f"{data_dir}: no .pt files")

        self.paths: list[str] = []
        self.text_lens: list[int] = []
        self.audio_lens: list[int] = []
        self.speakers: list[int] = []
        self.has_ref: list[bool] = []
        self.skipped: list[tuple[str, str]] = []  # (path, reason)
        self.too_long = 0
        missing_emotion = 0
        ds = model_cfg.dataset
        for name in names:
            path = os.path.join(data_dir, name)
            try:
                s = load_sample_file(path, model_cfg)
            except DataError as e:
                if not skip:
                    raise
                self.skipped.append((path, str(e)))
                continue
            if filter_long and (len(s.text) > ds.max_text_len or len(s.mel) > ds.max_audio_len):
                self.too_long += 1
                continue
            missing_emotion += s.emotion is None
            self.paths.append(path)
            self.text_lens.append(len(s.text))
            self.audio_lens.append(len(s.mel))
            self.speakers.append(s.speaker)
            self.has_ref.append(s.ref_mel is not None)
        if self.skipped:
            warnings.warn(
                f"{data_dir}: skipped {len(self.skipped)} invalid file(s) (dataset.skip_invalid_files); "
                f"first: {self.skipped[0][1]}", stacklevel=2,
            )
        if self.too_long:
            warnings.warn(
                f"{data_dir}: left out {self.too_long} utterance(s) longer than dataset.max_text_len="
                f"{ds.max_text_len} or dataset.max_audio_len={ds.max_audio_len}", stacklevel=2,
            )
        if missing_emotion:
            warnings.warn(
                f"{data_dir}: {missing_emotion} file(s) have no 'emotion'; using the zero vector "
                f"({model_cfg.model.emotion_input_size} values), the model's 'no emotion' input", stacklevel=2,
            )
        if not self.paths:
            raise DataError(f"{data_dir}: no usable utterances (skipped {len(self.skipped)}, too long {self.too_long})")

        self.by_speaker: dict[int, list[int]] = defaultdict(list)
        for i, spk in enumerate(self.speakers):
            self.by_speaker[spk].append(i)
        if model_cfg.model.vq_token_mode:
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

    def lengths(self) -> list[int]:
        """Audio lengths (codec tokens) for the bucketed sampler."""
        return list(self.audio_lens)

    def _reference(self, index: int, sample: Sample) -> Tensor:
        if sample.ref_mel is not None:
            return sample.ref_mel
        others = [j for j in self.by_speaker[self.speakers[index]] if j != index]
        rng = random.Random(self.seed * 1_000_003 + self.epoch * 7919 + index)
        return load_sample_file(self.paths[rng.choice(others)], self.cfg).mel

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = load_sample_file(self.paths[index], self.cfg)
        emotion = s.emotion if s.emotion is not None else torch.zeros(self.cfg.model.emotion_input_size)
        item = {"text": s.text, "mel": s.mel, "speaker": s.speaker, "emotion": emotion, "index": index}
        if self.cfg.model.vq_token_mode:
            item["ref"] = self._reference(index, s)
        return item


def _pad(seqs: list[Tensor], value: int) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lens.max())), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lens


class Collate:
    """Pads a list of dataset items into a batch.

    Returns a dict: ``speakers (B,)``, ``texts (B, S)`` padded with the text PAD id, ``src_lens (B,)``,
    ``mels (B, T)`` padded with the model's ``pad_id``, ``mel_lens (B,)``, ``em_hidden (B, E)``,
    ``indices (B,)`` and, in ``vq_token_mode``, ``vq_tokens (B, R)`` / ``vq_token_lens (B,)``.
    BOS/EOS are not added here: the model frames the audio itself.

    Args:
        audio_pad_id: the model's ``pad_id`` (``codebook_size + 2``).
        text_pad_id: the tokenizer's PAD id (0).
    """

    def __init__(self, audio_pad_id: int, text_pad_id: int = TEXT_PAD_ID) -> None:
        self.audio_pad_id = audio_pad_id
        self.text_pad_id = text_pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        texts, src_lens = _pad([it["text"] for it in items], self.text_pad_id)
        mels, mel_lens = _pad([it["mel"] for it in items], self.audio_pad_id)
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
            batch["vq_tokens"], batch["vq_token_lens"] = _pad([it["ref"] for it in items], 0)
        return batch
