"""Inference speed: KV-cached vs uncached generation, tokens/s, real-time factor, per-step flatness.

    python bench/infer_speed.py --device cpu                      # default + 60M configs, B 1/8, 300/1000 tokens
    python bench/infer_speed.py --device cuda --compile           # adds the CUDA-graph cached decode
    python bench/infer_speed.py --device cpu --configs default --lengths 300 --batch_sizes 1   # quick

Every run generates exactly the requested number of tokens (``min_length = max_length``: EOS is
suppressed), greedily, from untrained weights: speed does not depend on what the weights say.
The uncached path re-runs the whole decoder every step (quadratic), so it is skipped above
``--uncached_max_tokens`` generated tokens per run (B x length) to keep CPU runs to minutes; the table
says so. Real-time factor = wall time / seconds of audio produced (86.13 tokens = 1 s at 22050 Hz
and hop 256); below 1 is faster than real time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from statistics import median

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.echolancer import Echolancer  # noqa: E402
from model.generation import generate  # noqa: E402
from utils.config import ConfigError, load_config  # noqa: E402
from utils.device import CudaUnavailableError, pick_device  # noqa: E402

TOKENS_PER_SECOND = 22050 / 256  # 86.13 codec tokens per second of audio

CONFIGS = {
    "default": [],  # config/model.yaml as written (~8.6 M parameters)
    "60m": [  # ~60 M: hidden 512, 8 heads, 8 encoder + 8 decoder layers, forward expansion 4
        "model.encoder.hidden=512", "model.encoder.head=8", "model.encoder.layer=8", "model.encoder.forward_expansion=4",
        "model.decoder.hidden=512", "model.decoder.head=8", "model.decoder.layer=8", "model.decoder.forward_expansion=4",
        "model.encoder_kv_heads=8", "model.decoder_kv_heads=8",
    ],
}


@dataclass
class Row:
    config: str
    params_m: float
    batch: int
    tokens: int
    mode: str
    seconds: float | None
    note: str = ""

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.seconds is None else self.batch * self.tokens / self.seconds

    @property
    def rtf(self) -> float | None:
        return None if self.seconds is None else self.seconds / (self.batch * self.tokens / TOKENS_PER_SECOND)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inputs(model: Echolancer, batch: int, device: torch.device, text_len: int = 80):
    g = torch.Generator().manual_seed(0)
    texts = torch.randint(3, 30, (batch, text_len), generator=g).to(device)
    src_lens = torch.full((batch,), text_len, device=device)
    speakers = torch.zeros(batch, dtype=torch.long, device=device) if model.cfg.multi_speaker else None
    return speakers, texts, src_lens


def time_generation(model: Echolancer, batch: int, length: int, device: torch.device, use_cache: bool,
                    compile: bool, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` full-length greedy generations (after one warm-up), and the tokens."""
    spk, texts, lens = inputs(model, batch, device)
    kw = dict(max_length=length, min_length=length, temperature=0.0, use_cache=use_cache, compile=compile,
              sync_every=length)
    generate(model, spk, texts, lens, **{**kw, "max_length": min(length, 32), "min_length": min(length, 32)})
    if compile:  # compilation / graph capture is per cache length: warm up at the timed length
        generate(model, spk, texts, lens, **kw)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        res = generate(model, spk, texts, lens, **kw)
        sync(device)
        best = min(best, time.perf_counter() - t0)
        assert res.tokens.shape == (batch, length) and bool(res.hit_max_length.all())
    return best, res.tokens.cpu()


