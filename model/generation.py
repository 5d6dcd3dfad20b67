"""Batched autoregressive generation of codec tokens: the sampling loop behind ``Echolancer.infer``.

    res = generate(model, speakers, texts, src_lens, max_length=1000, temperature=0.0)
    res.tokens   # (B, T) codec tokens, pad_id after each row's end (no BOS/EOS in it)
    res.lengths  # (B,) tokens per row;  res.gate (B, T) stop probability per step
    res.hit_max_length  # (B,) True where a row never stopped

What to generate is a :class:`model.sampling.SamplingParams` (built from the keywords, or passed
as ``params=``); how to run the decode (cache, compilation, generator) are ``generate``'s own
keywords. The decoder's per-call state that CUDA graphs reuse lives in ``model/decode_cache.py``.

One loop. :class:`DecodeLoop` runs one step per ``advance()``; :func:`generate` runs it to the end
and :class:`model.streaming.TokenStream` reads its tokens while it runs (``start_decode`` sets
either up), so one-shot and streaming decoding cannot drift apart.

How one step works. The encoder runs once. With ``use_cache=True`` (the default) the decoder runs
one position per step through ``model.decode_step``: self-attention keys/values live in static
``KVCache`` buffers and cross-attention keys/values are computed once per utterance, so a step
costs the same at position 10 and at position 1000. ``use_cache=False`` re-runs the whole decoder
over the prefix at every step (quadratic; the reference the tests compare against).

Stopping. Step ``t`` produces either codec token ``t`` or the stop. Without a stop head the stop
is the EOS token being chosen, and the gate is the model's P(EOS) (softmax over the vocabulary,
temperature 1, PAD and BOS excluded). With a stop head the gate is sigmoid(stop logit) and a row
also stops when it passes ``gate_threshold``. A stopped row stays stopped: it is fed PAD (causal
attention means it cannot affect other rows) and records ``pad_id``. ``max_length`` always bounds
the loop. PAD and BOS are never chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from model.decode_cache import StepFn, decoders_for
from model.sampling import CodeGrid, SamplingParams, apply_repetition_penalty, choose_tokens
from model.tracking import AlignSpec, AlignState, mean_attention, steer

if TYPE_CHECKING:  # imported for annotations only: model.echolancer imports this module lazily
    from model.echolancer import Echolancer, EncoderState

# One decoder step: (B, 1) previous tokens and the step index -> logits (B, V), stop logits (B,).
Step = Callable[[Tensor, int], tuple[Tensor, Optional[Tensor]]]


@dataclass
class GenerationResult:
    """What :func:`generate` returns (all on the model's device).

    tokens: (B, T) long codec tokens, ``pad_id`` from each row's length on.
    lengths: (B,) long, codec tokens per row (EOS not counted).
    gate: (B, T) float32 stop probability at each step while the row was running, the step that
        stopped it included (column ``lengths[b]`` when that is < T); 0 afterwards.
    hit_max_length: (B,) bool, True where the row reached its length bound without stopping: the
        global ``max_length``, or its own bound from ``max_tokens_per_text_token``.
    steps: decoder steps actually run (≥ T; the loop checks for "all rows done" every few steps,
        and on CUDA reads each check's answer one check later, so it never waits for the device).
    attended: (B, T) long, the text position each step's cross-attention peaked at (averaged over
        layers and heads), when the decode watched its attention (a window, tracking, or
        ``record_alignment``); else None. See :func:`model.tracking.alignment_report`.
    """

    tokens: Tensor
    lengths: Tensor
    gate: Tensor
    hit_max_length: Tensor
    steps: int
    attended: Optional[Tensor] = None

    def clone(self) -> GenerationResult:
        """A copy with its own tensors: the decode's buffers live in inference mode and are reused,
        while callers may modify what they get in place."""
        return GenerationResult(self.tokens.clone(), self.lengths.clone(), self.gate.clone(),
                                self.hit_max_length.clone(), self.steps,
                                None if self.attended is None else self.attended.clone())


def generate(
    model: Echolancer,
    speakers: Optional[Tensor],
    texts: Tensor,
    src_lens: Tensor,
    em_hidden: Optional[Tensor] = None,
    *,
    vq_tokens: Optional[Tensor] = None,
    vq_token_lens: Optional[Tensor] = None,
    use_cache: bool = True,
    compile: bool = False,
    generator: Optional[torch.Generator] = None,
    sync_every: int = 16,
    params: Optional[SamplingParams] = None,
    **sampling: Any,
) -> GenerationResult:
    """Generate codec tokens for a batch of texts.

    Args:
        model: an ``Echolancer``; run in eval mode here (its training flag is restored after).
        speakers: (B,) speaker ids for multi-speaker models, else None.
        texts: (B, S) text ids, anything after each row's length.  src_lens: (B,) text lengths.
        em_hidden: (B, emotion_input_size) BERT sentence vectors or None (zero vector).
        vq_tokens, vq_token_lens: (B, R) reference codec tokens and (B,) lengths (vq_token_mode).
        use_cache: KV-cached one-step decoding (fast) or the full decoder every step (reference).
        compile: with the cache, capture the one-step decode in a CUDA graph (CUDA) or compile it
            with Inductor (CPU). Shapes are static: the cache holds exactly ``max_length`` positions.
            On CUDA the captured step is kept (``model/decode_cache.py``): a later call with the
            same batch size, ``max_length``, dtype, device and text-length bucket replays it.
        generator: a ``torch.Generator`` on the model's device for reproducible sampling.
        sync_every: steps between checks whether every row is done (on CUDA a check reads the
            previous check's answer, copied without waiting; results do not depend on it).
        params: what to generate, as a :class:`SamplingParams`; keywords in ``sampling`` replace
            its fields. None = the defaults.
        **sampling: the fields of :class:`SamplingParams` (``max_length``, ``temperature``,
            ``top_k``, ``top_p``, ``repetition_penalty``, ``gate_threshold``, ``min_length``,
            ``min/max_tokens_per_text_token``, ``attention_window``, ``tracking``,
            ``record_alignment``); see there for their meaning.
    Returns:
        a :class:`GenerationResult`.
    """
    was_training = model.training
    model.eval()  # dropout off: generation must be deterministic given the generator
    try:
        # inference_mode rather than no_grad: it skips version counting, ~20 % off a CPU step.
        with torch.inference_mode():
            loop = start_decode(model, speakers, texts, src_lens, em_hidden, vq_tokens=vq_tokens,
                                vq_token_lens=vq_token_lens, use_cache=use_cache, compile=compile,
                                generator=generator, sync_every=sync_every, params=params, **sampling)
            while loop.advance():
                pass
            res = loop.result()
    finally:
        model.train(was_training)
    return res.clone()  # outside inference mode: plain tensors


def start_decode(
    model: Echolancer,
    speakers: Optional[Tensor],
    texts: Tensor,
    src_lens: Tensor,
    em_hidden: Optional[Tensor] = None,
    *,
    vq_tokens: Optional[Tensor] = None,
    vq_token_lens: Optional[Tensor] = None,
    use_cache: bool = True,
    compile: bool = False,
    generator: Optional[torch.Generator] = None,
    sync_every: int = 16,
    params: Optional[SamplingParams] = None,
    **sampling: Any,
) -> DecodeLoop:
    """Check the request, run the encoder and set up the decode; no decoder step is run yet.

    Arguments as for :func:`generate`. Call it, and every :meth:`DecodeLoop.advance`, with the
    model in eval mode and under ``torch.inference_mode()`` (:func:`generate` does both; the
    streaming decode in ``model/streaming.py`` enters inference mode around each step).
    """
    p = _sampling_params(params, sampling)
    p.check_vocab(model.n_vocab, model.codebook_size)
    _check_generator(generator, texts.device)
    enc = model.encode(speakers, texts, src_lens, em_hidden, vq_tokens, vq_token_lens)
    step, tracker = _start_decoder(model, enc, src_lens, p, use_cache, compile)
    return DecodeLoop(model, step, tracker, src_lens, p, generator, max(1, sync_every), texts.device)


def _sampling_params(params: Optional[SamplingParams], sampling: dict[str, Any]) -> SamplingParams:
    unknown = sorted(set(sampling) - SamplingParams.names())
    if unknown:  # named as Python names an unknown keyword of generate() itself
        raise TypeError(f"generate() got an unexpected keyword argument {unknown[0]!r}")
    if params is None:
        return SamplingParams(**sampling)
    return replace(params, **sampling) if sampling else params


def _check_generator(generator: Optional[torch.Generator], device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generate: the generator is on {generator.device.type} but the model runs on {device.type}; "
            f"create it with torch.Generator(device='{device.type}')"
        )


# --------------------------------------------------------------------------------------------
# One-step decoders: cached (eager, compiled or CUDA graph) and the uncached reference
# --------------------------------------------------------------------------------------------


def _start_decoder(model: Echolancer, enc: EncoderState, src_lens: Tensor, p: SamplingParams,
                   use_cache: bool, compile: bool) -> tuple[Step, Optional[AlignState]]:
    """The step function of this decode and the alignment tracker it updates (None = not watched).

    Args:
        enc: the encoded batch.  src_lens: (B,) text lengths.
    """
    if not use_cache:
        full = _Recompute(model, enc, src_lens, p.align, p.max_length)
        return full, full.tracker
    device, B = enc.memory.device, enc.memory.shape[0]
    dtype = _cache_dtype(model, device)
    if _uses_static_decoder(device, compile):
        state, step_fn = decoders_for(model).load(model, enc, B, p.max_length, dtype,
                                                  graph=device.type == "cuda", align=p.align)
    else:
        state = model.init_decode_state(enc, p.max_length, dtype, p.align)
        step_fn = _step_function(model, compile)
    positions = torch.arange(p.max_length, device=device)

    def step(prev: Tensor, t: int) -> tuple[Tensor, Optional[Tensor]]:
        return step_fn(prev, positions[t : t + 1], state)

    return step, state.align


class _Recompute:
    """The uncached reference: the whole decoder over the prefix at every step (quadratic).

    With a window or tracking, each past step is steered by the position it had then, as the
    cached decoder saw it, so cached and uncached decoding give the same tokens.

    Args:
        model: the Echolancer.  enc: the encoded batch.  src_lens: (B,) text lengths.
        align: what to do with the attention.  max_length: most steps.
    """

    def __init__(self, model: Echolancer, enc: EncoderState, src_lens: Tensor, align: AlignSpec,
                 max_length: int) -> None:
        B, device = enc.memory.shape[0], enc.memory.device
        self.model, self.enc, self.align = model, enc, align
        # Decoder inputs so far: BOS, then each row's tokens (PAD once a row has stopped).
        self.inputs = torch.full((B, max_length), model.pad_id, dtype=torch.long, device=device)
        self.inputs[:, 0] = model.bos_id
        self.tracker = AlignState(align, B, device).load(src_lens) if align.active else None
        self.valid = (~enc.src_pad)[:, None, :]  # (B, 1, S)
        self.pos_hist = torch.zeros(B, max_length, dtype=torch.long, device=device)  # each step's position
        self.dtype = _cache_dtype(model, device)

    def __call__(self, prev: Tensor, t: int) -> tuple[Tensor, Optional[Tensor]]:
        model, inputs = self.model, self.inputs
        inputs[:, t] = prev[:, 0]
        if self.tracker is None:
            return model.project(model.decode(inputs[:, : t + 1], self.enc)[:, -1])
        self.pos_hist[:, t] = self.tracker.pos
        weights: list[Tensor] = []
        h = model.decode(inputs[:, : t + 1], self.enc, cross_weights=weights,
                         steer=steer(self.pos_hist[:, : t + 1], self.valid, self.align, self.dtype))
        self.tracker.update(mean_attention(weights))
        return model.project(h[:, -1])


def _step_function(model: Echolancer, compile: bool) -> StepFn:
    if not compile:
        return model.decode_step
    # Inductor fuses the step's small kernels; static shapes, so one compilation. (CUDA takes the
    # captured graph of ``model/decode_cache.py`` instead.)
    return torch.compile(model.decode_step, dynamic=False)


def _uses_static_decoder(device: torch.device, compile: bool) -> bool:
    """CUDA graphs (``compile`` on CUDA) need the reusable state; every other path stays fresh."""
    return compile and device.type == "cuda"


def _cache_dtype(model: Echolancer, device: torch.device) -> torch.dtype:
    """The dtype keys/values are produced in: the autocast dtype under autocast, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.head.weight.dtype


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class DecodeLoop:
    """The decode loop, one step per :meth:`advance`: the one loop behind :func:`generate` (which
    runs it to the end) and :class:`model.streaming.TokenStream` (which reads tokens as they come).

    See the module docstring for what a step does. After each :meth:`advance` that returned True,
    column ``t - 1`` of :attr:`tokens` holds the step's token (``pad_id`` once a row has finished)
    and :attr:`finished` says which rows are done; nothing is read back from the device here
    except every ``sync_every`` steps (the "all rows done?" check).

    Args:
        model: the Echolancer.  step: the one-step decoder.  tracker: the alignment state ``step``
            updates, or None.  src_lens: (B,) text lengths (the per-row length bounds).
        p: what to generate.  generator: for sampling, or None.  sync_every: steps between
            "all done?" checks.  device: the model's device.
    """

    def __init__(self, model: Echolancer, step: Step, tracker: Optional[AlignState], src_lens: Tensor,
                 p: SamplingParams, generator: Optional[torch.Generator], sync_every: int,
                 device: torch.device) -> None:
        B, T_max = src_lens.shape[0], p.max_length
        self.model, self.step, self.tracker, self.p, self.generator = model, step, tracker, p, generator
        self.sync_every, self.device, self.B, self.T_max = sync_every, device, B, T_max
        pad = model.pad_id
        self.tokens = torch.full((B, T_max), pad, dtype=torch.long, device=device)  # (B, T_max)
        self.gate = torch.zeros(B, T_max, dtype=torch.float32, device=device)  # (B, T_max)
        self.lengths = torch.full((B,), T_max, dtype=torch.long, device=device)
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.cut = torch.zeros(B, dtype=torch.bool, device=device)  # rows stopped by their length bound
        self.row_min, self.row_max = (b.to(device) for b in p.row_bounds(src_lens))
        self.seen = (torch.zeros(B, model.n_vocab, dtype=torch.bool, device=device)
                     if p.repetition_penalty != 1.0 else None)
        self.never, self.is_eos = _special_masks(model, device)
        self.prev = torch.full((B, 1), model.bos_id, dtype=torch.long, device=device)
        self.all_done = _DonePoll(device, deferred=_defer_done_poll(device))
        self.attended = torch.zeros(B, T_max, dtype=torch.long, device=device) if tracker is not None else None
        self.grid = CodeGrid(p.code_levels, device) if p.code_levels is not None else None
        self.t = 0  # steps run so far
        self.over = False  # the "all done" check said so

    def advance(self) -> bool:
        """Run one decoder step; False (and nothing run) once the decode is over."""
        if self.over or self.t >= self.T_max:
            return False
        model, p, t, tracker = self.model, self.p, self.t, self.tracker
        eos, pad = model.eos_id, model.pad_id
        logits, stop_logits = self.step(self.prev, t)
        self.t = t + 1
        logits = logits.float()
        early = t < self.row_min  # (B,)
        if tracker is not None:
            self.attended[:, t] = tracker.peak
            reached = tracker.may_stop()
            if reached is not None:  # no EOS before the attention has reached the end of the text
                early = early | ~reached

        allowed = logits.masked_fill(self.never, float("-inf"))
        # The stop probability reported for this step (the model's own, before any sampling knobs).
        gate = torch.sigmoid(stop_logits.float()) if stop_logits is not None else allowed.softmax(dim=-1)[:, eos]
        scores = allowed.masked_fill(early[:, None] & self.is_eos, float("-inf"))
        if self.seen is not None:
            scores = apply_repetition_penalty(scores, self.seen, p.repetition_penalty)
        chosen = choose_tokens(scores, p.temperature, p.top_k, p.top_p, self.generator)
        if self.grid is not None:  # whether to stop is still drawn; what to say is the expected code
            chosen = torch.where(chosen == eos, chosen, self.grid.expected(scores, p.temperature, p.top_k, p.top_p))

        stop_now = chosen == eos
        if stop_logits is not None:
            stop_now = stop_now | ((gate > p.gate_threshold) & ~early)
        running = ~self.finished
        self.lengths = torch.where(running & stop_now, t, self.lengths)
        self.gate[:, t] = torch.where(running, gate, 0.0)
        finished = self.finished | stop_now
        token = torch.where(finished, pad, chosen)
        self.tokens[:, t] = token
        # A running row that now holds its maximum number of tokens is cut (and reported).
        at_bound = ~finished & (t + 1 >= self.row_max)
        self.lengths = torch.where(at_bound, t + 1, self.lengths)
        self.cut = self.cut | at_bound
        self.finished = finished | at_bound
        self.prev = token[:, None]
        if self.seen is not None:
            self.seen[torch.arange(self.B, device=self.device), token] |= ~self.finished  # stopped rows record nothing

        if (t + 1) % self.sync_every == 0 and self.all_done(self.finished):
            self.over = True
        return True

    def result(self) -> GenerationResult:
        """What the decode produced so far (all of it once :meth:`advance` returned False)."""
        steps = self.t
        # Keep the columns up to the last step any row ran (its stopping step included).
        T = int(torch.where(self.cut, self.lengths, self.lengths + 1).max().clamp(max=steps))
        return GenerationResult(self.tokens[:, :T], self.lengths, self.gate[:, :T], self.cut, steps,
                                None if self.attended is None else self.attended[:, :T])


def _special_masks(model: Echolancer, device: torch.device) -> tuple[Tensor, Tensor]:
    """(V,) bool masks: ids never chosen (PAD, BOS) and the EOS id (refused below a row's minimum)."""
    never = torch.zeros(model.n_vocab, dtype=torch.bool, device=device)
    never[[model.bos_id, model.pad_id]] = True
    is_eos = torch.zeros(model.n_vocab, dtype=torch.bool, device=device)
    is_eos[model.eos_id] = True
    return never, is_eos


class _DonePoll:
    """Answers "has every row finished?" at each check.

    Immediate mode reads the flag at once (a host sync at every check). Deferred mode (CUDA) starts
    a non-blocking copy of the flag to pinned memory and answers with the *previous* check's flag,
    whose copy finished long ago: the loop never waits for the device, and may run one check
    interval more than needed, which changes no result (finished rows only record PAD).
    """

    def __init__(self, device: torch.device, deferred: bool) -> None:
        self.deferred = deferred
        self.cuda = device.type == "cuda"
        self.pending = False
        if deferred and self.cuda:
            self.host = torch.zeros((), dtype=torch.bool, pin_memory=True)
            self.event = torch.cuda.Event()

    def __call__(self, finished: Tensor) -> bool:
        if not self.deferred:
            return bool(finished.all())
        done = False
        if self.pending:
            if self.cuda:
                self.event.synchronize()  # the copy started one check ago: long done
            done = bool(self.host)
        flag = finished.all()
        if self.cuda:
            self.host.copy_(flag, non_blocking=True)
            self.event.record()
        else:
            self.host = flag
        self.pending = True
        return done


def _defer_done_poll(device: torch.device) -> bool:
    return device.type == "cuda"
