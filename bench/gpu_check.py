"""One GPU check anyone can run: one ``PASS``/``FAIL``/``INFO`` line per check, then the figures.

    python bench/gpu_check.py                      # one CUDA GPU (H100/H200: well under 8 minutes)
    python bench/gpu_check.py --device cuda:1      # another GPU
    python bench/gpu_check.py --dry-run            # = --device cpu --tiny: every code path, tiny config, CPU

Checks (what the project has today):

* ``cuda``            CUDA usable: the torch build, the device, a matmul on it.
* ``decode_b1/b8``    greedy decoding of the default config, eager KV-cached one-step decode against
                      the CUDA-graph replay (``generate(..., compile=True)``): tokens must be equal;
                      tokens/s of both (target: >= 3,000 tokens/s at batch 1 with the graph).
                      On the CPU (dry run) the second path is the uncached decoder instead, which
                      must give the same tokens too; no figure is a target there.
* ``graph_other_dev`` with more than one GPU: the CUDA-graph decode on a device that is not the
                      current one gives the eager tokens (INFO skip with one GPU).
* ``train_fp16``, ``train_bf16``, ``train_fp16_relu2``: a short training run on a fixed batch
                      (forward/backward/AdamW, GradScaler for fp16): no non-finite loss and no
                      skipped GradScaler step after the warm-up steps, and the loss goes down.
* ``naive_reference`` the naive attention gives the model's loss and gradients (fp32), so the
                      speed comparison compares equal work.
* ``train_speed``     training tokens/s of the ~60 M config (hidden 512, 8+8 layers; batch 32,
                      text 120, audio <= 600, bf16) with the model's attention and with a naive
                      reference (explicit matmul-softmax attention, materialised mask) in the same
                      run; target ratio >= 4.
* ``train_syncs``     the Echolancer recipe's ``Trainer.train_step`` (tiny model, the recipe's
                      precision, fused AdamW, pinned batches as the DataLoader gives them): host
                      reads of device values (``item``/``float``/``bool``/``tolist``... counted) and,
                      on CUDA, synchronizing CUDA calls (``torch.cuda.set_sync_debug_mode("warn")``)
                      per ordinary step after a warm-up; both must be 0.
* ``vocoder_fp16``, ``vocoder_bf16``: the vocoder recipe's ``VocoderTrainer.train_step`` on a fixed
                      batch (the shipped iSTFTNet config on CUDA): no non-finite loss and no skipped
                      step (GradScaler or policy) after the warm-up. fp16 is CUDA-only.
* ``compile_recompiles`` the recipe with ``training.compile: true`` over batches of four different
                      padded lengths: no new dynamo graph after the first two (on the CPU the dry run
                      uses dynamo's eager backend, which needs no C++ toolchain).

Exit status: 0 if nothing failed, 1 if a check failed, 2 if CUDA is not usable (with the reason
and what to install). A time budget (``--budget_s``, default 420 s) skips what is left, as INFO.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from typing import Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from train_speed import BIG, attention, make_batch  # noqa: E402  (bench/train_speed.py: naive reference)

from model.echolancer import Echolancer  # noqa: E402
from model.generation import generate  # noqa: E402
from model.loss import EcholancerLoss  # noqa: E402
from training.metrics import MetricWindow  # noqa: E402
from utils.config import ConfigError, load_config  # noqa: E402
from utils.device import CudaUnavailableError, pick_device  # noqa: E402

TINY = "config/model_tiny.yaml"
DEFAULT = "config/model.yaml"


class Report:
    """Collects the check lines (printed as they come) and the figures."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.figures: list[str] = []

    def add(self, status: str, name: str, detail: str) -> None:
        self.lines.append((status, name, detail))
        print(f"{status:4} {name}: {detail}", flush=True)

    def figure(self, text: str) -> None:
        self.figures.append(text)

    @property
    def failed(self) -> bool:
        return any(s == "FAIL" for s, _, _ in self.lines)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- checks ------------------------------------------------------------------------------------------


