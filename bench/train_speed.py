"""Training-step throughput of Echolancer: SDPA attention against a naive reference, same run.

    python bench/train_speed.py                       # CPU, small batch, default + ~60 M configs
    python bench/train_speed.py --device cuda --batch_size 32 --text_len 120 --audio_len 600

A step is forward + backward + AdamW update. "naive" swaps every attention call for manual
softmax attention with a materialised float (B, H, T, T) mask, the way the first published
version of this design computed it; "sdpa" is the model as shipped. Prints audio tokens/s,
step time, peak memory (CUDA) and the sdpa/naive ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import model.layers as layers  # noqa: E402
from model import Echolancer, EcholancerLoss  # noqa: E402
from utils.config import ConfigError, load_config  # noqa: E402
from utils.device import CudaUnavailableError, pick_device  # noqa: E402

BIG = [  # ~60 M parameters
    "model.encoder.hidden=512", "model.encoder.head=8", "model.encoder.layer=8",
    "model.decoder.hidden=512", "model.decoder.head=8", "model.decoder.layer=8",
    "model.encoder_kv_heads=8", "model.decoder_kv_heads=8",
    "model.encoder.forward_expansion=4", "model.decoder.forward_expansion=4",
    "model.emotion_channels=256",
]


def naive_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
    """Reference attention: explicit scores, a materialised float mask, manual softmax."""
    B, H, T, hd = q.shape
    S = k.shape[-2]
    mask = torch.zeros(B, H, T, S, dtype=q.dtype, device=q.device)
    if is_causal:
        mask = mask.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1), torch.finfo(q.dtype).min)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = mask.masked_fill(~attn_mask, torch.finfo(q.dtype).min)
        else:
            mask = mask + attn_mask.clamp(min=torch.finfo(q.dtype).min)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = torch.nn.functional.dropout(probs, dropout_p)
    return probs @ v


@contextlib.contextmanager
def attention(impl: str):
    original = layers.F.scaled_dot_product_attention
    if impl == "naive":
        layers.F.scaled_dot_product_attention = naive_sdpa
    try:
        yield
    finally:
        layers.F.scaled_dot_product_attention = original


def make_batch(cfg, B, S, T, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    src_lens = torch.randint(S // 2, S + 1, (B,), generator=g)
    mel_lens = torch.randint(T // 2, T + 1, (B,), generator=g)
    src_lens[0], mel_lens[0] = S, T
    texts = torch.randint(2, 40, (B, S), generator=g)
    mels = torch.randint(0, cfg.model.codebook_size, (B, T), generator=g)
    em = torch.randn(B, cfg.model.emotion_input_size, generator=g)
    speakers = torch.zeros(B, dtype=torch.long)
    batch = (speakers, texts, src_lens, mels, mel_lens, em)
    return tuple(x.to(device) for x in batch), int(mel_lens.sum())


def bench(cfg, impl, args, device) -> dict:
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    crit = EcholancerLoss()
    batch, n_audio = make_batch(cfg, args.batch_size, args.text_len, args.audio_len, device)
    use_amp = device.type == "cuda" or args.bf16
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

    def step():
        with amp:
            loss = crit(model(*batch)).total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with attention(impl):
        for _ in range(args.warmup):
            step()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        dt = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"params_m": model.num_parameters() / 1e6, "step_s": dt, "tok_s": n_audio / dt, "peak_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (the GPU when CUDA is usable), cpu, cuda, cuda:N")
    p.add_argument("--batch_size", type=int, default=None, help="default: 32 on CUDA, 4 on CPU")
    p.add_argument("--text_len", type=int, default=None, help="default: 120 on CUDA, 60 on CPU")
    p.add_argument("--audio_len", type=int, default=None, help="max audio tokens; default: 600 on CUDA, 200 on CPU")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU too (always on for CUDA)")
    p.add_argument("--configs", nargs="+", default=["default", "60m"], choices=["default", "60m"])
    args = p.parse_args()
    try:
        device = pick_device(args.device)
    except (CudaUnavailableError, ConfigError) as e:  # one line, as the commands print it
        sys.exit(f"bench/train_speed.py: {e}")
    gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (32 if gpu else 4)
    args.text_len = args.text_len or (120 if gpu else 60)
    args.audio_len = args.audio_len or (600 if gpu else 200)
    args.steps = args.steps or (20 if gpu else 3)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; batch {args.batch_size}, text <= {args.text_len}, audio <= {args.audio_len} tokens")
    print(f"{'config':8} {'params':>8} {'attention':>9} {'step ms':>9} {'audio tok/s':>12} {'peak GiB':>9}")
    for which in args.configs:
        cfg = load_config("config/model.yaml", BIG if which == "60m" else [])
        results = {}
        for impl in ("naive", "sdpa"):
            r = results[impl] = bench(cfg, impl, args, device)
            print(f"{which:8} {r['params_m']:7.1f}M {impl:>9} {r['step_s'] * 1e3:9.1f} {r['tok_s']:12,.0f} {r['peak_gib']:9.2f}")
        print(f"{which:8} sdpa/naive throughput ratio: {results['sdpa']['tok_s'] / results['naive']['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
