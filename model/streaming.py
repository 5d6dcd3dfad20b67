"""Streaming synthesis: codec tokens as the decoder makes them, audio a chunk at a time.

    stream = TokenStream(model, speakers, texts, src_lens, em_hidden, temperature=0.0)
    for new_tokens in stream.chunks(32):        # (n,) long on the CPU, n <= 32
        ...
    res = stream.result()                       # the GenerationResult generate() would give

    chunker = AudioChunker(render, reach, samples_per_token)     # model/stream_audio.py
    audio = chunker.push(new_tokens)            # float32 samples that are final, possibly empty
    audio = chunker.finish(pad_tokens)          # the rest

Decoding is :class:`model.generation.DecodeLoop`, the loop ``generate`` runs, stepped here
instead of run to its end, so the stream's tokens are the one-shot tokens.

Exact audio. Decoding a token span through the pre-encoder and the vocoder alone differs from
decoding it inside the whole utterance only where the span's edges reach: a sample depends on
the tokens within ``reach.left`` before and ``reach.right`` after its own. So each render covers
``reach.left`` tokens of left context (their samples are thrown away), and the last
``reach.right`` tokens are held back until more arrive or the utterance ends. The samples that
come out are then computed from exactly the inputs one-shot synthesis gives them: with a
convolutional vocoder the concatenated stream equals one-shot synthesis up to float rounding.
The reach is measured from the modules themselves (:func:`model.stream_audio.measure_reach`): a traced vocoder keeps
no kernel sizes or dilations to add up.

Griffin-Lim is not local (its phase is a global estimate from a random start), so there the
chunker renders ``context`` extra tokens and crossfades ``overlap`` tokens between renders
(approximate; see README "Streaming and deployment" for how close).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import Tensor

from model.generation import DecodeLoop, GenerationResult, start_decode

# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


class TokenStream:
    """One utterance's decode, read a chunk of tokens at a time (batch 1).

    Args: those of :func:`model.generation.generate` (``speakers`` (1,) or None, ``texts`` (1, S),
        ``src_lens`` (1,), ``em_hidden`` (1, E) or None, the sampling keywords, ``generator``, ...).
    """

    def __init__(self, model, speakers: Optional[Tensor], texts: Tensor, src_lens: Tensor,
                 em_hidden: Optional[Tensor] = None, **kwargs: Any) -> None:
        if texts.shape[0] != 1:
            raise ValueError(f"TokenStream: batch size 1 only, got texts of shape {tuple(texts.shape)}")
        self.model = model
        self._was_training = model.training
        model.eval()  # dropout off for the decode; restored when the stream ends (close())
        try:
            with torch.inference_mode():
                self.loop: DecodeLoop = start_decode(model, speakers, texts, src_lens, em_hidden, **kwargs)
        except BaseException:
            self.close()
            raise
        self.emitted = 0  # tokens handed out so far
        self.length: Optional[int] = None  # the utterance's token count, once it has stopped

    def chunks(self, chunk_tokens: int) -> Iterator[Tensor]:
        """Yield the new codec tokens, (n,) long on the CPU, after every ``chunk_tokens`` steps
        (n < ``chunk_tokens`` only for the last chunk), until the row stops."""
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        loop = self.loop
        try:
            while self.length is None:
                with torch.inference_mode():  # per step, so the caller's code between chunks runs as usual
                    ran = 0
                    while ran < chunk_tokens and loop.advance():
                        ran += 1
                # One read of the device per chunk: has the row stopped, and where?
                if bool(loop.finished[0]) or ran < chunk_tokens:
                    self.length = int(loop.lengths[0])
                upto = loop.t if self.length is None else self.length
                new = loop.tokens[0, self.emitted : upto].cpu().clone()
                self.emitted = upto
                if new.numel():
                    yield new
        finally:
            self.close()

    def result(self) -> GenerationResult:
        """The decode's result (as :func:`model.generation.generate` returns it) once it has stopped."""
        return self.loop.result().clone()

    def close(self) -> None:
        """Give the model back its train/eval mode (also done when :meth:`chunks` ends)."""
        self.model.train(self._was_training)
