"""Echolancer building blocks, read top to bottom: helpers, attention, feed-forward, layers.

Conventions used throughout:
    B batch, S text length, T audio length, D model width, H query heads, KVH key/value heads,
    hd = D // H head width. A *padding mask* is a bool tensor, True at padded positions.
    An *attention mask* follows ``F.scaled_dot_product_attention``: bool (True = may attend) or
    a float bias added to the scores.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.preencoder import FSQ  # the codec's token numbering (CodeFactors)

# --------------------------------------------------------------------------------------------
# Helpers: positions, ALiBi, masks
# --------------------------------------------------------------------------------------------


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """Absolute sinusoidal position encodings (Vaswani et al. 2017), used when ALiBi is off.

    Args:
        positions: (T,) integer positions.
        dim: encoding width (even or odd).
    Returns:
        (T, dim) float32 encodings.
    """
    half = (dim + 1) // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]  # (T, half)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # sin, cos interleaved
    return pe[:, :dim]


def alibi_slopes(n_heads: int, alpha: float = 1.0) -> Tensor:
    """Per-head ALiBi slopes (Press et al. 2022), a geometric sequence, scaled by ``alpha``.

    For a power-of-two head count n the slopes are 2^(-8/n), 2^(-16/n), ...; other counts take the
    closest power of two and interleave slopes of the next one, as in the paper.

    Returns:
        (H,) positive float32 slopes.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32) * alpha


def alibi_bias(slopes: Tensor, q_pos: Tensor, k_pos: Tensor, causal: bool) -> Tensor:
    """ALiBi bias −slope·distance, with distance i−j (causal) or |i−j| (bidirectional).

    Args:
        slopes: (H,) positive slopes.
        q_pos: (Tq,) query positions.  k_pos: (Tk,) key positions.
    Returns:
        (H, Tq, Tk) float bias (≤ 0). Future keys of a causal query get a finite value here; the
        caller masks them.
    """
    dist = (q_pos[:, None] - k_pos[None, :]).to(slopes.dtype)  # (Tq, Tk): i - j
    dist = dist.clamp(min=0) if causal else dist.abs()
    return -slopes[:, None, None] * dist[None]


def directional_alibi_bias(slopes: Tensor, length: int) -> Tensor:
    """Bidirectional ALiBi with a direction per head: even heads look left, odd heads look right.

    A symmetric −slope·|i−j| bias is the same for a sentence and its mirror image, so an encoder
    whose only position signal it is cannot tell "dog bites man" from "nam setib god" reversed.
    Giving each head one side (keys j ≤ i or j ≥ i, each at its ALiBi slope) breaks the mirror
    symmetry and tells every token which neighbours come before it, while the bias stays relative,
    so it extrapolates to unseen lengths like ALiBi does. Every query keeps itself as a key.

    Args:
        slopes: (H,) positive slopes (H ≥ 2: both directions need a head).
        length: sequence length S.
    Returns:
        (H, S, S) float bias, −inf on the side a head does not look at.
    """
    pos = torch.arange(length, device=slopes.device)
    dist = (pos[:, None] - pos[None, :]).to(slopes.dtype)  # (S, S): i - j, > 0 for keys on the left
    left = torch.arange(slopes.shape[0], device=slopes.device) % 2 == 0  # (H,)
    signed = torch.where(left[:, None, None], dist[None], -dist[None])  # (H, S, S): ≥ 0 on the seen side
    return torch.where(signed >= 0, -slopes[:, None, None] * signed, float("-inf"))


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool, True at padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def self_attention_mask(
    pad: Optional[Tensor],
    length: int,
    causal: bool,
    slopes: Optional[Tensor],
    dtype: torch.dtype,
    directional: bool = False,
) -> tuple[Optional[Tensor], bool]:
    """The SDPA mask for self-attention over a whole sequence.

    A causal decoder over *right*-padded sequences needs no key-padding mask: a valid query i only
    sees keys j ≤ i, which are all valid. Padded queries see earlier pads, but their outputs are
    never used (and the feed-forward zeroes them). So the decoder stays on ``is_causal=True``
    (flash attention) without ALiBi, and with ALiBi its bias is shared by the batch (1, H, T, T).

    Args:
        pad: (B, T) padding mask or None.  slopes: (H,) ALiBi slopes or None.
        dtype: the dtype attention runs in (the autocast dtype under autocast): a float bias must
            match it, and −inf is used rather than −1e9, which overflows fp16.
        directional: bidirectional only: per-head directions (:func:`directional_alibi_bias`).
    Returns:
        (attn_mask, is_causal) for ``F.scaled_dot_product_attention``.
    """
    if slopes is None:
        if causal:
            return None, True
        if pad is None:
            return None, False
        return (~pad)[:, None, None, :], False  # (B, 1, 1, T) bool
    pos = torch.arange(length, device=slopes.device)
    if directional and not causal:
        bias = directional_alibi_bias(slopes, length).to(dtype)[None]  # (1, H, T, T)
    else:
        bias = alibi_bias(slopes, pos, pos, causal).to(dtype)[None]  # (1, H, T, T)
    if causal:
        future = pos[None, :] > pos[:, None]  # (T, T)
        bias = bias.masked_fill(future, float("-inf"))
    if pad is not None and not causal:
        # A padded query keeps itself as a key: a right-looking head has nothing else to see, and
        # an all −inf row would give NaN that reaches valid positions through the values.
        hidden = pad[:, None, None, :] & ~torch.eye(length, dtype=torch.bool, device=pad.device)
        bias = bias.masked_fill(hidden, float("-inf"))  # (B, H, T, T)
    return bias, False


