"""preprocess.py's QA report: hours per speaker, distributions with outliers, problems, and its printout.

Apart from the run because it only reads the finished manifest records: no audio, models or files.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict

import torch

from data.corpus import Problem


def distribution(values: dict[str, float], high_only: bool = False) -> dict:
    """Summary statistics and outliers of ``values``.

    Outliers lie beyond 3 IQR outside the quartiles (Tukey's "far out" fence): in a corpus of
    thousands of clips that lists broken ones (a wrong transcript, a truncated file), not the tails.

    Args:
        values: utterance key -> value.
        high_only: list only outliers above the upper fence (for errors, where low is good).
    """
    if not values:
        return {"count": 0}
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0], dtype=torch.float64)).tolist()
    iqr = q[4] - q[2]
    lo, hi = q[2] - 3.0 * iqr, q[4] + 3.0 * iqr
    outliers = sorted(
        ({"key": k, "value": round(v, 4)} for k, v in values.items() if v > hi or (not high_only and v < lo)),
        key=lambda o: -abs(o["value"] - q[3]),
    )
    names = ("min", "p05", "p25", "median", "p75", "p95", "max")
    stats = {n: round(x, 4) for n, x in zip(names, q)}
    return {"count": len(values), "mean": round(float(t.mean()), 4), **stats,
            "fences": [round(lo, 4), round(hi, 4)], "outliers": outliers}


def _where_order(p: Problem) -> tuple[str, int]:
    """Sort problems by file, then line number ("metadata.csv:12" -> ("metadata.csv", 12))."""
    path, _, line = p.where.rpartition(":")
    return (path, int(line)) if line.isdigit() else (p.where, 0)


def build_report(records: list[dict], problems: list[Problem], unknown: Counter, speakers: dict[str, int],
                 layout: str, skipped: int) -> dict:
    """The QA report: hours per speaker, distributions with outliers, unmappable characters, errors."""
    per_speaker: dict[str, dict] = {}
    for r in records:
        s = per_speaker.setdefault(r["speaker"], {"id": r["speaker_id"], "utterances": 0, "hours": 0.0})
        s["utterances"] += 1
        s["hours"] += r["seconds"] / 3600.0
    mel_err = {r["key"]: r["mel_l1"] for r in records if r.get("mel_l1") is not None}
    return {
        "layout": layout,
        "utterances": {"train": sum(r["split"] == "train" for r in records),
                       "val": sum(r["split"] == "val" for r in records),
                       "skipped_existing": skipped, "errors": len(problems)},
        "total_hours": sum(r["seconds"] for r in records) / 3600.0,
        "speakers": per_speaker,
        "speaker_ids": speakers,
        "duration_seconds": distribution({r["key"]: r["seconds"] for r in records}),
        "chars_per_second": distribution({r["key"]: r["chars"] / max(r["seconds"], 1e-6) for r in records}),
        "unmappable_characters": dict(unknown.most_common()),
        # Mean |log-mel - decode(encode(log-mel))| per utterance, in nats; high = codec struggles.
        "preencoder_mel_l1": {**distribution(mel_err, high_only=True), "per_utterance": mel_err},
        "error_counts": dict(Counter(p.kind for p in problems)),
        "errors": [asdict(p) for p in sorted(problems, key=_where_order)],
    }


def print_report(report: dict, out_dir: str, max_lines: int = 10) -> None:
    """The report's summary on stdout: counts, speakers, distributions, problems (the first ``max_lines``)."""
    u = report["utterances"]
    print(f"\n== preprocess: {out_dir} ({report['layout']} layout) ==")
    print(f"utterances: {u['train']} train, {u['val']} val ({u['skipped_existing']} already done, kept); "
          f"{u['errors']} problems; {report['total_hours'] * 60:.2f} min of audio")
    for name, s in report["speakers"].items():
        print(f"  speaker {s['id']:>3} {name}: {s['utterances']} utterances, {s['hours'] * 60:.2f} min")
    for title, key in (("duration (s)", "duration_seconds"), ("chars/s", "chars_per_second"),
                       ("pre-encoder round-trip mel L1", "preencoder_mel_l1")):
        d = report[key]
        if d["count"]:
            print(f"{title}: min {d['min']:.3f}  median {d['median']:.3f}  p95 {d['p95']:.3f}  max {d['max']:.3f}"
                  f"  ({len(d['outliers'])} outliers{': ' if d['outliers'] else ''}"
                  + ", ".join(f"{o['key']}={o['value']}" for o in d["outliers"][:5]) + ")")
    if "normalizer" in report:
        n = report["normalizer"]
        print(f"text normaliser {n['version']}: changed {n['changed']} of {n['sentences']} sentences "
              f"({100 * n['changed_share']:.1f} %) by reading out numbers, symbols or abbreviations")
    if report["unmappable_characters"]:
        print("characters the normaliser kept unverbalised (the tokenizer maps them to <unk>): "
              + ", ".join(f"{c!r} x{n}" for c, n in report["unmappable_characters"].items()))
    if report["errors"]:
        print(f"problems ({', '.join(f'{k}: {n}' for k, n in report['error_counts'].items())}):")
        for p in report["errors"][:max_lines]:
            print(f"  {p['where']}: {p['message']}")
        if len(report["errors"]) > max_lines:
            print(f"  ... and {len(report['errors']) - max_lines} more in qa_report.json")
    print(f"report: {os.path.join(out_dir, 'qa_report.json')}")
