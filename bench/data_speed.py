"""Data-path speed: start-up time and items/s per worker, ``.pt`` files against the packed format.

    python bench/data_speed.py                                   # 10k, 100k, 1M utterances
    python bench/data_speed.py --sizes 10000 --pt_max 10000      # quick look

Synthetic corpora are written into a temporary directory (removed afterwards unless ``--keep``):
text of 5 to 200 ids, about 4 codec tokens per character (+-25 %), 4 speakers, an emotion vector of
the config's width; the length spread of ``data/dummy.py``. For each size and format:

* write   time to create the corpus (``.pt``: ``torch.save`` per file; packed: ``PackedWriter``),
* open    ``EcholancerDataset(dir, cfg)``: for ``.pt`` the first start-up (reads and checks every
          file, then writes the index cache) and the next one (cache: one ``stat`` per file);
          for packed the only kind there is,
* sampler ``BucketBatchSampler(ds.lengths(), 32)`` plus the first epoch's batch list,
* items/s what one loader worker does: ``ds[i]`` for the sampler's (random) order, then the
          collate of each batch of 32, in this process; the page cache is warm (the corpus was
          just written), so this is the CPU cost, not a cold disk.

``.pt`` corpora above ``--pt_max`` are not written (1 M files take long to create and, uncached,
~1 ms each to open); the table says so, with an extrapolation from the largest measured size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.dataset import INDEX_CACHE, Collate, EcholancerDataset  # noqa: E402
from data.packed import PackedWriter  # noqa: E402
from data.sampler import BucketBatchSampler  # noqa: E402
from utils.config import load_config  # noqa: E402

BATCH = 32


def synthetic_lengths(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    text = rng.integers(5, 201, n)
    audio = np.maximum(1, (text * 4.0 * (0.75 + 0.5 * rng.random(n))).astype(np.int64))
    return text, audio


def write_packed(out: str, n: int, cfg, emotion_dtype: str, seed: int) -> float:
    rng = np.random.default_rng(seed)
    t_len, a_len = synthetic_lengths(n, rng)
    m = cfg.model
    t0 = time.perf_counter()
    chunk = 50_000  # tokens generated per chunk, sliced per utterance
    with PackedWriter(out, emotion_dtype=emotion_dtype, source="bench/data_speed.py") as w:
        for c in range(0, n, chunk):
            k = min(chunk, n - c)
            tl, al = t_len[c : c + k], a_len[c : c + k]
            text = rng.integers(1, m.vocab_size, int(tl.sum()), dtype=np.uint16)
            mel = rng.integers(0, m.codebook_size, int(al.sum()), dtype=np.uint16)
            emo = rng.standard_normal((k, m.emotion_input_size), dtype=np.float32)
            to = np.concatenate([[0], np.cumsum(tl)])
            mo = np.concatenate([[0], np.cumsum(al)])
            for j in range(k):
                w.add(text[to[j] : to[j + 1]], mel[mo[j] : mo[j + 1]], (c + j) % 4, emotion=emo[j],
                      name=f"utt_{c + j:07d}")
    return time.perf_counter() - t0


def write_pt(out: str, n: int, cfg, seed: int) -> float:
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    t_len, a_len = synthetic_lengths(n, np.random.default_rng(seed))
    m = cfg.model
    t0 = time.perf_counter()
    for i in range(n):
        torch.save({"text": torch.randint(1, m.vocab_size, (int(t_len[i]),), generator=g),
                    "mel": torch.randint(0, m.codebook_size, (int(a_len[i]),), generator=g),
                    "speaker": i % 4, "emotion": torch.randn(m.emotion_input_size, generator=g)},
                   os.path.join(out, f"utt_{i:07d}.pt"))
    return time.perf_counter() - t0


def timed_open(path: str, cfg) -> tuple[EcholancerDataset, float]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = EcholancerDataset(path, cfg)
    return ds, time.perf_counter() - t0


def throughput(ds: EcholancerDataset, batches: list[list[int]], max_items: int, max_seconds: float,
               collate: Collate) -> tuple[float, float]:
    """(items/s of ds[i] alone, items/s of ds[i] + collate) over the sampler's batches."""
    n = get_s = 0.0
    t_start = time.perf_counter()
    total = 0.0
    for b in batches:
        t0 = time.perf_counter()
        items = [ds[i] for i in b]
        t1 = time.perf_counter()
        collate(items)
        t2 = time.perf_counter()
        get_s += t1 - t0
        total += t2 - t0
        n += len(b)
        if n >= max_items or t2 - t_start > max_seconds:
            break
    return n / get_s, n / total