def check_cuda(device: torch.device, rep: Report) -> None:
    a = torch.randn(256, 256, device=device)
    ref = (a.cpu().double() @ a.cpu().double().T).to(device)
    err = ((a @ a.T).double() - ref).abs().max().item() / ref.abs().max().item()  # relative: TF32 is allowed
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    cap = ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else "-"
    status = "PASS" if err < 1e-2 else "FAIL"
    if device.type != "cuda":
        status = "INFO"
    rep.add(status, "cuda", f"{name}, capability {cap}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
                            f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s), matmul relative error {err:.1e}")


def _decode_inputs(model: Echolancer, batch: int, text_len: int, device: torch.device):
    g = torch.Generator().manual_seed(batch)
    texts = torch.randint(3, min(30, model.cfg.vocab_size), (batch, text_len), generator=g).to(device)
    src_lens = torch.full((batch,), text_len, device=device)
    speakers = torch.zeros(batch, dtype=torch.long, device=device) if model.cfg.multi_speaker else None
    return speakers, texts, src_lens


def _timed_generate(model: Echolancer, inputs, length: int, device: torch.device, repeats: int, **kw):
    """Best time of ``repeats`` greedy full-length generations after a warm-up, and the tokens."""
    speakers, texts, src_lens = inputs

    def once():
        return generate(model, speakers, texts, src_lens, max_length=length, min_length=length, temperature=0.0, **kw)

    res = once()  # warm-up (CUDA-graph capture, cuBLAS handles)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        res = once()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, res.tokens


def check_decode(model: Echolancer, device: torch.device, batch: int, length: int, text_len: int, repeats: int,
                 rep: Report) -> None:
    inputs = _decode_inputs(model, batch, text_len, device)
    if device.type == "cuda":
        fast_name, fast_kw = "cuda graph", {"compile": True}
    else:  # the CPU has no CUDA graph: compare the cached decode with the uncached reference instead
        fast_name, fast_kw = "uncached", {"use_cache": False}
    t_eager, tok_eager = _timed_generate(model, inputs, length, device, repeats)
    t_fast, tok_fast = _timed_generate(model, inputs, length, device, repeats, **fast_kw)
    n = batch * length
    equal = torch.equal(tok_eager.cpu(), tok_fast.cpu())
    detail = (f"batch {batch}, {length} tokens: eager {n / t_eager:,.0f} tok/s, {fast_name} {n / t_fast:,.0f} tok/s "
              f"({t_eager / t_fast:.2f}x), tokens {'equal' if equal else 'DIFFER'}")
    rep.add("PASS" if equal else "FAIL", f"decode_b{batch}", detail)
    rep.figure(f"decode batch {batch}: eager {n / t_eager:,.0f} tok/s, {fast_name} {n / t_fast:,.0f} tok/s")
    if device.type == "cuda" and batch == 1:
        ok = n / t_fast >= 3000
        rep.add("PASS" if ok else "FAIL", "decode_b1_target", f"{n / t_fast:,.0f} tok/s with the graph (target >= 3,000)")


def check_graph_other_device(cfg, length: int, text_len: int, rep: Report) -> None:
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        rep.add("INFO", "graph_other_dev", "skipped: needs 2 GPUs (capture on a device that is not the current one)")
        return
    current = torch.cuda.current_device()
    other = torch.device("cuda", 1 if current == 0 else 0)
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg).to(other).eval()
    inputs = _decode_inputs(model, 2, text_len, other)
    try:
        _, eager = _timed_generate(model, inputs, length, other, 1)
        _, graph = _timed_generate(model, inputs, length, other, 1, compile=True)
        equal = torch.equal(eager.cpu(), graph.cpu())
        rep.add("PASS" if equal else "FAIL", "graph_other_dev",
                f"current device cuda:{current}, model on {other}: graph tokens {'equal to' if equal else 'DIFFER from'} eager")
    except Exception as e:  # the capture itself failing is the finding
        rep.add("FAIL", "graph_other_dev", f"model on {other} (current cuda:{current}): {type(e).__name__}: {e}")


