"""The one text-to-waveform chain: text -> BERT emotion -> Echolancer -> pre-encoder -> vocoder.

``train.py``'s test interval, ``infer.py`` and ``evaluate.py`` all synthesise through
:class:`Synthesizer`; none of them re-implements a stage.

    synth = build_synthesizer(model, tokenizer, bert_model="path/to/bert",
                              pre_encoder_dir="runs/pe/export", istftnet_dir="runs/voc/export")
    for utt in synth.synthesize(["Hello there."], speakers=[0], temperature=0.0, max_length=600):
        save_wav(f"{i}.wav", utt.wav, utt.sample_rate)
    for chunk in synth.stream("Hello there.", chunk_tokens=32, temperature=0.0):   # batch 1
        play(chunk)                     # float32 (N,); joined, they equal synthesize() (ISTFTNet)

Stages and layouts:
    tokenizer   text -> ids (an unspeakable text is an error, not silence)
    bert        texts -> (B, emotion_input_size) pooled vectors; zeros without a BERT
    echolancer  Echolancer.infer -> tokens (B, T) with pad_id after each row's length
    pre-encoder ScriptedPreEncoder.decode -> mel (B, T * downsample, C)
    vocoder     mel transposed to (B, C, T) -> ISTFTNetFE -> wav (B, T * hop);
                without a vocoder, Griffin-Lim (utils.audio) with a logged note
A failing stage raises :class:`PipelineError` naming it. Component mismatches (BERT width,
codebook size, audio settings) are errors when the synthesizer is built, not after generation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from model.stream_audio import AudioChunker, Reach, measure_reach
from model.streaming import TokenStream
from utils.audio import check_same_audio, griffin_lim
from utils.char_tokenizer import CharTokenizer
from utils.config import AudioConfig
from utils.device import pick_device

log = logging.getLogger(__name__)

# Griffin-Lim streaming (approximate): tokens rendered before each chunk for its phase estimate, and
# tokens crossfaded between chunks. Measured in README "Streaming and deployment".
GRIFFIN_LIM_CONTEXT = 16
GRIFFIN_LIM_OVERLAP = 4


class PipelineError(RuntimeError):
    """A stage of the chain failed; ``stage`` names it (tokenizer, bert, echolancer, pre-encoder, vocoder).

    ``bug`` is True when it wraps an unexpected exception (kept as ``__cause__``): command lines
    then show the traceback and exit 1 instead of printing one line as for bad input.
    """

    def __init__(self, stage: str, message: str, bug: bool = False) -> None:
        super().__init__(f"[{stage}] {message}")
        self.stage = stage
        self.bug = bug


# What a stage raises for bad input (a missing or corrupt file, a value it cannot take); anything
# else escaping a stage is a bug and keeps its traceback.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)


def _wrap(stage: str, e: Exception, loading: bool = False) -> PipelineError:
    expected = _INPUT_ERRORS + ((RuntimeError,) if loading else ())  # torch reports corrupt files so
    return PipelineError(stage, f"{type(e).__name__}: {e}", bug=not isinstance(e, expected))


@dataclass
class Utterance:
    """One synthesised sentence.

    tokens: (T,) long codec tokens (EOS and PAD stripped).  gate: float stop probability per
    step: (T + 1,) when the row stopped (the last value is the step that chose to stop), (T,) when
    it hit ``max_length``.  mel: (T * downsample, C) log-mel or None (no pre-encoder).  wav: (N,) float32
    in [-1, 1] or None, N = T * downsample * hop.  vocoder: "istftnet", "griffin_lim" or None.
    """

    text: str
    normalized_text: str
    speaker: Optional[int]
    tokens: Tensor
    gate: Tensor
    hit_max_length: bool
    mel: Optional[Tensor]
    wav: Optional[np.ndarray]
    sample_rate: int
    vocoder: Optional[str]
    text_tokens: int = 0  # symbols the model read (characters or phonemes)
    attended: Optional[Tensor] = None  # (steps,) attended text position per step, when recorded


class Synthesizer:
    """Chains the stages; see the module docstring.

    Args:
        model: an ``Echolancer`` (left on its device and in its train/eval mode).
        tokenizer: the ``CharTokenizer`` the model was trained with.
        bert: a ``BERTFrontEnd`` or None (zero emotion vectors).
        pre_encoder: a ``ScriptedPreEncoder`` or None (tokens only).
        vocoder: an ``ISTFTNetFE`` or None (Griffin-Lim when a pre-encoder is present).
        audio: the audio settings of the model's data (``ModelConfig.audio``);
            default: the shared settings.
        device: where BERT vectors and mels are computed (the model keeps its own device);
            "auto", "cpu", "cuda" or "cuda:N" (:func:`utils.device.pick_device`).
        griffin_lim_iters: iterations of the Griffin-Lim fallback.
    """

    def __init__(self, model, tokenizer: CharTokenizer, bert=None, pre_encoder=None, vocoder=None,
                 audio: Optional[AudioConfig] = None, device: Union[str, torch.device] = "cpu",
                 griffin_lim_iters: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.bert = bert
        self.pre_encoder = pre_encoder
        self.vocoder = vocoder
        self.audio = audio if audio is not None else AudioConfig()
        self.device = pick_device(device, what="Synthesizer device")
        self.griffin_lim_iters = griffin_lim_iters
        self._noted_griffin_lim = False
        self._reach: Optional[Reach] = None  # stream_reach(), measured on first use
        cfg = model.cfg
        if tokenizer.vocab_size > cfg.vocab_size:
            raise PipelineError("tokenizer", f"tokenizer has {tokenizer.vocab_size} symbols but the model's "
                                             f"vocab_size is {cfg.vocab_size}")
        if bert is not None:
            try:
                bert.check_width(cfg.emotion_input_size)
            except ValueError as e:
                raise PipelineError("bert", str(e)) from e
        if pre_encoder is not None:
            if pre_encoder.codebook_size != model.codebook_size:
                raise PipelineError("pre-encoder", f"{pre_encoder.model_dir}: codebook size {pre_encoder.codebook_size} "
                                    f"(fsq_levels {pre_encoder.fsq_levels}) differs from the model's "
                                    f"codebook_size {model.codebook_size}")
            if pre_encoder.mel_channels != cfg.mel_channels:
                raise PipelineError("pre-encoder", f"{pre_encoder.model_dir}: {pre_encoder.mel_channels} mel channels, "
                                    f"the model config says mel_channels {cfg.mel_channels}")
            try:
                check_same_audio(self.audio, pre_encoder.audio, f"pre-encoder {pre_encoder.model_dir}")
            except ValueError as e:
                raise PipelineError("pre-encoder", str(e)) from e
        if vocoder is not None:
            if pre_encoder is None:
                raise PipelineError("vocoder", "a vocoder needs mels: pass a pre-encoder too")
            if vocoder.audio is None:
                raise PipelineError("vocoder", "the vocoder's audio settings are unknown")
            try:
                check_same_audio(self.audio, vocoder.audio, "ISTFTNet vocoder")
            except ValueError as e:
                raise PipelineError("vocoder", str(e)) from e

    @property
    def sample_rate(self) -> int:
        return self.audio.sampling_rate

    @property
    def vocoder_name(self) -> Optional[str]:
        if self.pre_encoder is None:
            return None
        return "istftnet" if self.vocoder is not None else "griffin_lim"

    # ---- stages -----------------------------------------------------------------------------------

    def _tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor, list[str]]:
        """-> text ids (B, S) padded with the tokenizer's pad id, lengths (B,), normalised texts."""
        rows, normalized = [], []
        for text in texts:
            norm = self.tokenizer.normalize_text(text)
            ids = self.tokenizer.encode(text)
            if not ids or not self.tokenizer.is_speakable(ids):
                raise ValueError(f"{text!r} has nothing speakable after normalisation ({norm!r})")
            rows.append(ids)
            normalized.append(norm)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max())), self.tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, lengths, normalized

    def _emotion(self, texts: list[str]) -> Tensor:
        if self.bert is None:
            return torch.zeros(len(texts), self.model.cfg.emotion_input_size)
        return self.bert(texts).float()

    def _speakers(self, speakers: Optional[list[int]], n: int) -> Optional[Tensor]:
        multi = self.model.cfg.multi_speaker
        if speakers is None:
            return torch.zeros(n, dtype=torch.long) if multi else None
        if len(speakers) != n:
            raise ValueError(f"got {len(speakers)} speaker ids for {n} texts")
        if not multi and any(s != 0 for s in speakers):
            raise ValueError(f"the model is single-speaker; speaker ids must be 0, got {speakers}")
        return torch.tensor(speakers, dtype=torch.long) if multi else None

    def _inputs(self, texts: list[str], speakers: Optional[list[int]]):
        """Text ids (B, S), lengths (B,), normalised texts, speaker ids (B,) or None, emotion
        vectors (B, E) and the model's device; a failing stage raises its PipelineError."""
        model_dev = next(self.model.parameters()).device
        try:
            ids, src_lens, normalized = self._tokenize(texts)
        except ValueError as e:
            raise PipelineError("tokenizer", str(e)) from e
        try:
            spk = self._speakers(speakers, len(texts))
        except ValueError as e:
            raise PipelineError("echolancer", str(e)) from e
        try:
            em = self._emotion(texts)
        except Exception as e:
            raise _wrap("bert", e) from e
        return ids, src_lens, normalized, spk, em, model_dev

    def _mels(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Codec tokens (B, T) with valid tokens per row (B,) -> mel (B, T * downsample, C) float."""
        try:
            clean = tokens.masked_fill(torch.arange(tokens.shape[1])[None] >= lengths[:, None], 0)
            return self.pre_encoder.decode(clean, lengths).float()
        except Exception as e:
            raise _wrap("pre-encoder", e) from e

    def _note_griffin_lim(self) -> None:
        if not self._noted_griffin_lim:
            log.warning("no vocoder given: inverting mels with Griffin-Lim (%d iterations), a reference "
                        "rather than a vocoder; pass an ISTFTNet export for real audio", self.griffin_lim_iters)
            self._noted_griffin_lim = True

    def _to_wav(self, mels: Tensor, frames: Tensor) -> list[np.ndarray]:
        """mels (B, T, C) with valid frames per row -> waveforms of frames * hop samples."""
        hop = self.audio.hop_length
        if self.vocoder is not None:
            wav = self.vocoder(mels.transpose(1, 2).to(self.vocoder.device))  # the vocoder speaks (B, C, T)
            return [wav[b, : int(frames[b]) * hop].float().cpu().numpy() for b in range(len(frames))]
        self._note_griffin_lim()
        # One row at a time: the padding must not leak into the phase.
        return [self._griffin_lim(mels[b, : int(frames[b])]).numpy() for b in range(len(frames))]

    def _griffin_lim(self, mel: Tensor) -> Tensor:
        """One row's valid frames (n, C) -> (n * hop,) float32 samples in [-1, 1] (empty for n = 0)."""
        if mel.shape[0] == 0:
            return torch.zeros(0)
        return griffin_lim(mel.T.float().cpu(), self.audio, n_iter=self.griffin_lim_iters).clamp(-1.0, 1.0)

    @torch.no_grad()
    def synthesize(self, texts: list[str], speakers: Optional[list[int]] = None, **gen_kwargs: Any) -> list[Utterance]:
        """Synthesise a batch of texts.

        Args:
            texts: B sentences.  speakers: B speaker ids (multi-speaker models; default 0).
            gen_kwargs: passed to ``Echolancer.infer`` (max_length, temperature, top_k, top_p,
                generator, ...).
        Returns:
            B :class:`Utterance` objects, in order.
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("synthesize: texts must be a non-empty list of strings")
        ids, src_lens, normalized, spk, em, model_dev = self._inputs(list(texts), speakers)
        try:
            res = self.model.infer(
                None if spk is None else spk.to(model_dev), ids.to(model_dev), src_lens.to(model_dev),
                em_hidden=em.to(model_dev), **gen_kwargs,
            )
        except Exception as e:
            raise _wrap("echolancer", e) from e
        lengths = res.lengths.cpu()
        tokens = res.tokens.cpu()

        mels: Optional[Tensor] = None
        frames = lengths
        if self.pre_encoder is not None and tokens.shape[1] > 0:
            mels = self._mels(tokens, lengths)
            frames = lengths * self.pre_encoder.downsample
        wavs: list[Optional[np.ndarray]] = [None] * len(texts)
        if mels is not None:
            try:
                wavs = self._to_wav(mels, frames)
            except Exception as e:
                raise _wrap("vocoder", e) from e
        elif self.pre_encoder is not None:  # every row stopped at once: empty audio, not an error
            wavs = [np.zeros(0, dtype=np.float32) for _ in texts]

        out = []
        for b, text in enumerate(texts):
            n = int(lengths[b])
            mel = None
            if self.pre_encoder is not None:
                mel = mels[b, : int(frames[b])].cpu() if mels is not None else torch.zeros(0, self.audio.n_mels)
            out.append(Utterance(
                text=text, normalized_text=normalized[b], speaker=None if spk is None else int(spk[b]),
                tokens=tokens[b, :n].clone(), gate=res.gate[b, : n + 1].float().cpu(),
                hit_max_length=bool(res.hit_max_length[b]), mel=mel, wav=wavs[b],
                sample_rate=self.sample_rate, vocoder=self.vocoder_name, text_tokens=int(src_lens[b]),
                # The steps the row ran: its tokens, and the step that stopped it if it stopped.
                attended=None if res.attended is None
                else res.attended[b, : n + (0 if res.hit_max_length[b] else 1)].cpu(),
            ))
        return out

    # ---- streaming ---------------------------------------------------------------------------------

    @torch.no_grad()
    def render(self, tokens: Tensor, n_valid: int) -> Tensor:
        """A token span decoded on its own, as one-shot synthesis decodes a whole row.

        Args:
            tokens: (1, W) codec tokens; those from ``n_valid`` on are padding (masked, as the
                batch framing of :meth:`synthesize` masks them).
        Returns:
            ISTFTNet: (W * downsample * hop,) float32 samples (the padding's too). Griffin-Lim:
            the ``n_valid * downsample * hop`` samples of the valid frames, as :meth:`synthesize`.
        """
        mel = self._mels(tokens.cpu(), torch.tensor([n_valid]))  # (1, W * ds, C)
        try:
            if self.vocoder is not None:
                return self.vocoder(mel.transpose(1, 2).to(self.vocoder.device))[0].float().cpu()
            return self._griffin_lim(mel[0, : n_valid * self.pre_encoder.downsample])
        except Exception as e:
            raise _wrap("vocoder", e) from e

    def stream_reach(self) -> Reach:
        """The receptive field, in tokens, of what a chunk is decoded through, measured once
        (:func:`model.streaming.measure_reach`): pre-encoder and ISTFTNet, or with Griffin-Lim
        the pre-encoder alone (Griffin-Lim itself is not local)."""
        if self._reach is None:
            if self.pre_encoder is None:
                raise PipelineError("pre-encoder", "streaming needs a pre-encoder (tokens alone are not audio)")
            ds, codebook = self.pre_encoder.downsample, self.pre_encoder.codebook_size
            on_cpu = torch.device(self.pre_encoder.device).type == "cpu" and (
                self.vocoder is None or self.vocoder.device.type == "cpu")
            if self.vocoder is not None:
                self._reach = measure_reach(self.render, codebook, ds * self.audio.hop_length, exact=on_cpu)
            else:
                self._reach = measure_reach(lambda t, n: self._mels(t, torch.tensor([n]))[0], codebook, ds,
                                            exact=on_cpu)
        return self._reach

    def stream(self, text: str, speaker: Optional[int] = None, chunk_tokens: int = 32,
               **gen_kwargs: Any) -> SpeechStream:
        """Synthesise one text as a stream of audio chunks, decoding as it plays.

        Args:
            text: one sentence.  speaker: its speaker id (multi-speaker models; default 0).
            chunk_tokens: codec tokens decoded between chunks (>= 1): smaller = earlier first
                audio, more renders.
            gen_kwargs: as for :meth:`synthesize` (sampling keywords, ``generator``, ...).
        Returns:
            a :class:`SpeechStream`: iterate it for float32 (N,) chunks; with ISTFTNet they join to
            what :meth:`synthesize` gives for the same tokens (within float rounding).
        """
        if not isinstance(text, str):
            raise ValueError("stream: text must be one string (batch 1)")
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"stream: chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
        reach = self.stream_reach()  # measured once per synthesizer: not part of a stream's latency
        if self.vocoder is None:
            self._note_griffin_lim()
        started = time.perf_counter()
        ids, src_lens, normalized, spk, em, dev = self._inputs([text], None if speaker is None else [speaker])
        try:
            tokens = TokenStream(self.model, None if spk is None else spk.to(dev), ids.to(dev), src_lens.to(dev),
                                 em.to(dev), **self.model.with_generation_defaults(gen_kwargs))
        except Exception as e:
            raise _wrap("echolancer", e) from e
        # Griffin-Lim is not local: extra context and a crossfade instead of exact joins.
        blend = {} if self.vocoder is not None else {"context": GRIFFIN_LIM_CONTEXT, "overlap": GRIFFIN_LIM_OVERLAP}
        chunker = AudioChunker(self.render, reach, self.pre_encoder.downsample * self.audio.hop_length, **blend)
        head = Utterance(text=text, normalized_text=normalized[0], speaker=None if spk is None else int(spk[0]),
                         tokens=torch.zeros(0, dtype=torch.long), gate=torch.zeros(0), hit_max_length=False,
                         mel=None, wav=None, sample_rate=self.sample_rate, vocoder=self.vocoder_name,
                         text_tokens=int(src_lens[0]))
        return SpeechStream(tokens, chunker, chunk_tokens, head, started)


class SpeechStream:
    """The audio of one sentence, a chunk at a time (what :meth:`Synthesizer.stream` returns).

    Iterate it once for float32 (N,) numpy chunks. Afterwards :attr:`utterance` is the
    :class:`Utterance` (tokens, gate, the joined ``wav``; ``mel`` is not kept) and
    :attr:`first_audio_s` the seconds from the ``stream`` call to the first chunk.
    """

    def __init__(self, tokens: TokenStream, chunker: AudioChunker, chunk_tokens: int, head: Utterance,
                 started: float) -> None:
        self._tokens, self._chunker, self._chunk_tokens = tokens, chunker, chunk_tokens
        self._head, self._started = head, started
        self.first_audio_s: Optional[float] = None
        self.utterance: Optional[Utterance] = None
        self.chunk_sizes: list[int] = []  # samples per chunk handed out

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.utterance is not None or self.chunk_sizes:
            raise RuntimeError("a SpeechStream can be iterated once")
        pieces: list[np.ndarray] = []
        chunks = self._tokens.chunks(self._chunk_tokens)
        while True:
            try:
                new = next(chunks)
            except StopIteration:
                break
            except Exception as e:
                raise _wrap("echolancer", e) from e
            yield from self._hand_out(self._chunker.push(new), pieces)
        res = self._tokens.result()
        cut = bool(res.hit_max_length[0])
        # One-shot synthesis renders a stopped row with its stopping step's (padding) column.
        yield from self._hand_out(self._chunker.finish(pad_tokens=0 if cut else 1), pieces)
        n = int(res.lengths[0])
        self.utterance = replace(
            self._head, tokens=res.tokens[0, :n].cpu(), gate=res.gate[0, : n + 1].float().cpu(), hit_max_length=cut,
            wav=np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32),
            attended=None if res.attended is None else res.attended[0, : n + (0 if cut else 1)].cpu(),
        )

    def _hand_out(self, audio: np.ndarray, pieces: list[np.ndarray]) -> Iterator[np.ndarray]:
        if audio.size == 0:
            return
        if self.first_audio_s is None:
            self.first_audio_s = time.perf_counter() - self._started
        pieces.append(audio)
        self.chunk_sizes.append(int(audio.size))
        yield audio


def build_synthesizer(model, tokenizer: CharTokenizer, bert_model=None, pre_encoder_dir=None, istftnet_dir=None,
                      device: Union[str, torch.device] = "cpu", audio: Optional[AudioConfig] = None) -> Synthesizer:
    """Load the front ends and build a :class:`Synthesizer`.

    Args:
        model, tokenizer: the Echolancer and its tokenizer.
        bert_model: hub name / local directory of a ``transformers`` encoder, a loaded
            ``BERTFrontEnd``, or None.
        pre_encoder_dir: an exported pre-encoder directory (or a loaded ``ScriptedPreEncoder``), or None.
        istftnet_dir: an exported ISTFTNet directory (or a loaded ``ISTFTNetFE``), or None.
        device: where the front ends run.  audio: the model's audio settings (default: shared).
    """
    def load(stage: str, source, loader):
        """A path is loaded (a failure names the stage); an already loaded component passes through."""
        if source is None or not isinstance(source, (str, bytes, os.PathLike)):
            return source
        try:
            return loader(source)
        except Exception as e:
            raise _wrap(stage, e, loading=True) from e

    def load_bert(path):
        from bertfe import BERTFrontEnd

        return BERTFrontEnd(path, device=device)

    def load_pre_encoder(path):
        from scripted_preencoder import ScriptedPreEncoder

        return ScriptedPreEncoder(path, device=device)

    def load_vocoder(path):
        from istftnetfe import ISTFTNetFE

        return ISTFTNetFE.load_ts(path, device)

    bert = load("bert", bert_model, load_bert)
    pre = load("pre-encoder", pre_encoder_dir, load_pre_encoder)
    voc = load("vocoder", istftnet_dir, load_vocoder)
    return Synthesizer(model, tokenizer, bert=bert, pre_encoder=pre, vocoder=voc, audio=audio, device=device)