def sampler_time(ds: EcholancerDataset) -> tuple[BucketBatchSampler, list[list[int]], float]:
    t0 = time.perf_counter()
    s = BucketBatchSampler(ds.lengths(), BATCH, shuffle=True, seed=0)
    batches = s.global_batches()
    return s, batches, time.perf_counter() - t0


def _dur(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--pt_max", type=int, default=100_000, help="largest .pt corpus to write")
    p.add_argument("--config", default="config/model_tiny.yaml")
    p.add_argument("--emotion_dtype", default="float16", choices=["float16", "float32"],
                   help="packed emotion storage (float16 halves a 1M corpus's emotion file)")
    p.add_argument("--items", type=int, default=50_000, help="items timed per corpus (at most)")
    p.add_argument("--seconds", type=float, default=10.0, help="time spent on items/s per corpus (at most)")
    p.add_argument("--workdir", default=None, help="where to write the corpora (default: a temp dir)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    root = tempfile.mkdtemp(prefix="data_speed_", dir=args.workdir)
    collate = Collate(cfg.model.pad_id)
    rows = []
    print(f"config {args.config}: emotion width {cfg.model.emotion_input_size}, codebook {cfg.model.codebook_size}; "
          f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs; corpora in {root}", flush=True)
    pt_rate = None  # (write s/file, open s/file) of the largest .pt corpus measured
    try:
        for n in args.sizes:
            d = os.path.join(root, f"packed_{n}")
            w = write_packed(d, n, cfg, args.emotion_dtype, seed=n)
            size_mb = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) / 2**20
            ds, t_open = timed_open(d, cfg)
            _, batches, t_samp = sampler_time(ds)
            get_rate, full_rate = throughput(ds, batches, args.items, args.seconds, collate)
            rows.append((n, "packed", f"{w:7.1f} s", f"{t_open:7.3f} s", "-", f"{t_samp:6.2f} s",
                         f"{get_rate:9.0f}", f"{full_rate:9.0f}", f"{size_mb:,.0f} MB"))
            print(" | ".join(map(str, rows[-1])), flush=True)
            del ds
            shutil.rmtree(d, ignore_errors=True)

            if n > args.pt_max:
                note = "not measured (above --pt_max)"
                if pt_rate:
                    note += (f"; extrapolated from {pt_rate[3]:,}: write ~{_dur(pt_rate[0] * n)}, first open "
                             f"~{_dur(pt_rate[1] * n)}, cached open ~{_dur(pt_rate[2] * n)}")
                rows.append((n, ".pt", note))
                print(" | ".join(map(str, rows[-1])), flush=True)
                continue
            d = os.path.join(root, f"pt_{n}")
            w = write_pt(d, n, cfg, seed=n)
            size_mb = sum(e.stat().st_size for e in os.scandir(d)) / 2**20
            _, t_first = timed_open(d, cfg)  # reads every file, writes the index cache
            assert os.path.exists(os.path.join(d, INDEX_CACHE))
            ds, t_cached = timed_open(d, cfg)
            _, batches, t_samp = sampler_time(ds)
            get_rate, full_rate = throughput(ds, batches, args.items, args.seconds, collate)
            pt_rate = (w / n, t_first / n, t_cached / n, n)
            rows.append((n, ".pt", f"{w:7.1f} s", f"{t_first:7.3f} s", f"{t_cached:7.3f} s", f"{t_samp:6.2f} s",
                         f"{get_rate:9.0f}", f"{full_rate:9.0f}", f"{size_mb:,.0f} MB"))
            print(" | ".join(map(str, rows[-1])), flush=True)
            del ds
            shutil.rmtree(d, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print("| utterances | format | write | open (first) | open (cached) | sampler | items/s getitem | "
          "items/s getitem+collate | on disk |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = list(map(str, r)) + [""] * (9 - len(r))
        print("| " + " | ".join(c.strip() for c in cells) + " |")
    print(f"\nitems/s: one process = one loader worker, batch {BATCH}, sampler order, warm page cache. "
          "Target for 1M packed: open <= 2 s, >= 20,000 items/s per worker.")


if __name__ == "__main__":
    main()