def check_training(cfg, device: torch.device, precision: str, steps: int, warmup: int, shape: tuple[int, int, int],
                   name: str, rep: Report) -> None:
    """A fixed batch, ``steps`` AdamW steps with a linear warm-up; counts trouble after the warm-up."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device.type == "cpu" and precision == "fp16" and not _cpu_fp16_autocast():
        rep.add("INFO", name, "skipped: this torch has no fp16 autocast on the CPU")
        return
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg).to(device).train()
    crit = EcholancerLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    B, S, T = shape
    batch, _ = make_batch(cfg, B, S, T, device, seed=1)
    losses, bad_after_warmup, skipped_after_warmup = [], 0, 0
    for step in range(steps):
        with torch.autocast(device.type, dtype=dtype):
            loss = crit(model(*batch)).total
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        skipped = scaler.is_enabled() and scaler.get_scale() < scale
        if not skipped:  # the scheduler steps only with the optimizer (no "lr_scheduler before optimizer" warning)
            sched.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        losses.append(value)
        if step >= warmup:
            bad_after_warmup += not math.isfinite(value)
            skipped_after_warmup += bool(skipped)
    first, last = losses[0], min(losses[-3:])
    ok = bad_after_warmup == 0 and skipped_after_warmup == 0 and math.isfinite(last) and last < first
    rep.add("PASS" if ok else "FAIL", name,
            f"{precision}, {steps} steps (warm-up {warmup}), batch {B}x{S}/{T}: loss {first:.3f} -> {last:.3f}, "
            f"non-finite after warm-up {bad_after_warmup}, skipped GradScaler steps after warm-up {skipped_after_warmup}")


def _cpu_fp16_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    except Exception:
        return False


def _train_tokens_per_s(cfg, impl: str, device: torch.device, shape: tuple[int, int, int], steps: int,
                        amp_dtype: Optional[torch.dtype]) -> tuple[float, float]:
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    crit = EcholancerLoss()
    B, S, T = shape
    batch, n_audio = make_batch(cfg, B, S, T, device)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def step():
        with amp:
            loss = crit(model(*batch)).total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with attention(impl):
        for _ in range(2):
            step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
    dt = (time.perf_counter() - t0) / steps
    return n_audio / dt, model.num_parameters() / 1e6


def check_naive_reference(cfg, device: torch.device, shape: tuple[int, int, int], rep: Report) -> None:
    """The naive attention computes what the model's attention computes (same loss and gradients),
    so the speed comparison below compares two ways of doing the same work."""
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg).to(device).train()
    batch, _ = make_batch(cfg, *shape, device)
    crit = EcholancerLoss()
    out = {}
    for impl in ("naive", "sdpa"):
        model.zero_grad(set_to_none=True)
        model.eval()  # no dropout: both passes compute the same function
        with attention(impl):
            loss = crit(model(*batch)).total
            loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        out[impl] = (loss.item(), grad)
    d_loss = abs(out["naive"][0] - out["sdpa"][0]) / abs(out["sdpa"][0])
    d_grad = ((out["naive"][1] - out["sdpa"][1]).norm() / out["sdpa"][1].norm()).item()
    ok = d_loss < 1e-4 and d_grad < 1e-3
    rep.add("PASS" if ok else "FAIL", "naive_reference",
            f"fp32 loss relative difference {d_loss:.1e}, gradient {d_grad:.1e} (naive vs model attention)")


def check_train_speed(cfg, device: torch.device, shape: tuple[int, int, int], steps: int, rep: Report) -> None:
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    naive, params = _train_tokens_per_s(cfg, "naive", device, shape, steps, amp_dtype)
    sdpa, _ = _train_tokens_per_s(cfg, "sdpa", device, shape, steps, amp_dtype)
    ratio = sdpa / naive
    B, S, T = shape
    detail = (f"{params:.1f} M params, batch {B}, text {S}, audio <= {T}: model attention {sdpa:,.0f} audio tok/s, "
              f"naive {naive:,.0f} tok/s, ratio {ratio:.2f}x (target >= 4x)")
    status = ("PASS" if ratio >= 4 else "FAIL") if device.type == "cuda" else "INFO"
    rep.add(status, "train_speed", detail)
    rep.figure(f"training ({params:.0f} M, {'bf16' if amp_dtype else 'fp32'}): {sdpa:,.0f} tok/s vs naive {naive:,.0f} "
               f"({ratio:.2f}x)")


def _recipe_trainer(device: torch.device, work: str, overrides: list[str]):
    """The Echolancer recipe's Trainer on the tiny model and a dummy corpus under ``work``."""
    from data.dummy import create_dummy_data_files
    from training.echolancer import RunPaths, Trainer
    from utils.config import load_configs
    from utils.distributed import DistInfo

    sets = ["training.batch_size=4", "training.log_step=1000", "training.val_step=1000", "training.save_step=1000",
            "training.test_step=1000", "training.num_workers=0", "wandb.mode=disabled"] + overrides
    mcfg, tcfg = load_configs(TINY, "config/train_tiny.yaml", sets)
    data = os.path.join(work, "train")
    if not os.path.isdir(data):
        create_dummy_data_files(data, mcfg, n_files=32, max_text_len=40, seed=0)
    out = os.path.join(work, f"out{len(os.listdir(work))}")
    # These trainers only step; they log nothing. WANDB_MODE (set by CI and the tests) would win
    # over wandb.mode=disabled and leave an unfinished offline run behind in this process.
    saved = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "disabled"
    try:
        return Trainer(mcfg, tcfg, RunPaths(data, None, out, export=False), DistInfo(device=device))
    finally:
        if saved is None:
            del os.environ["WANDB_MODE"]
        else:
            os.environ["WANDB_MODE"] = saved