# --------------------------------------------------------------------------------------------
# FlexAttention (``model.attention_backend: flex``, full-sequence forwards only)
# --------------------------------------------------------------------------------------------
#
# The same attention as the SDPA masks above, expressed for ``torch.nn.attention.flex_attention``:
#   * structure that is the same for every batch (causal; the encoder's per-head directions) is a
#     ``BlockMask``, built once per (kind, heads, length, device) and cached, so blocks that a head
#     never sees are skipped;
#   * everything else is a ``score_mod``: the ALiBi decay −slope·|i−j| (on the side a head sees,
#     |i−j| is i−j for the causal decoder and for left-looking heads, j−i for right-looking ones),
#     key padding (−inf; in the encoder with ALiBi a padded query keeps itself, as in
#     :func:`self_attention_mask`) and the cross-attention alignment prior ``cross_bias[b, i, j]``.
# Grouped KV heads go in as they are (``enable_gqa``). flex_attention has no attention-probability
# dropout, so the config refuses ``flex`` with dropout > 0 in training (``ModelSection.check``).


@dataclass
class FlexMask:
    """What :class:`MultiHeadAttention` passes to flex_attention in place of an SDPA mask."""

    score_mod: Optional[Callable]
    block_mask: Optional[object]  # torch.nn.attention.flex_attention.BlockMask


_BLOCK_MASKS: OrderedDict = OrderedDict()
_BLOCK_MASK_CACHE_SIZE = 256


