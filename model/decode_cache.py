"""Decode state that outlives a ``generate`` call: what lets repeated calls replay one CUDA graph.

    state, step = decoders_for(model).load(model, enc, B, max_length, dtype, graph=True)
    logits, stop = step(tokens, input_pos, state)      # a replay of the graph captured once

A CUDA graph reads and writes fixed addresses, so the buffers it was captured on must survive
from one call to the next. :class:`StaticDecoders` keeps them: per shape key, a
:class:`StaticDecodeState` (KV caches, cross K/V, masks) and, on CUDA, the :class:`CudaGraphStep`
captured on it, least recently used dropped beyond :data:`MAX_CAPTURED`.

The model owns its :class:`StaticDecoders` as a plain attribute (not a sub-module, so never in the
state dict), created on first use. It holds no reference back to the model, so deleting the model
frees the captured states with it; a pickled or copied model starts with an empty one (a copy has
its own weights, which the captured graphs do not read).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from model.tracking import AlignSpec, AlignState

if TYPE_CHECKING:  # annotations only: model.echolancer imports the generation modules lazily
    from model.echolancer import DecodeState, Echolancer, EncoderState

StepFn = Callable[[Tensor, Tensor, "DecodeState"], tuple[Tensor, Optional[Tensor]]]

TEXT_BUCKET = 64  # the text memory is padded to a multiple of this (the cross mask hides the padding)
MAX_CAPTURED = 4  # captured decoders kept per model (least recently used dropped)
_ATTRIBUTE = "_static_decoders"  # where the model keeps its StaticDecoders


class CudaGraphStep:
    """``model.decode_step`` captured once in a CUDA graph and replayed every step.

    At batch 1 a small decoder is bound by kernel-launch latency, not arithmetic; replaying a
    captured graph launches the whole step at once (what ``torch.compile(mode="reduce-overhead")``
    does, without depending on Dynamo guards over the cache objects). This works because the step
    has static shapes: the KV cache has a fixed length, the position is a device tensor, and every
    tensor the graph reads or writes (the cache buffers, cross K/V, the static inputs below) keeps
    its address: the state is a :class:`StaticDecodeState`, so the captured step is replayed by
    every later call with the same shapes (:class:`StaticDecoders`), not captured again.

    Args:
        model: the Echolancer (eval mode, on a CUDA device).  state: from ``init_decode_state``.
        batch_size: B.
    """

    def __init__(self, model: Echolancer, state: DecodeState, batch_size: int) -> None:
        device = state.cond.device
        self.tokens = torch.full((batch_size, 1), model.bos_id, dtype=torch.long, device=device)
        self.input_pos = torch.zeros(1, dtype=torch.long, device=device)
        # Everything below runs with the model's device current: capture uses the current
        # device's streams, so on cuda:1 while cuda:0 is current it would capture nothing.
        with torch.cuda.device(device):
            # Warm up on a side stream (cuBLAS handles, autocast weight casts) as CUDA graphs
            # require. The junk written at cache position 0 is overwritten by the real step 0.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    model.decode_step(self.tokens, self.input_pos, state)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device)):
                self.logits, self.stop = model.decode_step(self.tokens, self.input_pos, state)

    def __call__(self, tokens: Tensor, input_pos: Tensor, state: DecodeState) -> tuple[Tensor, Optional[Tensor]]:
        self.tokens.copy_(tokens)
        self.input_pos.copy_(input_pos)
        with torch.cuda.device(self.tokens.device):
            self.graph.replay()
        # The outputs are overwritten by the next replay; callers consume them before that.
        return self.logits, self.stop


class StaticDecodeState:
    """Decode buffers at fixed addresses, reused by every call with the same shapes.

    Everything a captured graph reads that changes from one utterance to the next (the KV caches,
    each layer's cross K/V, the cross mask, the decoder conditioning) lives here, allocated once,
    and :meth:`load` copies a new utterance into it. The text is padded to ``text_len`` (a multiple
    of :data:`TEXT_BUCKET`): padded keys are zero and masked, so the attention is that of the
    unpadded text.

    Args:
        model: the Echolancer.  enc: a first encoder state (gives the dtypes).  batch_size: B.
        max_len: KV cache length.  text_len: padded text length (≥ every text loaded).
        dtype: the KV caches' dtype.  align: what the decode does with its attention (its
            per-row position lives here too).
    """

    def __init__(self, model: Echolancer, enc: EncoderState, batch_size: int, max_len: int, text_len: int,
                 dtype: torch.dtype, align: Optional[AlignSpec] = None) -> None:
        from model.echolancer import DecodeState
        from model.layers import KVCache

        device = enc.memory.device
        self.text_len = text_len
        cross_kv, _, cond = model.decode_memory(enc)
        caches, buffers = [], []
        for layer, (k, v) in zip(model.dec_layers, cross_kv):
            a = layer.self_attn
            caches.append(KVCache(batch_size, a.n_kv_heads, max_len, a.head_dim, dtype, device))
            shape = (batch_size, k.shape[1], text_len, k.shape[3])
            buffers.append((torch.zeros(shape, dtype=k.dtype, device=device),
                            torch.zeros(shape, dtype=v.dtype, device=device)))
        mask = torch.zeros(batch_size, 1, 1, text_len, dtype=torch.bool, device=device)
        state = AlignState(align, batch_size, device) if align is not None and align.active else None
        self.state = DecodeState(caches, buffers, mask, torch.zeros_like(cond), max_len, state)

    def load(self, model: Echolancer, enc: EncoderState) -> DecodeState:
        """Copy a new utterance batch into the buffers (no new allocation) and return the state."""
        S = enc.memory.shape[1]
        if S > self.text_len:
            raise ValueError(f"text of {S} tokens does not fit the {self.text_len} of this decode state")
        cross_kv, cross_mask, cond = model.decode_memory(enc)
        st = self.state
        for cache in st.caches:  # a fresh state starts from zeros: so does a reused one
            cache.k.zero_()
            cache.v.zero_()
        for (kb, vb), (k, v) in zip(st.cross_kv, cross_kv):
            kb[:, :, :S].copy_(k)
            kb[:, :, S:].zero_()
            vb[:, :, :S].copy_(v)
            vb[:, :, S:].zero_()
        st.cross_mask[..., :S].copy_(cross_mask)
        st.cross_mask[..., S:] = False
        st.cond.copy_(cond)
        if st.align is not None:
            st.align.load((~enc.src_pad).sum(dim=1))
        return st


def _weights_fingerprint(model: Echolancer) -> tuple:
    """Address, dtype and shape of every parameter and buffer: a captured graph reads exactly these
    addresses, so it stays valid while they stay the same (``.to()``, ``.half()`` or replacing a
    parameter change them; ``load_state_dict`` copies in place and keeps them)."""
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape), str(t.device))
                 for t in (*model.parameters(), *model.buffers()))


class StaticDecoders:
    """One model's reusable decode states, by shape key, least recently used dropped.

    ``entries`` maps a key to (:class:`StaticDecodeState`, :class:`CudaGraphStep` or None). No
    entry keeps a bound method of the model: the model owns this object, and a reference back
    would keep a deleted model (and its captured graphs) alive until the cycle collector runs.

    Args:
        capacity: most entries kept.
    """

    def __init__(self, capacity: int = MAX_CAPTURED) -> None:
        self.capacity = capacity
        self.fingerprint: Optional[tuple] = None
        self.entries: OrderedDict[tuple, tuple[StaticDecodeState, Optional[CudaGraphStep]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def __reduce__(self):
        # Pickling and copy.deepcopy of the model: graphs and device buffers do not travel, and a
        # copy's weights live elsewhere anyway. The copy starts empty.
        return type(self), (self.capacity,)

    def clear(self) -> None:
        self.entries.clear()
        self.fingerprint = None

    def load(self, model: Echolancer, enc: EncoderState, batch_size: int, max_length: int, dtype: torch.dtype,
             graph: bool, align: Optional[AlignSpec] = None) -> tuple[DecodeState, StepFn]:
        """A decode state loaded with ``enc`` and its step function, reused across calls.

        Keyed by (batch size, max length, cache dtype, device, text-length bucket, autocast, graph,
        what the decode does with its attention): the first call with a key allocates a
        :class:`StaticDecodeState` (and, with ``graph``, captures a :class:`CudaGraphStep` on it);
        later calls copy their inputs into the same buffers and replay. Every entry is dropped
        when the model's weights move (see :func:`_weights_fingerprint`).
        """
        device = enc.memory.device
        bucket = -(-enc.memory.shape[1] // TEXT_BUCKET) * TEXT_BUCKET
        autocast = torch.is_autocast_enabled(device.type)
        key = (batch_size, max_length, dtype, str(device), bucket,
               torch.get_autocast_dtype(device.type) if autocast else None, graph, align)
        fingerprint = _weights_fingerprint(model)
        if fingerprint != self.fingerprint:
            self.clear()
            self.fingerprint = fingerprint
        if key in self.entries:
            self.entries.move_to_end(key)
            static, step = self.entries[key]
            return static.load(model, enc), step or model.decode_step
        static = StaticDecodeState(model, enc, batch_size, max_length, bucket, dtype, align)
        state = static.load(model, enc)
        step = CudaGraphStep(model, state, batch_size) if graph else None
        self.entries[key] = (static, step)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return state, step or model.decode_step


def decoders_for(model: Echolancer) -> StaticDecoders:
    """The model's :class:`StaticDecoders`, created on first use.

    A plain instance attribute: ``nn.Module`` keeps it out of ``state_dict``, ``parameters`` and
    ``.to()``, and models built or unpickled before it existed simply get one here.
    """
    decoders = model.__dict__.get(_ATTRIBUTE)
    if decoders is None:
        decoders = StaticDecoders()
        setattr(model, _ATTRIBUTE, decoders)
    return decoders
