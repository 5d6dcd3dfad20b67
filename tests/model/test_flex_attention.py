"""FlexAttention backend (``model.attention_backend: flex``): the same attention as SDPA.

On CPU flex_attention runs its eager reference implementation (no compile, forward only: it has
no backward on CPU), which is what these tests compare against SDPA; gradients and the compiled
CUDA kernel are checked by the CUDA-only tests.
"""

import pytest
import torch

import model.layers as layers
from model import Echolancer
from model.layers import flex_cross_attention_mask, flex_self_attention_mask, run_flex_attention, self_attention_mask
from utils.config import ConfigError, load_config

TINY = "config/model_tiny.yaml"

POSITION_OPTIONS = [
    ["model.use_alibi=true", "model.encoder_position=directional"],
    ["model.use_alibi=true", "model.encoder_position=absolute"],
    ["model.use_alibi=true", "model.encoder_position=directional_absolute"],
    ["model.use_alibi=false"],
]
# Grouped KV heads in both stacks (2 query heads share 1; head width 16, the least flex takes on CUDA).
GQA = ["model.encoder_kv_heads=1", "model.decoder_kv_heads=1"]


def make_pair(*overrides: str, device: str = "cpu"):
    models = []
    for backend in ("sdpa", "flex"):
        torch.manual_seed(0)
        cfg = load_config(TINY, [*overrides, f"model.attention_backend={backend}"])
        models.append(Echolancer.from_config(cfg).to(device))
    return models


def batch(B: int = 3, S: int = 9, T: int = 12, device: str = "cpu"):
    g = torch.Generator().manual_seed(1)
    texts = torch.randint(2, 40, (B, S), generator=g)
    src_lens = torch.tensor([S, S - 3, 2])[:B]
    mels = torch.randint(0, 1000, (B, T), generator=g)
    mel_lens = torch.tensor([T, T - 4, 3])[:B]
    speakers = torch.arange(B) % 4
    em = torch.randn(B, 384, generator=g)
    prior = torch.randn(B, T + 1, S, generator=g)
    return [t.to(device) for t in (speakers, texts, src_lens, mels, mel_lens, em, prior)]


@pytest.mark.parametrize("overrides", POSITION_OPTIONS, ids=lambda o: o[-1].split("=")[-1])
@pytest.mark.parametrize("with_prior", [False, True], ids=["no-prior", "prior"])
def test_flex_forward_equals_sdpa_for_every_position_option(overrides, with_prior):
    sdpa, flex = make_pair(*overrides, *GQA)
    spk, texts, sl, mels, ml, em, prior = batch()
    with torch.no_grad():
        a = sdpa.eval()(spk, texts, sl, mels, ml, em, cross_bias=prior if with_prior else None)
        b = flex.eval()(spk, texts, sl, mels, ml, em, cross_bias=prior if with_prior else None)
    assert a.logits.abs().max() > 0.1
    torch.testing.assert_close(b.logits, a.logits, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention has no backward on CPU")
def test_flex_gradients_equal_sdpa_in_fp32_on_cuda():
    sdpa, flex = make_pair(*GQA, device="cuda")
    spk, texts, sl, mels, ml, em, prior = batch(device="cuda")
    grads = []
    for m in (sdpa.train(), flex.train()):
        out = m(spk, texts, sl, mels, ml, em, cross_bias=prior)
        loss = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), out.targets, ignore_index=m.pad_id)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("alibi", [True, False])
@pytest.mark.parametrize("directional", [True, False])
def test_encoder_masks_agree_at_every_position_padded_queries_included(alibi, directional):
    # The model zeroes padded positions, so compare raw attention outputs: a padded query keeps
    # itself as a key under ALiBi (a right-looking head has nothing else) exactly as with SDPA.
    g = torch.Generator().manual_seed(0)
    B, H, KVH, S, hd = 3, 4, 2, 11, 8
    q, k, v = torch.randn(B, H, S, hd, generator=g), torch.randn(B, KVH, S, hd, generator=g), torch.randn(B, KVH, S, hd, generator=g)
    pad = layers.padding_mask(torch.tensor([11, 6, 1]), S)
    slopes = layers.alibi_slopes(H) if alibi else None
    mask, _ = self_attention_mask(pad, S, False, slopes, torch.float32, directional=directional)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           attn_mask=mask)
    out = run_flex_attention(q, k, v, flex_self_attention_mask(pad, S, False, slopes, directional))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alibi", [True, False])
def test_causal_decoder_and_cross_masks_agree(alibi):
    g = torch.Generator().manual_seed(0)
    B, H, T, S, hd = 2, 2, 13, 7, 8
    q, k, v = (torch.randn(B, H, T, hd, generator=g) for _ in range(3))
    slopes = layers.alibi_slopes(H) if alibi else None
    mask, causal = self_attention_mask(None, T, True, slopes, torch.float32)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(run_flex_attention(q, k, v, flex_self_attention_mask(None, T, True, slopes,
                                                                                     device=q.device)), ref,
                               atol=1e-5, rtol=1e-5)
    km, vm = torch.randn(B, 1, S, hd, generator=g), torch.randn(B, 1, S, hd, generator=g)
    src_pad = layers.padding_mask(torch.tensor([7, 3]), S)
    prior = torch.randn(B, T, S, generator=g)
    sdpa_mask = prior[:, None].masked_fill(src_pad[:, None, None, :], float("-inf"))
    ref = torch.nn.functional.scaled_dot_product_attention(q, km.expand(B, H, S, hd), vm.expand(B, H, S, hd),
                                                           attn_mask=sdpa_mask)
    out = run_flex_attention(q, km, vm, flex_cross_attention_mask(src_pad, prior))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_block_masks_are_built_once_per_length():
    layers._BLOCK_MASKS.clear()
    slopes = layers.alibi_slopes(2)
    a = flex_self_attention_mask(None, 40, True, slopes).block_mask
    b = flex_self_attention_mask(None, 40, True, slopes).block_mask
    c = flex_self_attention_mask(None, 48, True, slopes).block_mask
    assert a is b and c is not a
    d = flex_self_attention_mask(torch.zeros(1, 40, dtype=torch.bool), 40, False, slopes, directional=True).block_mask
    assert d is not a and len(layers._BLOCK_MASKS) == 3


def test_flex_is_refused_with_attention_dropout():
    with pytest.raises(ConfigError, match="attention_backend flex has no attention dropout"):
        load_config("config/model.yaml", ["model.attention_backend=flex"])
    cfg = load_config("config/model.yaml", ["model.attention_backend=flex", "model.encoder.dropout=0.0",
                                            "model.decoder.dropout=0.0"])
    assert cfg.model.attention_backend == "flex"
    assert load_config("config/model.yaml").model.attention_backend == "sdpa"  # the default


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled FlexAttention needs CUDA")
@pytest.mark.parametrize("overrides", POSITION_OPTIONS, ids=lambda o: o[-1].split("=")[-1])
def test_compiled_flex_equals_sdpa_in_bf16_on_cuda(overrides):
    sdpa, flex = make_pair(*overrides, *GQA, device="cuda")
    spk, texts, sl, mels, ml, em, prior = batch(device="cuda")
    outs = []
    for m in (sdpa.train(), flex.train()):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(spk, texts, sl, mels, ml, em, cross_bias=prior)
            loss = torch.nn.functional.cross_entropy(out.logits.float().transpose(1, 2), out.targets,
                                                     ignore_index=m.pad_id)
        loss.backward()
        outs.append((out.logits.float(), m.text_embed.embedding.weight.grad.clone()))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=5e-3, rtol=5e-2)
