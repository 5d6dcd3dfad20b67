"""Training attention backends (SDPA vs FlexAttention) and repeated CUDA-graph decoding.

    python bench/attention_decode_speed.py --device cuda              # ~60 M config, bf16: the figures
    python bench/attention_decode_speed.py --device cpu --tiny        # smoke run of the script itself

Training: one optimizer step (forward, backward, AdamW) of the ~60 M config (hidden 512, 8 heads,
8 + 8 layers, dropout 0 so both backends can run) on batch 32, text 120, audio lengths up to 600,
under bf16 autocast on CUDA; median step time and audio tokens/s per backend after warm-up (Flex
compiles in the warm-up), and the largest logit difference between the two backends on the same
weights. On CPU FlexAttention has no backward, so its training step is not timed there.

Decoding: greedy ``generate`` of ``--decode_tokens`` tokens (EOS suppressed) at batch 1 and 8: the
eager cached loop, the first ``compile=True`` call (captures the CUDA graph) and later calls with
other texts of the same text-length bucket (replay the kept graph); tokens must equal eager. CUDA
only (CPU ``compile=True`` is the Inductor path, which this does not measure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from statistics import median

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import model.decode_cache as decode_cache  # noqa: E402
from model.echolancer import Echolancer  # noqa: E402
from model.generation import generate  # noqa: E402
from utils.config import ConfigError, load_config  # noqa: E402
from utils.device import CudaUnavailableError, pick_device  # noqa: E402

M60 = [
    "model.encoder.hidden=512", "model.encoder.head=8", "model.encoder.layer=8",
    "model.decoder.hidden=512", "model.decoder.head=8", "model.decoder.layer=8",
    "model.encoder_kv_heads=8", "model.decoder_kv_heads=8",
    "model.encoder.dropout=0.0", "model.decoder.dropout=0.0",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(overrides: list[str], backend: str, device: torch.device, config: str) -> Echolancer:
    torch.manual_seed(0)
    cfg = load_config(config, [*overrides, f"model.attention_backend={backend}"])
    return Echolancer.from_config(cfg).to(device)


def train_batch(model: Echolancer, B: int, S: int, T: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    texts = torch.randint(3, 30, (B, S), generator=g)
    src_lens = torch.randint(S // 2, S + 1, (B,), generator=g)
    src_lens[0] = S
    mels = torch.randint(0, model.codebook_size, (B, T), generator=g)
    mel_lens = torch.randint(T // 2, T + 1, (B,), generator=g)
    mel_lens[0] = T
    spk = torch.zeros(B, dtype=torch.long) if model.cfg.multi_speaker else None
    return [None if t is None else t.to(device) for t in (spk, texts, src_lens, mels, mel_lens)]


def time_training(model: Echolancer, batch, device: torch.device, steps: int, warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = model(*batch)
            loss = torch.nn.functional.cross_entropy(out.logits.float().transpose(1, 2), out.targets,
                                                     ignore_index=model.pad_id)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return median(times)


def bench_training(args, device: torch.device, overrides: list[str]) -> dict:
    res = {}
    sdpa = build(overrides, "sdpa", device, args.config)
    flex = build(overrides, "flex", device, args.config)
    flex.load_state_dict(sdpa.state_dict())
    batch = train_batch(sdpa, args.batch, args.text_len, args.audio_len, device)
    audio_tokens = int(batch[4].sum() + batch[4].numel())
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        a = sdpa.eval()(*batch).logits.float()
        b = flex.eval()(*batch).logits.float()
    res["logits_max_abs_diff"] = float((a - b).abs().max())
    res["logits_max_abs"] = float(a.abs().max())
    for name, m in (("sdpa", sdpa), ("flex", flex)):
        if name == "flex" and device.type != "cuda":
            res["flex_step_s"] = None
            res["flex_note"] = "FlexAttention has no backward on CPU"
            continue
        s = time_training(m, batch, device, args.steps, args.warmup)
        res[f"{name}_step_s"] = s
        res[f"{name}_tokens_per_s"] = audio_tokens / s
    return res


def bench_decode(args, device: torch.device, overrides: list[str]) -> list[dict]:
    rows = []
    model = build(overrides, "sdpa", device, args.config).eval()
    captures = []
    step_cls = decode_cache.CudaGraphStep

    class Counting(step_cls):
        def __init__(self, *a, **k):
            captures.append(1)
            super().__init__(*a, **k)

    decode_cache.CudaGraphStep = Counting
    try:
        for B in args.decode_batches:
            g = torch.Generator().manual_seed(B)
            calls = []
            for S in (args.text_len, args.text_len - 7, args.text_len - 20):  # one text bucket
                texts = torch.randint(3, 30, (B, args.text_len), generator=g).to(device)
                lens = torch.full((B,), S, device=device)
                spk = torch.zeros(B, dtype=torch.long, device=device) if model.cfg.multi_speaker else None
                calls.append((spk, texts[:, :S], lens))
            kw = dict(max_length=args.decode_tokens, min_length=args.decode_tokens, temperature=0.0)
            for mode in ("eager", "graph"):
                for i, (spk, texts, lens) in enumerate(calls):
                    sync(device)
                    t0 = time.perf_counter()
                    res = generate(model, spk, texts, lens, compile=mode == "graph", **kw)
                    sync(device)
                    dt = time.perf_counter() - t0
                    row = dict(batch=B, mode=mode, call=i, seconds=dt, tokens_per_s=B * args.decode_tokens / dt,
                               captures_so_far=len(captures))
                    if mode == "eager":
                        row["_tokens"] = res.tokens
                    else:
                        ref = next(r for r in rows if r["batch"] == B and r["mode"] == "eager" and r["call"] == i)
                        row["tokens_equal_eager"] = bool(torch.equal(res.tokens, ref["_tokens"]))
                    rows.append(row)
    finally:
        decode_cache.CudaGraphStep = step_cls
    for r in rows:
        r.pop("_tokens", None)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (the GPU when CUDA is usable), cpu, cuda, cuda:N")
    p.add_argument("--tiny", action="store_true", help="config/model_tiny.yaml, small batch: checks the script")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--decode_tokens", type=int, default=1000)
    p.add_argument("--decode_batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    try:
        device = pick_device(args.device)
    except (CudaUnavailableError, ConfigError) as e:  # one line, as the commands print it
        sys.exit(f"bench/attention_decode_speed.py: {e}")
    if args.tiny:
        args.config, overrides = "config/model_tiny.yaml", []
        args.batch, args.text_len, args.audio_len = 4, 30, 60
        args.steps, args.warmup, args.decode_tokens = 2, 1, 40
    else:
        args.config, overrides = "config/model.yaml", M60
        args.batch, args.text_len, args.audio_len = 32, 120, 600
    out = {"device": str(device), "torch": torch.__version__, "training": bench_training(args, device, overrides)}
    print("training:", json.dumps(out["training"]))
    if device.type == "cuda":
        out["decode"] = bench_decode(args, device, overrides if not args.tiny else [])
        for r in out["decode"]:
            print("decode:", json.dumps(r))
        graph_rows = [r for r in out["decode"] if r["mode"] == "graph"]
        ok = all(r["tokens_equal_eager"] for r in graph_rows) and graph_rows[-1]["captures_so_far"] == len(args.decode_batches)
        print(("PASS" if ok else "FAIL") + " decode: graph tokens equal eager; one capture per batch size")
    else:
        print("INFO decode: CUDA graphs need CUDA (not measured on this device)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