def _block_mask(kind: str, n_heads: Optional[int], length: int, device: torch.device):
    """Cached ``BlockMask`` for ``kind`` "causal" (keys j ≤ i, all heads) or "directional"."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (kind, n_heads, length, str(device))
    bm = _BLOCK_MASKS.get(key)
    if bm is not None:
        _BLOCK_MASKS.move_to_end(key)
        return bm
    if kind == "causal":
        def mask_mod(b, h, q, kv):
            return kv <= q
        heads = None
    elif kind == "directional":
        def mask_mod(b, h, q, kv):  # even heads look left (j ≤ i), odd heads right (j ≥ i)
            return torch.where(h % 2 == 0, kv <= q, kv >= q)
        heads = n_heads
    else:
        raise ValueError(f"unknown block mask kind {kind!r}")
    bm = create_block_mask(mask_mod, None, heads, length, length, device=device)
    _BLOCK_MASKS[key] = bm
    if len(_BLOCK_MASKS) > _BLOCK_MASK_CACHE_SIZE:
        _BLOCK_MASKS.popitem(last=False)
    return bm


def flex_self_attention_mask(
    pad: Optional[Tensor], length: int, causal: bool, slopes: Optional[Tensor], directional: bool = False,
    device: Optional[torch.device] = None,
) -> FlexMask:
    """The FlexAttention equivalent of :func:`self_attention_mask` (same arguments, same attention).

    Args:
        pad: (B, T) padding mask or None (the causal decoder ignores it, like the SDPA path).
        slopes: (H,) ALiBi slopes or None.  device: where ``pad``/``slopes`` live (when both None).
    """
    device = device if device is not None else (slopes.device if slopes is not None else pad.device)
    if causal:
        block = _block_mask("causal", None, length, device)
    elif slopes is not None and directional:
        block = _block_mask("directional", slopes.shape[0], length, device)
    else:
        block = None
    key_pad = pad if (pad is not None and not causal) else None

    if slopes is None and key_pad is None:
        return FlexMask(None, block)
    if slopes is None:
        def score_mod(score, b, h, q, kv):  # like the SDPA bool mask: padded keys hidden from all
            return torch.where(key_pad[b, kv], float("-inf"), score)
    elif key_pad is None:
        def score_mod(score, b, h, q, kv):
            return score - slopes[h] * (q - kv).abs()
    else:
        def score_mod(score, b, h, q, kv):  # a padded query keeps itself as a key
            biased = score - slopes[h] * (q - kv).abs()
            return torch.where(key_pad[b, kv] & (q != kv), float("-inf"), biased)
    return FlexMask(score_mod, block)


def flex_cross_attention_mask(src_pad: Tensor, cross_bias: Optional[Tensor] = None) -> FlexMask:
    """Cross-attention for FlexAttention: padded text hidden, plus the optional (B, T, S) prior."""
    if cross_bias is None:
        def score_mod(score, b, h, q, kv):
            return torch.where(src_pad[b, kv], float("-inf"), score)
    else:
        def score_mod(score, b, h, q, kv):
            return torch.where(src_pad[b, kv], float("-inf"), score + cross_bias[b, q, kv])
    return FlexMask(score_mod, None)


_compiled_flex: Optional[Callable] = None
_FLEX_RECOMPILE_LIMIT = 64


def run_flex_attention(q: Tensor, k: Tensor, v: Tensor, mask: FlexMask) -> Tensor:
    """flex_attention on (B, H, T, hd) queries and (B, KVH, Tk, hd) keys/values.

    On CUDA through ``torch.compile`` (the fused kernel); elsewhere the eager reference
    implementation, which materialises the scores: correct, for tests, not fast.
    """
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    kwargs = dict(score_mod=mask.score_mod, block_mask=mask.block_mask, enable_gqa=k.shape[1] != q.shape[1])
    if q.device.type == "cuda":
        if _compiled_flex is None:
            # Default dynamic: a second length compiles a length-generic kernel (static shapes
            # would recompile for every bucket). A fresh score_mod closure over new tensors does
            # not recompile; each kind (encoder, decoder, cross ± prior) and grad mode compiles
            # apart, which can pass Dynamo's default limit of 8 (then it would fall back to the
            # slow eager path), hence the higher limit for this call.
            _compiled_flex = torch.compile(flex_attention)
        with torch._dynamo.config.patch(recompile_limit=_FLEX_RECOMPILE_LIMIT):
            return _compiled_flex(q, k, v, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, **kwargs)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls run in for ``x``: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


class NormalizedEmbedding(nn.Module):
    """Token embedding followed by LayerNorm, so token vectors start at unit scale.

    Args:
        num_embeddings: vocabulary size.  dim: width D.
    """

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:  # (B, T) long -> (B, T, D)
        return self.norm(self.embedding(ids))


class CodeFactors(nn.Module):
    """Vectors shared by the codec tokens that lie on the same FSQ digit.

    An FSQ codec token is a point of a grid: one digit per latent dimension (``levels``, numbered
    as ``model.preencoder.FSQ`` numbers them). A plain embedding or output head gives each of the
    ``prod(levels)`` tokens its own vector, so what is learnt for one token says nothing about its
    neighbours on the grid, and a rarely seen token stays untrained. Here each token's vector is its
    own plus one vector per digit it has (``sum(levels)`` of them in all), so every step that trains
    a token also trains every token that shares a digit with it. The free vectors stay, so nothing
    the plain layer could represent is lost. Rows past the codebook (BOS, EOS, pad) are unchanged.

    Args:
        levels: FSQ levels per dimension, e.g. ``[8, 5, 5, 5]``.  dim: vector width D.
    """

    def __init__(self, levels: list[int], dim: int, n_vocab: int) -> None:
        super().__init__()
        fsq = FSQ(list(levels))
        codes = fsq.indices_to_codes(torch.arange(fsq.codebook_size))  # (C, n_dims) integer-valued
        digits = codes.long() + fsq.half_width  # (C, n_dims) in [0, L_d)
        starts = torch.cumsum(torch.tensor([0] + list(levels[:-1])), 0)  # each dimension's first row
        onehot = torch.zeros(n_vocab, sum(levels))  # rows past the codebook stay 0: no digits
        onehot[: fsq.codebook_size].scatter_(1, digits + starts, 1.0)  # (V, sum L): one 1 per dimension
        self.register_buffer("onehot", onehot, persistent=False)  # follows from levels
        self.inputs = nn.Parameter(torch.randn(sum(levels), dim) * 0.02)  # audio embedding digits
        self.outputs = nn.Parameter(torch.randn(sum(levels), dim) * 0.02)  # output head digits

    def digit_sum(self, ids: Tensor, vectors: Tensor) -> Tensor:
        """(...) token ids -> (..., D) the sum of their digits' rows of ``vectors`` (sum L, D); 0 for specials.

        Only the looked-up tokens are expanded, so a one-token decode step costs one row, not a table.
        """
        return F.embedding(ids, self.onehot).to(vectors.dtype) @ vectors

    def embed(self, emb: NormalizedEmbedding, ids: Tensor) -> Tensor:
        """``emb(ids)`` with each token's digit vectors added before the norm: (B, T) long -> (B, T, D)."""
        x = emb.embedding(ids)
        return emb.norm(x + self.digit_sum(ids, self.inputs).to(x.dtype))

    def add_logits(self, logits: Tensor, h: Tensor) -> Tensor:
        """A plain head's ``logits`` (..., V) plus each code's digit scores for states ``h`` (..., D).

        Scoring the ``sum(levels)`` digits and spreading them over the codes costs about a fifth of
        the plain head at 1,000 codes; the plain head stays a module call of its own.
        """
        digits = F.linear(h, self.outputs)  # (..., sum L)
        return logits + F.linear(digits, self.onehot.to(digits.dtype)).to(logits.dtype)  # specials get 0


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


