"""Attention, ALiBi, feed-forward and embedding blocks behave as specified."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.layers import (
    FeedForward,
    MultiHeadAttention,
    alibi_bias,
    alibi_slopes,
    self_attention_mask,
    sinusoidal_positions,
)


def test_alibi_slopes_are_the_papers_geometric_sequence():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert torch.allclose(alibi_slopes(4), torch.tensor([2.0 ** -(2 * (i + 1)) for i in range(4)]))
    # non-power-of-two: the 4 slopes of 4 heads, then every other slope of 8 heads
    six = alibi_slopes(6)
    assert torch.allclose(six[:4], alibi_slopes(4))
    assert torch.allclose(six[4:], alibi_slopes(8)[0::2][:2])
    assert torch.allclose(alibi_slopes(4, alpha=0.5), 0.5 * alibi_slopes(4))


def test_alibi_bias_penalises_distance_with_a_negative_sign():
    slopes = alibi_slopes(2)
    pos = torch.arange(5)
    causal = alibi_bias(slopes, pos, pos, causal=True)
    for h in range(2):
        for i in range(5):
            for j in range(i + 1):
                assert causal[h, i, j].item() == pytest.approx(-slopes[h].item() * (i - j))
    bidir = alibi_bias(slopes, pos, pos, causal=False)
    assert torch.allclose(bidir, bidir.transpose(1, 2))
    assert bidir[0, 0, 4] == pytest.approx(-slopes[0].item() * 4)
    assert (bidir <= 0).all()
    # nearer keys get a larger (less negative) bias
    assert bidir[0, 2, 3] > bidir[0, 2, 4]


def test_alibi_mask_makes_equal_content_attend_to_nearer_keys():
    slopes = alibi_slopes(2)
    mask, is_causal = self_attention_mask(None, 6, False, slopes, torch.float32)
    assert not is_causal and mask.shape == (1, 2, 6, 6)
    # with identical keys the scores differ only by the bias: weights decay with distance
    probs = torch.softmax(mask, dim=-1)
    assert (probs[0, :, 0, :-1] > probs[0, :, 0, 1:]).all()
    assert (probs[0, :, 5, 1:] > probs[0, :, 5, :-1]).all()


def _manual_attention(q, k, v, mask_add):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask_add
    return torch.softmax(scores, -1) @ v


def test_fused_qkv_equals_separate_projections():
    torch.manual_seed(0)
    D, H = 16, 4
    attn = MultiHeadAttention(D, H, H).eval()
    x = torch.randn(2, 5, D)
    wq, wk, wv = attn.qkv_proj.weight.split([D, D, D])
    bq, bk, bv = attn.qkv_proj.bias.split([D, D, D])

    def heads(t):
        return t.view(2, 5, H, D // H).transpose(1, 2)

    q, k, v = heads(F.linear(x, wq, bq)), heads(F.linear(x, wk, bk)), heads(F.linear(x, wv, bv))
    y = _manual_attention(q, k, v, 0.0).transpose(1, 2).reshape(2, 5, D)
    expected = attn.out_proj(y)
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_grouped_kv_heads_equal_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    D, H, KVH = 16, 4, 2
    hd = D // H
    gqa = MultiHeadAttention(D, H, KVH).eval()
    mha = MultiHeadAttention(D, H, H).eval()
    wq, wk, wv = gqa.qkv_proj.weight.split([D, KVH * hd, KVH * hd])
    bq, bk, bv = gqa.qkv_proj.bias.split([D, KVH * hd, KVH * hd])

    def repeat(w):  # (KVH*hd, ...) -> (H*hd, ...): each kv head serves H/KVH query heads
        return w.view(KVH, hd, *w.shape[1:]).repeat_interleave(H // KVH, 0).reshape(H * hd, *w.shape[1:])

    with torch.no_grad():
        mha.qkv_proj.weight.copy_(torch.cat([wq, repeat(wk), repeat(wv)]))
        mha.qkv_proj.bias.copy_(torch.cat([bq, repeat(bk), repeat(bv)]))
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    x = torch.randn(2, 7, D)
    mask, causal = self_attention_mask(None, 7, True, alibi_slopes(H), torch.float32)
    assert torch.allclose(gqa(x, mask, causal), mha(x, mask, causal), atol=1e-5)


def test_cross_attention_ignores_padded_memory():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2, 1, cross=True, kv_dim=12).eval()
    x = torch.randn(1, 3, 8)
    memory = torch.randn(1, 5, 12)
    valid = torch.tensor([[True, True, True, False, False]])[:, None, None, :]
    out = attn(x, valid, memory=memory)
    memory2 = memory.clone()
    memory2[:, 3:] = 100.0
    assert torch.allclose(out, attn(x, valid, memory=memory2), atol=1e-6)
    assert torch.allclose(out, attn(x, None, memory=memory[:, :3]), atol=1e-6)


@pytest.mark.parametrize(
    "activation, fn",
    [
        ("relu", F.relu),
        ("gelu", F.gelu),
        ("relu2", lambda h: F.relu(h) ** 2),
        ("swiglu", lambda h: F.silu(h.chunk(2, -1)[0]) * h.chunk(2, -1)[1]),
    ],
)
def test_feedforward_activation_matches_its_formula(activation, fn):
    torch.manual_seed(0)
    ffn = FeedForward(8, 4, activation).eval()
    x = torch.randn(2, 3, 8)
    expected = ffn.w_out(fn(ffn.w_in(x)))
    assert torch.allclose(ffn(x), expected, atol=1e-6)


def test_unknown_activation_lists_allowed_values():
    with pytest.raises(ValueError, match="relu, gelu, swiglu, relu2"):
        FeedForward(8, 4, "tanh")


def test_feedforward_zeroes_padded_positions_and_ignores_their_content():
    torch.manual_seed(0)
    ffn = FeedForward(8, 2, "gelu").eval()
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False, False, False, True, True], [False] * 5])
    y = ffn(x, pad)
    assert (y[0, 3:] == 0).all()
    assert (y[1] != 0).any()
    x2 = x.clone()
    x2[0, 3:] = 1e4
    assert torch.equal(ffn(x2, pad)[0, :3], y[0, :3])


def test_sinusoidal_positions_distinguish_positions():
    pe = sinusoidal_positions(torch.arange(50), 32)
    assert pe.shape == (50, 32)
    dists = torch.cdist(pe, pe) + torch.eye(50) * 1e3
    assert dists.min() > 0.1  # no two positions share an encoding
    assert torch.allclose(pe[0, 0::2], torch.zeros(16)) and torch.allclose(pe[0, 1::2], torch.ones(16))


def test_directional_alibi_gives_each_head_one_side_with_alibi_decay():
    from model.layers import directional_alibi_bias

    slopes = alibi_slopes(4)
    bias = directional_alibi_bias(slopes, 5)  # (4, 5, 5)
    i, j = 3, 1  # key to the left of the query
    assert bias[0, i, j] == -slopes[0] * 2 and bias[2, i, j] == -slopes[2] * 2  # even heads look left
    assert bias[1, i, j] == float("-inf") and bias[3, i, j] == float("-inf")
    assert bias[1, j, i] == -slopes[1] * 2 and bias[0, j, i] == float("-inf")  # odd heads look right
    assert (bias.diagonal(dim1=1, dim2=2) == 0).all()  # every query keeps itself
    # not a mirror image of itself: the property a symmetric |i-j| bias has and this must not
    assert not torch.equal(bias, bias.flip(1).flip(2))


def test_directional_mask_with_padding_has_no_empty_rows():
    from model.layers import padding_mask

    pad = padding_mask(torch.tensor([5, 2]), 5)
    mask, _ = self_attention_mask(pad, 5, False, alibi_slopes(2), torch.float32, directional=True)
    assert mask.shape == (2, 2, 5, 5)
    assert torch.isfinite(mask).any(-1).all()  # padded queries attend at least to themselves
    q = torch.randn(2, 2, 5, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert torch.isfinite(out).all()
    # valid queries never see padded keys
    assert (mask[1, :, :2, 2:] == float("-inf")).all()


@torch.no_grad()
def test_relu2_does_not_overflow_in_half_precision():
    from model.layers import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(4, 2, "relu2")
    x = torch.randn(1, 3, 4) * 400.0  # inner activations well past 256, whose square fp16 cannot hold
    ref = ff(x)
    assert ff.w_in(x).abs().max() > 256
    with torch.autocast("cpu", dtype=torch.float16):
        y = ff(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert torch.allclose(y.float(), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))
    half = FeedForward(4, 2, "relu2").half()
    half.load_state_dict(ff.state_dict())
    assert torch.isfinite(half(x.half())).all()
