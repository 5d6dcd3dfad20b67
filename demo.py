"""The whole chain in one command: corpus -> pre-encoder -> vocoder -> preprocess -> Echolancer -> ASR scores.

    python demo.py --profile tiny          # 2-core CPU, about three minutes; WER ~100 % (tiny training)
    python demo.py --profile gpu           # one GPU; sized for about an hour
    python demo.py --profile tiny --dry_run            # print the commands only
    python demo.py --profile tiny --stages evaluate    # redo one stage (the others must be done)

Each stage runs the project's real script as a subprocess, exactly the command a user would type
(``--dry_run`` prints them), with its output in ``WORK/logs/<stage>.log``:

    corpus      scripts/make_corpus.py   own sentences -> Piper voice -> WORK/corpus/{train,eval}
    preencoder  train_preencoder.py      WAVs -> FSQ mel codec      -> WORK/preencoder/export
    vocoder     train_vocoder.py         WAVs -> ISTFTNet vocoder   -> WORK/vocoder/export
    preprocess  preprocess.py            corpus -> .pt token files  -> WORK/data/{train,val}
    echolancer  train.py                 tokens -> Echolancer       -> WORK/echolancer/ckpt
    evaluate    evaluate.py --ladder     held-out sentences -> Whisper -> WORK/eval/eval_report.json

A finished stage leaves ``WORK/.done/<stage>``; a rerun skips it (``--fresh`` starts over). The
profile (``config/demo_<name>.yaml`` or any YAML path) says which configs, step counts and
overrides each stage uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from training.command import bad_input_errors
from utils.cli import run_command
from utils.config import ConfigError, ModelConfig, load_config
from utils.device import pick_device

ROOT = os.path.dirname(os.path.abspath(__file__))
STAGES = ("corpus", "preencoder", "vocoder", "preprocess", "echolancer", "evaluate")
# Top-level sections of a model config: the Echolancer stage's overrides of these go to preprocess.py too.
MODEL_CONFIG_SECTIONS = tuple(f.name for f in dataclasses.fields(ModelConfig))


# --------------------------------------------------------------------------------------------
# Profile schema (validated like every other config: unknown keys and wrong types are errors)
# --------------------------------------------------------------------------------------------


@dataclass
class CorpusProfile:
    train_sentences: list[str] = field(default_factory=lambda: ["scripts/sentences/train.txt"])
    eval_sentences: str = "scripts/sentences/eval.txt"  # the ladder's held-out set (WORK/eval)
    # More held-out sets, scored on the model alone: each renders to WORK/corpus/eval_<stem> and is
    # evaluated into WORK/eval_<stem> (e.g. a different source of text, or longer sentences).
    extra_eval_sentences: list[str] = field(default_factory=list)
    voices: list[str] = field(default_factory=lambda: ["joe"])  # several = multi-speaker corpus
    train_limit: Optional[int] = None
    eval_limit: Optional[int] = None


@dataclass
class TrainerProfile:
    config: str = ""
    overrides: list[str] = field(default_factory=list)  # --set dotted.key=value
    enabled: bool = True  # vocoder only: false = no vocoder stage; synthesis and the ladder use Griffin-Lim


@dataclass
class PreprocessProfile:
    bert_model: Optional[str] = "minilm"  # "minilm" = the all-MiniLM-L6-v2 shipped on PyPI; null = none
    val_fraction: float = 0.1
    workers: int = 0


@dataclass
class EcholancerProfile:
    model_config: str = "config/model_tiny.yaml"
    train_config: str = "config/train_tiny.yaml"
    overrides: list[str] = field(default_factory=list)
    text_frontend: Optional[str] = None  # chars or phonemes (preprocess + train); null = the model config's


@dataclass
class EvaluateProfile:
    ladder: bool = True
    limit: Optional[int] = None
    batch_size: int = 8
    max_length: int = 1000
    temperature: float = 1.0
    top_k: int = 0


@dataclass
class DemoProfile:
    device: str = "cpu"
    corpus: CorpusProfile = field(default_factory=CorpusProfile)
    preencoder: TrainerProfile = field(default_factory=lambda: TrainerProfile("config/preencoder_tiny.yaml"))
    vocoder: TrainerProfile = field(default_factory=lambda: TrainerProfile("config/istftnet_tiny.yaml"))
    preprocess: PreprocessProfile = field(default_factory=PreprocessProfile)
    echolancer: EcholancerProfile = field(default_factory=EcholancerProfile)
    evaluate: EvaluateProfile = field(default_factory=EvaluateProfile)


def load_profile(name_or_path: str) -> tuple[DemoProfile, str]:
    """``tiny`` -> ``config/demo_tiny.yaml``; a path is read as it is."""
    path = name_or_path
    if not os.path.isfile(path):
        path = os.path.join(ROOT, "config", f"demo_{name_or_path}.yaml")
    if not os.path.isfile(path):
        found = sorted(f[5:-5] for f in os.listdir(os.path.join(ROOT, "config")) if f.startswith("demo_"))
        raise ConfigError(f"--profile {name_or_path!r}: no such file or profile; profiles: {', '.join(found)}")
    return load_config(path, schema=DemoProfile), path


# --------------------------------------------------------------------------------------------
# The plan: one command per stage
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    stage: str
    commands: list[list[str]]
    outputs: list[str]  # what a later stage needs from this one (checked after it ran)
    clean: list[str] = field(default_factory=list)  # removed before a (re)run: trainers start over


def _abs(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(ROOT, path)


def resolve_bert(name: Optional[str]) -> Optional[str]:
    if name != "minilm":
        return name
    from bertfe import find_packaged_minilm

    return find_packaged_minilm()


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _voices(vs: list[str]) -> list[str]:
    return [a for v in vs for a in ("--voice", v)]


def _extra_eval_sets(c: CorpusProfile) -> dict[str, str]:
    """Name (the file's stem) -> sentence file of each further held-out set."""
    return {os.path.splitext(os.path.basename(path))[0]: path for path in c.extra_eval_sentences}


def _corpus_commands(c: CorpusProfile, work: str) -> list[list[str]]:
    """make_corpus.py runs: the training corpus, the ladder's references, each further held-out set."""
    make = [sys.executable, _abs("scripts/make_corpus.py")]
    corpus_train, corpus_eval = os.path.join(work, "corpus", "train"), os.path.join(work, "corpus", "eval")
    return [
        make + ["--sentences", *map(_abs, c.train_sentences), "--output_dir", corpus_train, *_voices(c.voices)]
        + (["--limit", str(c.train_limit)] if c.train_limit else []),
        # Held-out sentences in the first voice (speaker 0): the references of the ladder.
        make + ["--sentences", _abs(c.eval_sentences), "--output_dir", corpus_eval, *_voices(c.voices[:1])]
        + (["--limit", str(c.eval_limit)] if c.eval_limit else []),
        *[make + ["--sentences", _abs(path), "--output_dir", os.path.join(work, "corpus", f"eval_{name}"),
                  *_voices(c.voices[:1])] + (["--limit", str(c.eval_limit)] if c.eval_limit else [])
          for name, path in _extra_eval_sets(c).items()],
    ]


def _preprocess_command(p: DemoProfile, corpus_train: str, data: str, pre_export: str, bert: Optional[str]
                        ) -> list[str]:
    """preprocess.py on the training corpus, with the Echolancer stage's text front end and model overrides."""
    prep = [sys.executable, _abs("preprocess.py"), "--input_dir", corpus_train, "--output_dir", data,
            "--pre_encoder_dir", pre_export, "--config", _abs(p.echolancer.model_config),
            "--val_fraction", str(p.preprocess.val_fraction), "--workers", str(p.preprocess.workers),
            "--device", p.device, "--no_progress"]
    prep += ["--bert_model", bert] if bert else []
    # The model-config overrides of the Echolancer stage hold for the data it trains on (the BERT width).
    prep += _sets([o for o in p.echolancer.overrides if o.split(".", 1)[0] in MODEL_CONFIG_SECTIONS])
    front = p.echolancer.text_frontend
    prep += ["--text_frontend", front] if front else []
    return prep


def _evaluate_commands(p: DemoProfile, work: str, checkpoint: str, pre_export: str, voc_export: str,
                       bert: Optional[str], wandb_mode: str) -> list[list[str]]:
    """evaluate.py on the ladder's references, then the model alone on each further held-out set."""
    e = p.evaluate
    evaluate = [sys.executable, _abs("evaluate.py"), "--reference_dir", os.path.join(work, "corpus", "eval"),
                "--checkpoint", checkpoint, "--pre_encoder_dir", pre_export,
                *(["--istftnet_dir", voc_export] if p.vocoder.enabled else []),
                "--output_dir", os.path.join(work, "eval"), "--batch_size", str(e.batch_size),
                "--max_length", str(e.max_length), "--temperature", str(e.temperature), "--top_k", str(e.top_k),
                "--device", p.device, "--wandb_mode", wandb_mode]
    evaluate += (["--ladder"] if e.ladder else []) + (["--limit", str(e.limit)] if e.limit else [])
    evaluate += ["--bert_model", bert] if bert else []
    evaluations = [evaluate]
    for name in _extra_eval_sets(p.corpus):
        ev = list(evaluate)
        ev[ev.index("--reference_dir") + 1] = os.path.join(work, "corpus", f"eval_{name}")
        ev[ev.index("--output_dir") + 1] = os.path.join(work, f"eval_{name}")
        evaluations.append([a for a in ev if a != "--ladder"])
    return evaluations


def plan(p: DemoProfile, work: str, wandb_mode: str) -> list[Step]:
    """The commands of every stage, in order."""
    py = sys.executable
    corpus_train, corpus_eval = os.path.join(work, "corpus", "train"), os.path.join(work, "corpus", "eval")
    pre_dir, voc_dir = os.path.join(work, "preencoder"), os.path.join(work, "vocoder")
    pre_export, voc_export = os.path.join(pre_dir, "export"), os.path.join(voc_dir, "export")
    data, el_dir = os.path.join(work, "data"), os.path.join(work, "echolancer")
    bert = resolve_bert(p.preprocess.bert_model)
    extra = _extra_eval_sets(p.corpus)

    preencoder = [py, _abs("train_preencoder.py"), "--config", _abs(p.preencoder.config), "--data_dir", corpus_train,
                  "--output_dir", pre_dir, "--device", p.device, *_sets(p.preencoder.overrides)]
    vocoder = [py, _abs("train_vocoder.py"), "--config", _abs(p.vocoder.config), "--data_dir", corpus_train,
               "--output_dir", voc_dir, "--device", p.device, *_sets(p.vocoder.overrides)]
    front = p.echolancer.text_frontend
    train = [py, _abs("train.py"), "--model_config", _abs(p.echolancer.model_config),
             "--train_config", _abs(p.echolancer.train_config), "--train_data_dir", os.path.join(data, "train"),
             "--val_data_dir", os.path.join(data, "val"), "--output_dir", el_dir, "--device", p.device,
             *_sets(p.echolancer.overrides + ([f"model.text_frontend={front}"] if front else [])
                    + [f"wandb.mode={wandb_mode}"])]
    evaluations = _evaluate_commands(p, work, os.path.join(el_dir, "export"), pre_export, voc_export, bert,
                                     wandb_mode)
    return [
        # make_corpus.py and preprocess.py resume by themselves; the trainers start over.
        Step("corpus", _corpus_commands(p.corpus, work), [corpus_train, os.path.join(corpus_eval, "metadata.csv")]),
        Step("preencoder", [preencoder], [os.path.join(pre_export, "model_cpu.pt")], [pre_dir]),
        *([Step("vocoder", [vocoder], [os.path.join(voc_export, "istft_cpu.pt")], [voc_dir])] if p.vocoder.enabled
          else []),
        Step("preprocess", [_preprocess_command(p, corpus_train, data, pre_export, bert)],
             [os.path.join(data, "qa_report.json")]),
        Step("echolancer", [train], [os.path.join(el_dir, "export", "echolancer.pt")], [el_dir]),
        Step("evaluate", evaluations, [os.path.join(work, "eval", "eval_report.json")]
             + [os.path.join(work, f"eval_{name}", "eval_report.json") for name in extra]),
    ]


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


class StageFailed(RuntimeError):
    pass


def _tail(path: str, lines: int = 25) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def run_step(step: Step, work: str, index: int, total: int, cpu: bool = False) -> float:
    """Run a stage's commands; output to ``WORK/logs/<stage>.log``. Returns the seconds it took.

    On CPU, stages run with one intra-op thread unless OMP_NUM_THREADS is set: the tiny models are
    dominated by small ops, and two threads fighting over two cores made the tiny demo several
    times slower (measured: 49 s with one thread against about 4 minutes with the default).
    """
    log_path = os.path.join(work, "logs", f"{step.stage}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    print(f"[{index}/{total}] {step.stage} ...", end="", flush=True)
    for path in step.clean:
        shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="5")
    if cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_path, "w", encoding="utf-8") as log:
        for cmd in step.commands:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
            if proc.returncode != 0:
                print(" FAILED")
                raise StageFailed(f"stage '{step.stage}' failed (exit status {proc.returncode}) running:\n  "
                                  + " ".join(cmd) + f"\nlast lines of {log_path}:\n{_tail(log_path)}")
    missing = [o for o in step.outputs if not os.path.exists(o)]
    if missing:
        print(" FAILED")
        raise StageFailed(f"stage '{step.stage}' finished but did not write {', '.join(missing)}; see {log_path}")
    seconds = time.perf_counter() - t0
    shown = os.path.relpath(log_path)
    print(f" done in {seconds:.1f} s  (log: {log_path if shown.startswith('..') else shown})")
    return seconds


