"""Run an exported chain (``export_deploy.py``; format in ``model/deploy_export.py``) with torch alone.

    chain = DeployedChain("deploy/")
    out = chain.synthesize("Hello there.", temperature=0.0)      # out.tokens (T,), out.wav (T * 256,)
    for chunk in chain.stream("Hello there.", chunk_tokens=16):   # float32 (N,) chunks
        play(chunk)

No model class is built: the four TorchScript files do the work, ``deploy.yaml`` says how they fit.
The text still goes through the tokenizer the model was trained with (``utils/char_tokenizer.py``,
rebuilt from the symbols in ``deploy.yaml``). Limits: batch 1, the CPU, greedy or temperature /
top-k sampling (no top-p, repetition penalty, attention window or tracking), at most
``generation.max_length`` tokens (the KV cache's length), emotion vectors given by the caller
(zeros by default: no BERT is exported).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import yaml
from torch import Tensor

from model.stream_audio import AudioChunker, Reach
from utils.char_tokenizer import CharTokenizer

FORMAT = "echolancer-deploy"
FORMAT_VERSION = 1
CONFIG_NAME = "deploy.yaml"


class DeployDirError(ValueError):
    """A deployment directory that cannot be used (the message names the file)."""


@dataclass
class DeployedOutput:
    """tokens: (T,) long codec tokens.  wav: (T * samples_per_token,) float32.  hit_max_length: cut, not stopped."""

    tokens: Tensor
    wav: np.ndarray
    hit_max_length: bool


class DeployedChain:
    """The exported text -> audio chain.

    Args:
        directory: what ``export_deploy.py`` wrote.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        directory = os.fspath(directory)
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing; is {directory} a directory written by export_deploy.py?")
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise DeployDirError(f"{path}: not an Echolancer deployment (format {FORMAT!r} expected)")
        if cfg.get("format_version") != FORMAT_VERSION:
            raise DeployDirError(f"{path}: format_version {cfg.get('format_version')!r}; this code reads {FORMAT_VERSION}")
        self.cfg = cfg
        self.modules = {}
        for name, file in cfg["files"].items():
            full = os.path.join(directory, file)
            if not os.path.isfile(full):
                raise FileNotFoundError(f"{full}: missing ({name} of the deployed chain)")
            with warnings.catch_warnings():  # the format is TorchScript: its deprecation note is not actionable
                warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
                self.modules[name] = torch.jit.load(full, map_location="cpu").eval()
        self.tokenizer = CharTokenizer.from_dict(cfg["tokenizer"])
        special, m, gen = cfg["special_tokens"], cfg["model"], cfg["generation"]
        self.bos, self.eos, self.pad, self.n_vocab = special["bos_id"], special["eos_id"], special["pad_id"], special["n_vocab"]
        self.stop_head, self.max_length = bool(m["stop_head"]), int(gen["max_length"])
        self.gate_threshold = float(gen["gate_threshold"])
        self.cache_shape = (m["decoder_layers"], 1, m["kv_heads"], self.max_length, m["head_dim"])
        self.sample_rate = int(cfg["audio"]["sampling_rate"])
        self.samples_per_token = int(cfg["audio"]["samples_per_token"])
        self.reach = Reach(int(cfg["stream"]["reach_left"]), int(cfg["stream"]["reach_right"]))

    # ---- decoding ----------------------------------------------------------------------------------

    def _encode(self, text: str, speaker: int, emotion: Optional[Tensor]) -> tuple[tuple[Tensor, ...], int]:
        m = self.cfg["model"]
        ids = self.tokenizer.encode(text)
        if not ids or not self.tokenizer.is_speakable(ids):
            raise ValueError(f"{text!r} has nothing speakable after normalisation")
        if not 0 <= speaker < (m["n_speaker"] if m["multi_speaker"] else 1):
            raise ValueError(f"speaker {speaker} is not a speaker of this model")
        em = torch.zeros(1, m["emotion_input_size"]) if emotion is None else emotion.reshape(1, -1).float()
        if em.shape[1] != m["emotion_input_size"]:
            raise ValueError(f"emotion must have {m['emotion_input_size']} values, got {em.shape[1]}")
        texts = torch.tensor([ids])
        return self.modules["encoder"](texts, torch.tensor([len(ids)]), em, torch.tensor([speaker])), len(ids)

    def _bounds(self, text_len: int, min_length: int, max_length: Optional[int]) -> tuple[int, int]:
        """(row_min, row_max) tokens, as ``SamplingParams.row_bounds`` computes them."""
        gen = self.cfg["generation"]
        top = self.max_length if max_length is None else max_length
        if not 1 <= top <= self.max_length:
            raise ValueError(f"max_length must be in [1, {self.max_length}] (the exported KV cache), got {top}")
        lo, hi = gen["min_tokens_per_text_token"], gen["max_tokens_per_text_token"]
        row_min, row_max = min_length, top
        if lo is not None:
            row_min = min(max(row_min, int(np.floor(lo * text_len))), top)
        if hi is not None:
            row_max = min(row_max, max(1, int(np.ceil(hi * text_len))))
            row_min = min(row_min, row_max)
        return row_min, row_max

    @torch.no_grad()
    def tokens(self, text: str, speaker: int = 0, emotion: Optional[Tensor] = None, temperature: float = 0.0,
               top_k: int = 0, min_length: int = 0, max_length: Optional[int] = None,
               seed: Optional[int] = None) -> Iterator[int]:
        """Yield codec token ids one step at a time; the generator's return value is True when the
        row was cut by its length bound (not stopped). Greedy when ``temperature`` is 0 or
        ``top_k`` is 1 (the eager chain's tokens); else sampling at ``temperature`` among the
        ``top_k`` most likely (0 = all)."""
        if temperature < 0 or top_k < 0:
            raise ValueError(f"temperature and top_k must be >= 0, got {temperature}, {top_k}")
        memory, text_len = self._encode(text, speaker, emotion)
        row_min, row_max = self._bounds(text_len, min_length, max_length)
        k_cache, v_cache = torch.zeros(self.cache_shape), torch.zeros(self.cache_shape)
        never = torch.zeros(self.n_vocab, dtype=torch.bool)
        never[[self.bos, self.pad]] = True
        g = torch.Generator().manual_seed(seed if seed is not None else 0)
        prev = torch.full((1, 1), self.bos, dtype=torch.long)
        for t in range(row_max):
            logits, stop, k_cache, v_cache = self.modules["decode_step"](prev, torch.tensor([t]), k_cache, v_cache, *memory)
            scores = logits[0].float().masked_fill(never, float("-inf"))
            early = t < row_min
            if early:
                scores[self.eos] = float("-inf")
            chosen = self._choose(scores, temperature, top_k, g)
            if chosen == self.eos or (self.stop_head and not early and float(torch.sigmoid(stop[0])) > self.gate_threshold):
                return False
            yield chosen
            prev = torch.tensor([[chosen]])
        return True

    @staticmethod
    def _choose(scores: Tensor, temperature: float, top_k: int, g: torch.Generator) -> int:
        if temperature == 0.0 or top_k == 1:
            return int(scores.argmax())
        scores = scores / temperature
        if 0 < top_k < scores.numel():
            kth = torch.topk(scores, top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        return int(torch.multinomial(scores.softmax(-1), 1, generator=g))

    # ---- audio -------------------------------------------------------------------------------------

    @torch.no_grad()
    def render(self, tokens: Tensor, n_valid: int) -> Tensor:
        """Tokens (1, W), those from ``n_valid`` on padding -> (W * samples_per_token,) float32 samples."""
        mel = self.modules["preencoder_decoder"](tokens.long(), torch.tensor([n_valid]))
        return self.modules["vocoder"](mel.transpose(1, 2))[0]

    def synthesize(self, text: str, **kwargs) -> DeployedOutput:
        """Text -> tokens and audio at once; keywords as for :meth:`tokens`."""
        gen = self.tokens(text, **kwargs)
        got: list[int] = []
        while True:
            try:
                got.append(next(gen))
            except StopIteration as end:
                cut = bool(end.value)
                break
        tokens = torch.tensor(got, dtype=torch.long)
        n = len(got)
        if n == 0:
            return DeployedOutput(tokens, np.zeros(0, dtype=np.float32), cut)
        # Rendered as the eager chain renders a row: a stopped row with its stopping step's padding column.
        span = torch.cat([tokens, torch.zeros(0 if cut else 1, dtype=torch.long)])[None]
        wav = self.render(span, n)[: n * self.samples_per_token].numpy()
        return DeployedOutput(tokens, wav, cut)

    def stream(self, text: str, chunk_tokens: int = 32, **kwargs) -> Iterator[np.ndarray]:
        """Text -> float32 audio chunks while decoding goes on; joined, they equal :meth:`synthesize`."""
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        chunker = AudioChunker(self.render, self.reach, self.samples_per_token)
        gen = self.tokens(text, **kwargs)
        pending: list[int] = []
        while True:
            try:
                pending.append(next(gen))
            except StopIteration as end:
                cut = bool(end.value)
                break
            if len(pending) == chunk_tokens:
                audio = chunker.push(torch.tensor(pending))
                pending = []
                if audio.size:
                    yield audio
        if pending:
            audio = chunker.push(torch.tensor(pending))
            if audio.size:
                yield audio
        audio = chunker.finish(pad_tokens=0 if cut else 1)
        if audio.size:
            yield audio