def _pinned(batch: dict, device: torch.device) -> dict:
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _HostReads:
    """Counts ``item``/``__float__``/``__int__``/``__bool__``/``__index__``/``tolist``/``numpy`` on tensors
    other than the step's input batch and the optimizer's host-side step counters."""

    NAMES = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy")

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.n, self.allowed = optimizer, 0, set()
        self._orig = {k: getattr(torch.Tensor, k) for k in self.NAMES}

    def _wrap(self, name: str):
        orig, counter = self._orig[name], self

        def read(t, *a, **k):
            ptr = t.untyped_storage().data_ptr()
            steps = {s["step"].untyped_storage().data_ptr() for s in counter.optimizer.state.values()
                     if "step" in s and s["step"].device.type == "cpu"}
            if ptr not in counter.allowed and ptr not in steps:
                counter.n += 1
            return orig(t, *a, **k)

        return read

    def __enter__(self):
        for k in self.NAMES:
            setattr(torch.Tensor, k, self._wrap(k))
        return self

    def __exit__(self, *exc) -> None:
        for k, f in self._orig.items():
            setattr(torch.Tensor, k, f)


def check_train_syncs(device: torch.device, work: str, rep: Report) -> None:
    import warnings

    # On the CPU the model is single-speaker: its speaker-range check reads ids there only.
    over = ["optimizer.impl=fused"] + (["model.multi_speaker=false"] if device.type != "cuda" else [])
    t = _recipe_trainer(device, work, over)
    items = [t.train_set[i] for i in range(len(t.train_set))]
    batches = [_pinned(t.collate(items[4 * i:4 * i + 4]), device) for i in range(len(items) // 4)]
    window = MetricWindow(last_keys=("train/lr",))
    for b in batches[:2]:  # warm-up: optimizer state, cuBLAS handles, allocator
        window.add(t.train_step([b]))
    sync(device)
    measured = batches[2:7]
    reads, sync_warnings = 0, 0
    for b in measured:
        counter = _HostReads(t.optimizer)
        counter.allowed = {v.untyped_storage().data_ptr() for v in b.values() if isinstance(v, torch.Tensor)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with counter:
                    window.add(t.train_step([b]))
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
        reads += counter.n
        sync_warnings += sum("synchroniz" in str(w.message).lower() for w in caught)
    n = len(measured)
    window.mean()  # the log line's one read
    ok = reads == 0 and sync_warnings == 0
    cuda_part = f", synchronizing CUDA calls {sync_warnings / n:.1f}" if device.type == "cuda" else ""
    rep.add("PASS" if ok else "FAIL", "train_syncs",
            f"{t.precision}, {t.optimizer_impl} AdamW, {n} ordinary steps: host reads per step {reads / n:.1f}"
            f"{cuda_part} (the log step reads the window once)")
    rep.figure(f"syncs per training step: host reads {reads / n:.1f}" + cuda_part)


def check_vocoder(device: torch.device, precision: str, tiny: bool, steps: int, warmup: int, rep: Report) -> None:
    from training.vocoder import VocoderTrainer
    from utils.config import ConfigError
    from utils.config.vocoder import VocoderConfig

    name = f"vocoder_{precision}"
    sets = [f"training.precision={precision}"]
    if tiny:
        sets += ["generator.upsample_initial_channel=32", "training.segment_size=2048", "discriminator.periods=[2,3]",
                 "discriminator.msd_scales=2"]
    cfg = load_config("config/istftnet_tiny.yaml" if tiny else "config/istftnet.yaml", sets, schema=VocoderConfig)
    torch.manual_seed(0)
    try:
        tr = VocoderTrainer(cfg, device)
    except ConfigError as e:
        rep.add("INFO", name, f"skipped: {e}")
        return
    B, N = (2 if tiny else 8), cfg.training.segment_size
    g = torch.Generator().manual_seed(0)
    t = torch.arange(N) / cfg.audio.sampling_rate
    f0 = 100 + 300 * torch.rand(B, 1, generator=g)
    wav = 0.4 * torch.sin(2 * math.pi * f0 * t) + 0.02 * torch.randn(B, N, generator=g)
    skipped, losses = 0, []
    for step in range(steps):
        scale = tr.scaler.get_scale() if tr.scaler.is_enabled() else 1.0
        out = tr.train_step(wav)
        bad = "skipped_nonfinite" in out or (tr.scaler.is_enabled() and tr.scaler.get_scale() < scale)
        if step >= warmup:
            skipped += bool(bad)
        if "loss_mel" in out:
            losses.append(out["loss_mel"])
    ok = skipped == 0 and bool(losses) and all(math.isfinite(x) for x in losses)
    rep.add("PASS" if ok else "FAIL", name,
            f"{precision}, {steps} steps (warm-up {warmup}), batch {B}x{N}: mel L1 {losses[0] if losses else math.nan:.3f}"
            f" -> {losses[-1] if losses else math.nan:.3f}, skipped steps after warm-up {skipped}")


def check_compile_recompiles(device: torch.device, work: str, rep: Report) -> None:
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    if device.type != "cuda":  # no C++ toolchain needed, and seconds instead of minutes on 2 cores
        torch.compile = lambda model, **kw: real_compile(model, backend="eager", **kw)
    torch._dynamo.reset()
    counters.clear()
    try:
        t = _recipe_trainer(device, work, ["training.compile=true", "training.pad_multiple=16"])
        items = sorted((t.train_set[i] for i in range(len(t.train_set))), key=lambda it: len(it["mel"]))
        groups = [items[i:i + 4] for i in range(0, len(items) - 3, 4)]
        by_shape: dict = {}
        for grp in groups:
            b = t.collate(grp)
            by_shape.setdefault((b["texts"].shape[1], b["mels"].shape[1]), b)
        shapes = list(by_shape)[:4]
        if len(shapes) < 3:
            rep.add("INFO", "compile_recompiles", f"skipped: only {len(shapes)} padded shapes in the dummy corpus")
            return
        for s in shapes[:2]:
            t.train_step([_pinned(by_shape[s], device)])
        after_warmup = counters["stats"]["unique_graphs"]
        for s in shapes[2:]:
            t.train_step([_pinned(by_shape[s], device)])
        sync(device)
        new = counters["stats"]["unique_graphs"] - after_warmup
    finally:
        torch.compile = real_compile
        torch._dynamo.reset()
    backend = "inductor" if device.type == "cuda" else "eager backend"
    rep.add("PASS" if new == 0 else "FAIL", "compile_recompiles",
            f"training.compile ({backend}, dynamic shapes), padded (text, audio) shapes {shapes}: "
            f"{after_warmup} graph(s) after the first two, {new} new after the others")
    rep.figure(f"training.compile: {new} recompiles after the first two buckets")


# ---- driver ------------------------------------------------------------------------------------------


def run_checks(args: argparse.Namespace, device: torch.device) -> Report:
    rep = Report()
    t_start = time.perf_counter()
    tiny = args.tiny
    small = load_config(TINY if tiny else DEFAULT)
    big = load_config(TINY, ["model.encoder.dropout=0.0"]) if tiny else load_config(DEFAULT, BIG)
    relu2 = load_config(TINY if tiny else DEFAULT, ["model.activation=relu2"])
    decode_len, text_len, repeats = (8, 10, 1) if tiny else (args.decode_tokens, 80, 3)
    train_shape = (2, 12, 24) if tiny else (16, 80, 300)
    train_steps, warmup = (6, 2) if tiny else (60, 10)
    speed_shape = (2, 12, 24) if tiny else (32, 120, 600)
    speed_steps = 1 if tiny else 10

    decode_model = None
    import tempfile

    work = tempfile.mkdtemp(prefix="gpu_check_")
    voc_steps, voc_warmup = (4, 1) if tiny else (40, 10)

    def decode(batch: int) -> None:
        nonlocal decode_model
        if decode_model is None:
            torch.manual_seed(0)
            decode_model = Echolancer.from_config(small).to(device).eval()
        check_decode(decode_model, device, batch, decode_len, text_len, repeats, rep)

    checks: list[tuple[str, Callable[[], None]]] = [
        ("cuda", lambda: check_cuda(device, rep)),
        ("decode_b1", lambda: decode(1)),
        ("decode_b8", lambda: decode(8)),
        ("graph_other_dev", lambda: check_graph_other_device(small, decode_len, text_len, rep)
         if device.type == "cuda" else rep.add("INFO", "graph_other_dev", "skipped: CUDA only")),
        ("train_fp16", lambda: check_training(small, device, "fp16", train_steps, warmup, train_shape, "train_fp16", rep)),
        ("train_bf16", lambda: check_training(small, device, "bf16", train_steps, warmup, train_shape, "train_bf16", rep)),
        ("train_fp16_relu2", lambda: check_training(relu2, device, "fp16", train_steps, warmup, train_shape,
                                                    "train_fp16_relu2", rep)),
        ("naive_reference", lambda: check_naive_reference(small, device, train_shape, rep)),
        ("train_speed", lambda: check_train_speed(big, device, speed_shape, speed_steps, rep)),
        ("train_syncs", lambda: check_train_syncs(device, work, rep)),
        ("vocoder_fp16", lambda: check_vocoder(device, "fp16", tiny, voc_steps, voc_warmup, rep)),
        ("vocoder_bf16", lambda: check_vocoder(device, "bf16", tiny, voc_steps, voc_warmup, rep)),
        ("compile_recompiles", lambda: check_compile_recompiles(device, work, rep)),
    ]
    for name, fn in checks:
        if args.only and name not in args.only:
            continue
        if time.perf_counter() - t_start > args.budget_s:
            rep.add("INFO", name, f"skipped: time budget of {args.budget_s:.0f} s spent")
            continue
        try:
            fn()
        except Exception as e:
            rep.add("FAIL", name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            if args.verbose:
                traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rep.add("INFO", "not_covered", "FlexAttention, and train.py end to end in fp16/bf16 (the fixed-batch "
                                   "train_fp16/train_bf16 checks stand in), are not checked here yet")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print("\nfigures:")
    for f in rep.figures:
        print(f"  {f}")
    print(f"total {time.perf_counter() - t_start:.0f} s; {'FAILED' if rep.failed else 'no failures'}")
    return rep


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny config and shapes: exercises the code paths only")
    p.add_argument("--dry-run", action="store_true", help="= --device cpu --tiny")
    p.add_argument("--decode_tokens", type=int, default=300)
    p.add_argument("--budget_s", type=float, default=420.0, help="skip the remaining checks after this long")
    p.add_argument("--only", nargs="*", default=None, help="run only these checks (names as printed)")
    p.add_argument("--verbose", action="store_true", help="tracebacks for failed checks")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    try:
        device = pick_device(args.device)
    except (CudaUnavailableError, ConfigError) as e:
        print(f"FAIL cuda: bench/gpu_check.py needs a CUDA GPU; {e}")
        print("To exercise the checks' code on the CPU: python bench/gpu_check.py --dry-run")
        return 2
    if device.type != "cuda" and not args.tiny:
        print(f"bench/gpu_check.py checks a GPU; --device {args.device} runs only with --tiny (or use --dry-run)")
        return 2
    if "compile" not in inspect.signature(generate).parameters:
        print("INFO decode: generate() has no 'compile' flag in this version; the graph comparison will fail")
    rep = run_checks(args, device)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