def run_demo(profile: DemoProfile, work: str, stages: list[str], wandb_mode: str, dry_run: bool = False,
             redo: bool = False) -> dict:
    """Run the selected stages in order; a stage already done is skipped unless ``redo``.

    Returns the summary also written to ``WORK/demo_summary.json``: seconds per stage, and the
    evaluation table and metrics when the evaluation has run.
    """
    steps = plan(profile, work, wandb_mode)
    if dry_run:
        for s in steps:
            for cmd in s.commands:
                print(f"# {s.stage}\n" + " ".join(cmd))
        return {}
    done_dir = os.path.join(work, ".done")
    os.makedirs(done_dir, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    for i, step in enumerate(steps, 1):
        marker = os.path.join(done_dir, step.stage)
        if step.stage not in stages:
            continue
        if os.path.exists(marker) and not redo:
            print(f"[{i}/{len(steps)}] {step.stage}: already done, skipped (--fresh to start over)")
            continue
        times[step.stage] = round(run_step(step, work, i, len(steps), cpu=profile.device == "cpu"), 1)
        open(marker, "w").close()
    summary = {"work_dir": work, "stage_seconds": times, "total_seconds": round(time.perf_counter() - t_all, 1)}
    result_path = os.path.join(work, "echolancer", "train_result.json")
    if os.path.isfile(result_path):  # steps reached against the plan, beside the result
        with open(result_path, encoding="utf-8") as f:
            summary["echolancer_training"] = json.load(f)
        r = summary["echolancer_training"]
        print(f"echolancer: {r['status']} at step {r['step']} of {r['max_steps']} in {r['minutes']:.1f} min "
              f"(max_minutes {r['max_minutes']})")
    reports = {"eval": os.path.join(work, "eval", "eval_report.json")}
    for name in sorted(os.listdir(work)):  # the further held-out sets (corpus.extra_eval_sentences)
        if name.startswith("eval_") and os.path.isfile(os.path.join(work, name, "eval_report.json")):
            reports[name] = os.path.join(work, name, "eval_report.json")
    for name, path in reports.items():
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        entry = {"table": report["table"], "by_length_table": report.get("by_length_table"),
                 "stages": {k: {m: v.get(m) for m in ("wer", "cer", "stop_failure_rate", "length_ratio", "rtf",
                                                      "speaker_similarity")}
                            for k, v in report["stages"].items()}}
        if name == "eval":
            summary.update(entry)
        else:
            summary.setdefault("extra_eval", {})[name] = entry
        print(f"\n{name}:\n" + report["table"])
    with open(os.path.join(work, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"\ndemo finished in {summary['total_seconds']:.0f} s; everything is under {work}")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="tiny", help="tiny, gpu, or a YAML path (config/demo_*.yaml)")
    p.add_argument("--work_dir", default=None, help="default: outputs/demo_<profile>")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="run only these")
    p.add_argument("--device", default=None, help="override the profile's device")
    p.add_argument("--fresh", action="store_true", help="delete the work directory first")
    p.add_argument("--wandb_mode", default="offline", choices=["online", "offline", "disabled"])
    p.add_argument("--dry_run", action="store_true", help="print the commands and stop")
    args = p.parse_args(argv)

    def checked_profile():
        profile, path = load_profile(args.profile)
        if args.device:
            profile.device = args.device
        if not args.dry_run:  # every stage would fail on it, one after the other: say so once, first
            pick_device(profile.device)
        return profile, path

    outcome = run_command("demo.py", checked_profile, bad_input_errors())
    if isinstance(outcome, int):
        return outcome
    profile, path = outcome
    name = os.path.splitext(os.path.basename(path))[0].removeprefix("demo_")
    work = os.path.abspath(args.work_dir or os.path.join("outputs", f"demo_{name}"))
    if args.fresh and os.path.isdir(work) and not args.dry_run:
        shutil.rmtree(work)
    if not args.dry_run:
        print(f"demo: profile {path}, device {profile.device}, work dir {work}")
    try:
        # Stages named with --stages are redone even if finished; by default finished ones are skipped.
        run_demo(profile, work, args.stages, args.wandb_mode, args.dry_run, redo=args.stages != list(STAGES))
    except StageFailed as e:
        print(f"demo.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
