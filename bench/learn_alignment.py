"""Can the model learn to align text and audio? A synthetic task any CPU can run.

    python bench/learn_alignment.py --minutes 15 --threads 1                 # the default variants
    python bench/learn_alignment.py --minutes 3 --variants default no_prior --jobs 2
    python bench/learn_alignment.py --config config/model.yaml --set model.decoder.layer=4

The task. Text: random strings over 26 letters, 5–30 long. Audio: each letter emits a fixed run of
2–6 distinct codec tokens (one duration table for the whole run), concatenated. A model that
reads the text in order and keeps its place produces the audio exactly; one that cannot tell where
a sentence starts, or loses its place, does not. It is the smallest version of what TTS asks of
Echolancer: a monotonic alignment between two sequences of different rates, found by attention.

Each variant is the model of ``--config`` (with ``--set``), shrunk to the benchmark size (width 128,
2 + 2 layers, ~1.5 M parameters, unless ``--keep_size``), plus the variant's own overrides; it
trains for ``--minutes`` of wall time (or ``--max_steps``), then decodes greedily:
    in-range  100 unseen strings of 5–30 letters
    long      100 strings of 45–60 letters (1.5–2x the longest training string)
and reports teacher-forced accuracy, exact sequence match, normalised edit distance, first-token
accuracy, the share of rows that never stopped (hit the length limit) and the mean length ratio.
``steps→0.9`` is the first evaluation step at which in-range exact match reached 0.9 (evaluated on
50 strings every ``--eval_every`` steps).

Speed varies across machines: compare variants from the same run, and prefer ``--max_steps``
when comparing runs from different machines. Nothing in the model knows about this task.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.alignment import alignment_loss, alignment_prior, prior_weight  # noqa: E402
from model.echolancer import Echolancer  # noqa: E402
from model.generation import generate  # noqa: E402
from model.generation_defaults import length_ratio_stats  # noqa: E402
from model.loss import EcholancerLoss, text_ctc_loss  # noqa: E402
from model.tracking import TrackingParams, alignment_report, tracking_params  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.config.train import AlignmentConfig  # noqa: E402
from utils.scheduler import SCHEDULES, lr_multiplier  # noqa: E402

LETTERS = 26
SMALL = [  # the benchmark size: ~1.5 M parameters
    "model.encoder.hidden=128", "model.decoder.hidden=128", "model.encoder.layer=2", "model.decoder.layer=2",
    "model.encoder.head=4", "model.decoder.head=4", "model.encoder_kv_heads=4", "model.decoder_kv_heads=4",
    "model.emotion_input_size=8", "model.emotion_hidden_sizes=[8]", "model.emotion_channels=8",
    "model.multi_speaker=false", "model.vq_token_mode=false",
]
# name -> (model overrides, alignment prior on, legacy symmetric encoder, guided loss on, forward-sum on)
VARIANTS: dict[str, tuple[list[str], bool, bool, bool, bool]] = {
    "default": ([], True, False, True, False),  # what config/train.yaml trains: prior + guided loss, shared codes
    "prior_only": ([], True, False, False, False),  # the default before the guided loss
    "guided_only": ([], False, False, True, False),
    "forward_sum": ([], True, False, False, True),  # prior + the forward-sum (CTC) loss
    "forward_sum_guided": ([], True, False, True, True),  # prior + both losses
    "forward_sum_only": ([], False, False, False, True),
    "no_prior": ([], False, False, False, False),
    "symmetric_old": (["model.use_alibi=true"], False, True, False, False),
    "sinusoidal": (["model.use_alibi=false"], False, False, False, False),
    "directional": (["model.use_alibi=true", "model.encoder_position=directional"], False, False, False, False),
    "absolute": (["model.use_alibi=true", "model.encoder_position=absolute"], False, False, False, False),
    "directional_absolute": (["model.use_alibi=true", "model.encoder_position=directional_absolute"],
                             False, False, False, False),
    "directional+prior": (["model.use_alibi=true", "model.encoder_position=directional"], True, False, False,
                          False),
    "absolute+prior": (["model.use_alibi=true", "model.encoder_position=absolute"], True, False, False, False),
    "sinusoidal+prior": (["model.use_alibi=false"], True, False, False, False),
    # the default with a fifth of the teacher-forced audio inputs hidden (model.decoder.token_dropout)
    "token_dropout": (["model.decoder.token_dropout=0.2"], True, False, True, False),
    "token_dropout_forward_sum": (["model.decoder.token_dropout=0.2"], True, False, True, True),
    # the default with the decoder states read back to the text (model.decoder.text_ctc_weight)
    "text_ctc": (["model.decoder.text_ctc_weight=1.0"], True, False, True, False),
    # The default shares codec-token vectors by FSQ digit (model.code_levels, [8, 5, 5, 5]): the
    # task's tokens fill the first ids of that grid letter by letter, so one letter's run of ids
    # mostly shares its upper digits, as an FSQ grid groups similar frames. This is the default
    # before that: a free vector per token.
    "free_codes": (["model.code_levels=[]"], True, False, True, False),
    "code_factors_4x4x4x4": (["model.code_levels=[4,4,4,4]"], True, False, True, False),
}


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class Task:
    """Letters 1..26 (0 is unused); letter i emits tokens offset[i] .. offset[i] + dur[i] - 1."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.dur = torch.randint(2, 7, (LETTERS + 1,), generator=g)
        self.dur[0] = 0
        self.offset = torch.cat([torch.zeros(1, dtype=torch.long), self.dur.cumsum(0)[:-1]])
        self.codebook_size = int(self.dur.sum())

    def audio(self, text: list[int]) -> list[int]:
        out: list[int] = []
        for c in text:
            out += range(int(self.offset[c]), int(self.offset[c] + self.dur[c]))
        return out

    def strings(self, n: int, lo: int, hi: int, g: torch.Generator) -> list[list[int]]:
        lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
        return [torch.randint(1, LETTERS + 1, (L,), generator=g).tolist() for L in lens]

    def batch(self, texts: list[list[int]], pad_id: int) -> dict:
        audios = [self.audio(t) for t in texts]
        S, T = max(map(len, texts)), max(map(len, audios))
        tx = torch.zeros(len(texts), S, dtype=torch.long)
        au = torch.full((len(texts), T), pad_id, dtype=torch.long)
        for i, (t, a) in enumerate(zip(texts, audios)):
            tx[i, : len(t)] = torch.tensor(t)
            au[i, : len(a)] = torch.tensor(a)
        return {"texts": tx, "src_lens": torch.tensor([len(t) for t in texts]),
                "mels": au, "mel_lens": torch.tensor([len(a) for a in audios]), "targets": audios}


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def edit_distance(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@torch.no_grad()
def teacher_forced_accuracy(model: Echolancer, b: dict) -> float:
    model.eval()
    out = model(None, b["texts"], b["src_lens"], b["mels"], b["mel_lens"])
    valid = ~out.tgt_pad
    return float(((out.logits.argmax(-1) == out.targets) & valid).sum() / valid.sum())


def decode_metrics(model: Echolancer, b: dict, batch_size: int = 50,
                   tracking: Optional[TrackingParams] = None) -> dict[str, float]:
    """Greedy decoding of ``b``: exact match, edit distance, first token, rows that never stopped,
    length ratio, and from the attention: coverage of the text and backward jumps per string."""
    exact = first = never = back = 0
    dist = ratio = cover = 0.0
    n = len(b["targets"])
    for s in range(0, n, batch_size):
        idx = slice(s, s + batch_size)
        targets = b["targets"][idx]
        max_len = int(max(map(len, targets)) * 2 + 10)
        res = generate(model, None, b["texts"][idx], b["src_lens"][idx], max_length=max_len, temperature=0.0,
                       tracking=tracking, record_alignment=True)
        for i, tgt in enumerate(targets):
            got = res.tokens[i, : int(res.lengths[i])].tolist()
            ran = int(res.lengths[i]) + (0 if res.hit_max_length[i] else 1)
            a = alignment_report(res.attended[i], ran, int(b["src_lens"][idx][i]))
            cover += a["coverage"]
            back += a["backward_jumps"]
            exact += got == tgt
            first += bool(got) and got[0] == tgt[0]
            never += bool(res.hit_max_length[i])
            dist += edit_distance(got, tgt) / len(tgt)
            ratio += len(got) / len(tgt)
    return {"exact": exact / n, "edit": dist / n, "first": first / n, "never": never / n, "len_ratio": ratio / n,
            "coverage": cover / n, "back": back / n}


# --------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------


@dataclass
class RunArgs:
    name: str
    config: str
    overrides: list[str]
    prior: bool
    legacy_symmetric: bool
    minutes: float
    max_steps: int
    threads: int
    seed: int
    batch_size: int
    lr: float
    eval_every: int
    prior_hold: int
    prior_anneal: int
    prior_scale: float
    align: AlignmentConfig  # the alignment losses (weights 0 = off), as training reads them
    schedule: str = "warmup_cosine"  # the learning-rate decay after the warm-up, as scheduler.type names it


WARMUP = 200  # optimizer steps of linear warm-up, every schedule
DECAYS = tuple(s for s in SCHEDULES if s != "noam")  # noam has no end to decay to


def lr_factor(a: RunArgs, step: int, train_s: float) -> float:
    """The learning-rate multiplier: a linear warm-up by steps, times ``a.schedule`` decaying over the
    run's progress. Progress is the larger of steps done and training time spent, so a run cut by
    ``--minutes`` ends its decay at its time limit just as one cut by ``--max_steps`` does. Unlike
    training's schedule, the decay counts from step 0 (under the warm-up), in thousandths of the run:
    the end of a run cut by time is not known in steps."""
    warm = lr_multiplier(step, "constant_with_warmup", WARMUP, 0)
    done = max(step / a.max_steps, train_s / (a.minutes * 60))
    return warm * lr_multiplier(round(1000 * min(1.0, done)), a.schedule, 0, 1000)


def run_variant(a: RunArgs) -> dict:
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    task = Task(a.seed)
    levels = load_config(a.config, a.overrides).model.code_levels
    size = math.prod(levels) if levels else task.codebook_size  # a grid holds the task's tokens
    if size < task.codebook_size:
        raise SystemExit(f"model.code_levels {levels} hold {size} codes; the task needs {task.codebook_size}")
    cfg = load_config(a.config, a.overrides + [f"model.codebook_size={size}", f"model.vq_vocab_size={size}"])
    model = Echolancer.from_config(cfg)
    if a.legacy_symmetric:  # the mirror-blind encoder of earlier versions, kept only as a baseline
        model.encoder.position = "symmetric"
    loss_fn = EcholancerLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)

    g_train = torch.Generator().manual_seed(a.seed + 1)
    g_eval = torch.Generator().manual_seed(10_000 + a.seed)  # the same held-out strings for every variant
    held_in = task.batch(task.strings(100, 5, 30, g_eval), model.pad_id)
    held_long = task.batch(task.strings(100, 45, 60, g_eval), model.pad_id)
    probe = {k: (v[:50] if k != "targets" else v[:50]) for k, v in held_in.items()}

    step, t0, steps_to_09, curve = 0, time.time(), None, []
    eval_time = 0.0
    while step < a.max_steps and (time.time() - t0 - eval_time) < a.minutes * 60:
        model.train()
        for group in opt.param_groups:
            group["lr"] = a.lr * lr_factor(a, step, time.time() - t0 - eval_time)
        b = task.batch(task.strings(a.batch_size, 5, 30, g_train), model.pad_id)
        S, T = b["texts"].shape[1], b["mels"].shape[1]
        w = prior_weight(step, a.prior, a.prior_hold, a.prior_anneal)
        bias = alignment_prior(b["src_lens"], b["mel_lens"], S, T, a.prior_scale, w)
        out = model(None, b["texts"], b["src_lens"], b["mels"], b["mel_lens"], cross_bias=bias,
                    return_cross_weights=a.align.loss_on)
        loss = loss_fn(out).total
        if a.align.loss_on:  # the same loss, and normalisation per decoder step, as training
            loss = loss + alignment_loss(out.cross_weights, b["src_lens"], b["mel_lens"] + 1, a.align)
        if out.text_logits is not None:  # the text-recognition loss, weighted as training weights it
            loss = loss + model.cfg.decoder.text_ctc_weight * text_ctc_loss(
                out.text_logits, b["texts"], b["src_lens"], b["mel_lens"] + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % a.eval_every == 0:
            e0 = time.time()
            m = decode_metrics(model, probe)
            curve.append((step, round(time.time() - t0 - eval_time, 1), m["exact"]))
            if steps_to_09 is None and m["exact"] >= 0.9:
                steps_to_09 = step
            eval_time += time.time() - e0
    train_s = time.time() - t0 - eval_time
    res = {"name": a.name, "steps": step, "train_min": train_s / 60, "params": model.num_parameters(),
           "steps_to_0.9": steps_to_09, "curve": curve, "tf_acc": teacher_forced_accuracy(model, held_in)}
    res["in"] = decode_metrics(model, held_in)
    res["long"] = decode_metrics(model, held_long)
    # The same model with alignment-tracked decoding, thresholds from the training strings' ratios.
    train_b = task.batch(task.strings(500, 5, 30, torch.Generator().manual_seed(a.seed + 2)), model.pad_id)
    stats = length_ratio_stats(train_b["src_lens"].tolist(), train_b["mel_lens"].tolist())
    track = tracking_params(stats)
    res["tracked"] = {"in": decode_metrics(model, held_in, tracking=track),
                      "long": decode_metrics(model, held_long, tracking=track)}
    return res


def _row(r: dict) -> str:
    """The variant's row and, below it, the same model decoded with alignment tracking."""
    rows = []
    for name, m in ((r["name"], r), (f"{r['name']} + tracking", r.get("tracked"))):
        if m is None:
            continue
        i, L = m["in"], m["long"]
        rows.append(
            f"| {name} | {r['steps']} | {r['tf_acc']:.3f} | {i['exact']:.2f} | {i['edit']:.3f} | "
            f"{i['first']:.2f} | {i['never']:.2f} | {i['len_ratio']:.2f} | {i['coverage']:.2f} / {i['back']:.2f} | "
            f"{L['exact']:.2f} / {L['edit']:.3f} / {L['never']:.2f} / {L['len_ratio']:.2f} / {L['coverage']:.2f} | "
            f"{r['steps_to_0.9'] if r['steps_to_0.9'] is not None else '—'} |")
    return "\n".join(rows)


def _curve(r: dict) -> str:
    pts = ", ".join(f"{s}:{e:.2f}" for s, _, e in r["curve"])
    return f"{r['name']} ({r['params'] / 1e6:.2f} M params, {r['train_min']:.1f} min) exact@step: {pts}"


def _run_logged(a: RunArgs) -> dict:
    r = run_variant(a)
    # Each variant's full row as soon as it is done, so a long run that is stopped keeps its results.
    print(f"[{a.name}] done: {_row(r)}\n[{a.name}] {_curve(r)}", flush=True)
    return r


def print_table(results: list[dict]) -> None:
    print("\n| variant | steps | tf acc | exact | edit dist | first tok | never stopped | len ratio "
          "| coverage / back jumps | long: exact / edit / never / len ratio / coverage | steps→0.9 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_row(r))
    print()
    for r in results:
        print(_curve(r))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="config/model.yaml", help="model config (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model override, all variants")
    p.add_argument("--variants", nargs="+", default=["symmetric_old", "default", "prior_only", "no_prior"],
                   help=f"any of: {', '.join(VARIANTS)}")
    p.add_argument("--minutes", type=float, default=15.0, help="training wall time per variant")
    p.add_argument("--max_steps", type=int, default=10**9, help="optimizer steps per variant (whichever first)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at the same time (processes)")
    p.add_argument("--keep_size", action="store_true", help="keep the config's size instead of the small one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2.0e-3,
                   help="peak learning rate (default: %(default)s; 1.0e-3 before the cosine decay, measured: "
                        "2.0e-3 at a constant rate learns no better, with the decay it does)")
    p.add_argument("--schedule", default="warmup_cosine", choices=DECAYS,
                   help="learning-rate decay after a 200-step warm-up, over the run's steps or minutes; "
                        "constant_with_warmup is this benchmark's schedule before it followed training's default "
                        "(default: %(default)s)")
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument("--prior_hold", type=int, default=300, help="steps at full prior strength")
    p.add_argument("--prior_anneal", type=int, default=300, help="steps of linear fade after that")
    p.add_argument("--prior_scale", type=float, default=1.0)
    p.add_argument("--guided_weight", type=float, default=1.0, help="guided attention loss weight (variants with it)")
    p.add_argument("--guided_sigma", type=float, default=0.2)
    p.add_argument("--forward_sum_weight", type=float, default=1.0, help="forward-sum loss weight (variants with it)")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; allowed: {', '.join(VARIANTS)}")

    base = ([] if args.keep_size else SMALL) + args.set
    runs = []
    for name in args.variants:
        overrides, prior, legacy, guided, fsum = VARIANTS[name]
        align = AlignmentConfig(guided_weight=args.guided_weight if guided else 0.0, guided_sigma=args.guided_sigma,
                                forward_sum_weight=args.forward_sum_weight if fsum else 0.0)
        runs.append(RunArgs(name, args.config, base + overrides, prior, legacy, args.minutes, args.max_steps,
                            args.threads, args.seed, args.batch_size, args.lr, args.eval_every,
                            args.prior_hold, args.prior_anneal, args.prior_scale,
                            align, args.schedule))
    print(f"learn_alignment: {len(runs)} variant(s), {args.minutes} min each, {args.threads} thread(s), "
          f"{args.jobs} at a time, {args.schedule} learning rate; base overrides: {' '.join(base) or '(none)'}", flush=True)
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_run_logged, runs, chunksize=1)
    else:
        results = [_run_logged(r) for r in runs]
    print_table(results)
    return 0 if all(math.isfinite(r["tf_acc"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