@torch.inference_mode()
def step_profile(model: Echolancer, batch: int, length: int, device: torch.device, use_cache: bool,
                 window: int = 32) -> tuple[float, float]:
    """Median milliseconds per decoder step over the first and the last ``window`` positions.

    Medians rather than means: on a shared machine a few preempted steps would dominate a mean.
    """
    spk, texts, lens = inputs(model, batch, device)
    enc = model.encode(spk, texts, lens)
    tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
    times = []
    if use_cache:
        state = model.init_decode_state(enc, length)
        for t in range(length):
            sync(device)
            t0 = time.perf_counter()
            model.decode_step(tok, torch.tensor([t], device=device), state)  # includes the head
            sync(device)
            times.append(time.perf_counter() - t0)
    else:
        for t in list(range(window)) + list(range(length - window, length)):
            prefix = torch.zeros(batch, t + 1, dtype=torch.long, device=device)
            sync(device)
            t0 = time.perf_counter()
            model.project(model.decode(prefix, enc)[:, -1])
            sync(device)
            times.append(time.perf_counter() - t0)
        return 1e3 * median(times[:window]), 1e3 * median(times[window:])
    w = min(window, length // 2)
    return 1e3 * median(times[1 : w + 1]), 1e3 * median(times[-w:])  # skip step 0 (warm-up)


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--configs", default="default,60m", help=f"comma-separated from {sorted(CONFIGS)}")
    p.add_argument("--batch_sizes", default="1,8")
    p.add_argument("--lengths", default="300,1000", help="generated tokens per row")
    p.add_argument("--uncached_max_tokens", type=int, default=2400,
                   help="skip the uncached path when batch x length exceeds this (it is quadratic)")
    p.add_argument("--compile", action="store_true",
                   help="also time the cached decode captured in a CUDA graph (cuda) / compiled by Inductor (cpu)")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats (best is reported)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()

    try:
        device = pick_device(args.device)
    except (CudaUnavailableError, ConfigError) as e:  # one line, as the commands print it
        sys.exit(f"bench/infer_speed.py: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    # Other processes on the same cores slow every figure down: say how busy the machine was.
    load = " load average {:.1f} {:.1f} {:.1f},".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"device={device} ({where}),{load} {os.cpu_count()} cores, torch {torch.__version__}")

    rows: list[Row] = []
    flat: list[str] = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            sys.exit(f"bench/infer_speed.py: --configs: unknown config {name!r}; allowed: {', '.join(sorted(CONFIGS))}")
        torch.manual_seed(0)
        model = Echolancer.from_config(load_config("config/model.yaml", CONFIGS[name])).to(device).eval()
        params = model.num_parameters() / 1e6
        print(f"\n{name}: {params:.1f} M parameters", flush=True)
        modes = [("cached", True, False), ("uncached", False, False)]
        eager: dict[tuple[int, int], torch.Tensor] = {}
        if args.compile:
            modes.insert(1, ("cached+graph" if device.type == "cuda" else "cached+inductor", True, True))
        for b in batch_sizes:
            for n in lengths:
                for mode, use_cache, comp in modes:
                    if not use_cache and b * n > args.uncached_max_tokens:
                        rows.append(Row(name, params, b, n, mode, None, f"skipped: B x len > {args.uncached_max_tokens}"))
                        continue
                    secs, toks = time_generation(model, b, n, device, use_cache, comp, args.repeats)
                    note = ""
                    if mode != "cached":  # same greedy tokens as the eager cached run? (near-ties may flip)
                        note = f"tokens equal to eager cached: {100 * (toks == eager[b, n]).float().mean():.1f} %"
                    else:
                        eager[b, n] = toks
                    rows.append(Row(name, params, b, n, mode, secs, note))
                    r = rows[-1]
                    print(f"  B={b:<2d} len={n:<5d} {mode:<16s} {secs:8.2f} s  {r.tokens_per_s:9.1f} tok/s  RTF {r.rtf:.3f}"
                          f"  {note}", flush=True)
        for mode, use_cache in (("cached", True), ("uncached", False)):
            n = max(lengths)
            early, late = step_profile(model, 1, n, device, use_cache)
            flat.append(f"{name:8s} B=1 {mode:9s} median ms/step at positions 1-32: {early:7.2f}   at {n - 32}-{n}: {late:7.2f}"
                        f"   (late/early {late / early:.2f})")

    print("\n| config | params | batch | tokens | mode | time (s) | tokens/s | RTF | cached speed-up | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next((u for u in rows if (u.config, u.batch, u.tokens, u.mode) == (r.config, r.batch, r.tokens, "uncached")), None)
        speedup = base.seconds / r.seconds if base and base.seconds and r.seconds and r.mode != "uncached" else None
        print(f"| {r.config} | {r.params_m:.1f} M | {r.batch} | {r.tokens} | {r.mode} | {fmt(r.seconds, '.2f')} | "
              f"{fmt(r.tokens_per_s, '.1f')} | {fmt(r.rtf, '.3f')} | {fmt(speedup, '.1f') + ('x' if speedup else '')} | {r.note} |")
    print("\nPer-step cost (flat for the cache, growing with position without it):")
    print("\n".join(flat))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([{**r.__dict__, "tokens_per_s": r.tokens_per_s, "rtf": r.rtf} for r in rows] + [{"flatness": flat}],
                      f, indent=1)


if __name__ == "__main__":
    main()