class KVCache(nn.Module):
    """Static key/value buffers for one self-attention layer (gpt-fast style).

    Buffers have a fixed shape so the one-step decode can be captured by CUDA graphs.

    Args:
        batch_size: B.  n_kv_heads: KVH.  max_len: cache length Tmax.  head_dim: hd.
    """

    def __init__(
        self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
        dtype: torch.dtype, device: torch.device | str,
    ) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new keys/values at ``input_pos`` (T_new,) and return the full buffers.

        Args:
            k, v: (B, KVH, T_new, hd).
        Returns:
            k, v: (B, KVH, Tmax, hd); positions not yet written hold zeros and must be masked.
        """
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped key/value heads, through SDPA.

    Self-attention projects Q, K and V with one fused linear layer; cross-attention has a Q
    projection and a fused KV projection of the memory, so the memory's K/V can be computed once
    per utterance at inference (:meth:`project_kv`).

    Args:
        dim: model width D.  n_heads: H.  n_kv_heads: KVH (divides H; H == KVH is plain MHA).
        dropout: attention-probability dropout.  cross: cross-attention if True.
        kv_dim: width of the memory (cross-attention only; defaults to D).
    """

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int, dropout: float = 0.0,
        cross: bool = False, kv_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"need dim % n_heads == 0 and n_heads % n_kv_heads == 0, got {dim}, {n_heads}, {n_kv_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.dropout = dropout
        self.cross = cross
        kv_width = 2 * n_kv_heads * self.head_dim
        if cross:
            self.q_proj = nn.Linear(dim, dim)
            self.kv_proj = nn.Linear(kv_dim or dim, kv_width)
        else:
            self.qkv_proj = nn.Linear(dim, dim + kv_width)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor, n: int) -> Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of ``memory`` (B, S, Dm) -> two (B, KVH, S, hd)."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)

    def attention_weights(
        self,
        x: Tensor,
        attn_mask: Optional[Tensor],
        memory: Optional[Tensor] = None,
        memory_kv: Optional[tuple[Tensor, Tensor]] = None,
    ) -> Tensor:
        """Cross-attention probabilities, computed explicitly (SDPA does not return them).

        It materialises (B, H, T, S): for alignment pictures and the guided alignment loss.

        Args:
            x: (B, T, D) queries.  attn_mask: as in :meth:`forward`.
        Returns:
            (B, H, T, S) float32 probabilities (rows sum to 1 over valid keys).
        """
        if not self.cross:
            raise ValueError("attention_weights is for cross-attention")
        q = self._heads(self.q_proj(x), self.n_heads).float()
        k, _ = memory_kv if memory_kv is not None else self.project_kv(memory)
        k = k.float().repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, T, S)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask.float()
        return scores.softmax(dim=-1)

    def forward(
        self,
        x: Tensor,
        attn_mask: Union[Tensor, FlexMask, None] = None,
        is_causal: bool = False,
        memory: Optional[Tensor] = None,
        memory_kv: Optional[tuple[Tensor, Tensor]] = None,
        cache: Optional[KVCache] = None,
        input_pos: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            x: (B, T, D) queries (and keys/values for self-attention).
            attn_mask: SDPA mask broadcastable to (B, H, T, Tk), or None; or a :class:`FlexMask`,
                which runs FlexAttention instead of SDPA (no attention dropout there).
            is_causal: use SDPA's built-in causal mask (no ``attn_mask``).
            memory: (B, S, Dm) cross-attention memory, or ``memory_kv`` precomputed by
                :meth:`project_kv`.
            cache: self-attention KV cache; new keys/values are written at ``input_pos`` (T,).
        Returns:
            (B, T, D)
        """
        B, T, D = x.shape
        if self.cross:
            q = self._heads(self.q_proj(x), self.n_heads)
            k, v = memory_kv if memory_kv is not None else self.project_kv(memory)
        else:
            kv_width = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([D, kv_width, kv_width], dim=-1)
            q, k, v = self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)
            if cache is not None:
                k, v = cache.update(input_pos, k, v)
        if isinstance(attn_mask, FlexMask):
            if self.training and self.dropout > 0:
                raise ValueError("attention_backend flex has no attention dropout: set the dropout to 0 "
                                 "(or use attention_backend: sdpa)")
            y = run_flex_attention(q, k, v, attn_mask)  # (B, H, T, hd), grouped heads native
            return self.out_proj(y.transpose(1, 2).reshape(B, T, D))
        if self.n_kv_heads != self.n_heads:
            # Expand grouped heads explicitly: works with every SDPA backend and mask type.
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


# --------------------------------------------------------------------------------------------
# Feed-forward
# --------------------------------------------------------------------------------------------

ACTIVATIONS = ("relu", "gelu", "swiglu", "relu2")


class FeedForward(nn.Module):
    """Position-wise feed-forward block whose padded positions output exactly zero.

    Args:
        dim: D.  expansion: inner width = expansion·D (swiglu uses 2/3 of that per branch, so
            the parameter count matches).  activation: one of relu, gelu, swiglu, relu2
            (squared ReLU).  dropout: on the inner activations.
    """

    def __init__(self, dim: int, expansion: int, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        self.activation = activation
        inner = dim * expansion
        if activation == "swiglu":
            inner = max(8, int(2 * inner / 3) // 8 * 8)
            self.w_in = nn.Linear(dim, 2 * inner)
        else:
            self.w_in = nn.Linear(dim, inner)
        self.w_out = nn.Linear(inner, dim)
        self.drop = nn.Dropout(dropout)

    def _act(self, h: Tensor) -> Tensor:
        if self.activation == "relu":
            return F.relu(h)
        if self.activation == "gelu":
            return F.gelu(h)
        if self.activation == "relu2":
            return F.relu(h).square()
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up

    def forward(self, x: Tensor, pad: Optional[Tensor] = None) -> Tensor:
        """x: (B, T, D); pad: (B, T) padding mask or None -> (B, T, D), zero where padded."""
        h = self.w_in(x)
        if self.activation == "relu2" and h.dtype == torch.float16:
            # fp16 overflows once h > 256 (h² > 65504): square and project in fp32.
            with torch.autocast(x.device.type, enabled=False):
                a = self.drop(F.relu(h.float()).square())
                y = F.linear(a, self.w_out.weight.float(), self.w_out.bias.float()).to(h.dtype)
        else:
            y = self.w_out(self.drop(self._act(h)))
        if pad is not None:
            y = y.masked_fill(pad[..., None], 0.0)
        return y


# --------------------------------------------------------------------------------------------
# Layers (pre-norm residual blocks)
# --------------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Bidirectional self-attention + feed-forward, pre-norm."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, expansion: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, n_heads, n_kv_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, expansion, activation, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor], pad: Optional[Tensor]) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.ffn(self.norm2(x), pad))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the text memory, feed-forward; pre-norm."""

    def __init__(
        self, dim: int, memory_dim: int, n_heads: int, n_kv_heads: int,
        expansion: int, activation: str, dropout: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, n_heads, n_kv_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, n_heads, n_kv_heads, dropout, cross=True, kv_dim=memory_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, expansion, activation, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        self_mask: Optional[Tensor],
        is_causal: bool,
        cross_mask: Tensor,
        pad: Optional[Tensor],
        memory: Optional[Tensor] = None,
        memory_kv: Optional[tuple[Tensor, Tensor]] = None,
        cache: Optional[KVCache] = None,
        input_pos: Optional[Tensor] = None,
        cross_weights: Optional[list[Tensor]] = None,
        weights_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            x: (B, T, D) audio-token states.  cross_mask: (B, 1, 1, S) bool, True = valid text,
                or a float bias broadcastable to (B, H, T, S) (−inf at padded text).
            memory / memory_kv: text memory (B, S, Dm) or its precomputed cross K/V.
            cache, input_pos: self-attention KV cache and the positions of ``x`` (one-step decode).
            cross_weights: if a list, the cross-attention probabilities (B, H, T, S) are appended
                (differentiable when autograd is on: the guided alignment loss trains them).
            weights_mask: the mask those probabilities use instead of ``cross_mask`` (the model's
                own attention, without an alignment prior's bias).
        """
        x = x + self.drop(self.self_attn(self.norm1(x), self_mask, is_causal, cache=cache, input_pos=input_pos))
        h = self.norm2(x)
        if cross_weights is not None:
            mask = cross_mask if weights_mask is None else weights_mask
            cross_weights.append(self.cross_attn.attention_weights(h, mask, memory=memory, memory_kv=memory_kv))
        x = x + self.drop(self.cross_attn(h, cross_mask, memory=memory, memory_kv=memory_kv))
        return x + self.drop(self.ffn(self.norm3(x), pad))
