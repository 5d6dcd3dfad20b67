"""Fine-tuning to a second voice against training that voice from scratch, for the same steps.

    python bench/finetune_voice.py --base_dir outputs/demo_speech_cpu --work_dir outputs/finetune_voice

It needs a finished speech recipe (``python demo.py --profile speech_cpu``): its codec, its
Echolancer export and its data's speaker table. Then, with nothing downloaded:

1. renders a second voice with Piper (``--voice``, by default the recipe's voice at a higher pitch
   and a slower rate, so the speaker similarity has something to measure), training clips from the
   recipe's own training sentences and references of the held-out natural sentences;
2. keeps the first clips up to each ``--minutes`` budget (5 and 15 minutes);
3. per budget, trains ``--steps`` steps twice: ``train.py --init_from`` the recipe's export, and the
   same model from scratch. The recipe's model is single-speaker (``model.multi_speaker: false``),
   so the new voice takes its one speaker id and the weights adapt; a multi-speaker source would
   add the voice as a new row instead (``--set model.n_speaker=N+1``, see the README);
4. scores each run, and the recipe's model as it is, with ``evaluate.py`` on the held-out sentences
   in the new voice: WER, CER, stop failures and speaker similarity to the new voice's recordings.

Prints one table and writes ``WORK/finetune_voice.json``. Every stage is a subprocess running the
project's own commands, so what it measures is what a user gets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from anywhere: bertfe is at the repository root
SENTENCES = os.path.join(ROOT, "scripts", "sentences")
PY = sys.executable
NEW_SPEAKER = "voice2"
# The recipe's Echolancer settings that shape the model (config/demo_speech_cpu.yaml).
MODEL_CONFIG = os.path.join(ROOT, "config", "model_speech_cpu.yaml")
TRAIN_CONFIG = os.path.join(ROOT, "config", "train.yaml")


def sh(cmd: list[str], log_path: str) -> None:
    """Run one stage; its output goes to ``log_path``, and a failure stops the study with that log named."""
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"finetune_voice: {' '.join(cmd[:2])} failed with exit {code}; see {log_path}")


def render(sentences: str, out: str, voice: str, limit: int, logs: str) -> None:
    if not os.path.isfile(os.path.join(out, "metadata.csv")):
        sh([PY, "scripts/make_corpus.py", "--sentences", sentences, "--output_dir", out, "--voice", voice,
            "--limit", str(limit)], os.path.join(logs, f"render_{os.path.basename(out)}.log"))


def subset(corpus: str, out: str, minutes: float) -> float:
    """The first clips of ``corpus`` up to ``minutes`` of audio, as an LJSpeech dataset named NEW_SPEAKER."""
    os.makedirs(os.path.join(out, "wavs"), exist_ok=True)
    kept, seconds = [], 0.0
    for row in open(os.path.join(corpus, "metadata.csv"), encoding="utf-8").read().splitlines():
        wav = os.path.join(corpus, "wavs", row.split("|")[0] + ".wav")
        d = sf.info(wav).duration
        if seconds + d > minutes * 60:
            break
        shutil.copy(wav, os.path.join(out, "wavs"))
        kept.append(row)
        seconds += d
    with open(os.path.join(out, "metadata.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join(kept) + "\n")
    return seconds


def preprocess(data: str, out: str, base: str, logs: str) -> None:
    """Codec tokens of the new voice, with the recipe's codec and text front end."""
    from bertfe import find_packaged_minilm

    sh([PY, "preprocess.py", "--input_dir", data, "--output_dir", out,
        "--pre_encoder_dir", os.path.join(base, "preencoder", "export"), "--config", MODEL_CONFIG,
        "--val_fraction", "0.05", "--workers", "0", "--device", "cpu", "--no_progress",
        "--bert_model", find_packaged_minilm(), "--text_frontend", "phonemes"],
       os.path.join(logs, f"preprocess_{os.path.basename(out)}.log"))


def train(data: str, out: str, base: str, steps: int, init: bool, logs: str) -> float:
    """One run of ``steps`` steps: from the recipe's export (``init``) or from scratch. Returns seconds."""
    common = ["--set", "model.text_frontend=phonemes",
              "--set", "training.batch_size=16", "--set", f"training.max_steps={steps}",
              "--set", "training.num_workers=0", "--set", "training.log_step=25",
              "--set", f"training.val_step={steps}", "--set", f"training.save_step={steps}",
              "--set", "training.test_step=100000", "--set", "early_stopping.enabled=false",
              "--set", "wandb.mode=offline", "--set", "scheduler.warmup_steps=30"]
    if init:
        # The alignment is learnt already: no prior, a gentler rate.
        extra = ["--init_from", os.path.join(base, "echolancer", "export"),
                 "--set", "optimizer.learning_rate=5.0e-4", "--set", "alignment.prior_hold_steps=0",
                 "--set", "alignment.prior_anneal_steps=0"]
    else:
        # The recipe's own schedule, compressed into the same steps.
        extra = ["--set", "optimizer.learning_rate=1.5e-3", "--set", f"alignment.prior_hold_steps={steps // 2}",
                 "--set", f"alignment.prior_anneal_steps={steps // 4}", "--set", "alignment.forward_sum_weight=1.0"]
    t0 = time.perf_counter()
    sh([PY, "train.py", "--model_config", MODEL_CONFIG, "--train_config", TRAIN_CONFIG,
        "--train_data_dir", os.path.join(data, "train"), "--val_data_dir", os.path.join(data, "val"),
        "--output_dir", out, "--device", "cpu", *extra, *common], os.path.join(logs, f"train_{os.path.basename(out)}.log"))
    return time.perf_counter() - t0


def evaluate(checkpoint: str, refs: str, base: str, limit: int, max_length: int, out: str, logs: str) -> dict:
    """The model's scores on the new voice's held-out sentences (speaker 0, the recipe's sampling)."""
    from bertfe import find_packaged_minilm

    sh([PY, "evaluate.py", "--reference_dir", refs, "--checkpoint", checkpoint,
        "--pre_encoder_dir", os.path.join(base, "preencoder", "export"), "--output_dir", out,
        "--speakers", "0", "--limit", str(limit), "--batch_size", "10", "--max_length", str(max_length),
        "--temperature", "0.6", "--top_k", "50", "--device", "cpu", "--wandb_mode", "offline",
        "--bert_model", find_packaged_minilm()], os.path.join(logs, f"eval_{os.path.basename(out)}.log"))
    with open(os.path.join(out, "eval_report.json"), encoding="utf-8") as f:
        stage = json.load(f)["stages"]["model"]
    keep = ("wer", "cer", "stop_failure_rate", "length_ratio")
    row = {k: stage[k] for k in keep}
    row["speaker_similarity"] = stage["speaker_similarity"]  # against the new voice's recordings
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base_dir", required=True, help="work dir of a finished speech recipe")
    p.add_argument("--work_dir", required=True)
    p.add_argument("--voice", default="joe,pitch=1.25,length_scale=1.15", help="make_corpus.py --voice spec")
    p.add_argument("--minutes", type=float, nargs="+", default=[5.0, 15.0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--train_clips", type=int, default=420, help="clips rendered (enough for the largest budget)")
    p.add_argument("--max_length", type=int, default=1200, help="codec tokens (the recipe's evaluate.max_length)")
    p.add_argument("--eval_limit", type=int, default=20, help="held-out natural sentences scored")
    a = p.parse_args(argv)
    for need in ("preencoder/export", "echolancer/export"):
        if not os.path.exists(os.path.join(a.base_dir, need)):
            raise SystemExit(f"finetune_voice: --base_dir {a.base_dir} has no {need}; run the speech recipe first")
    work = os.path.abspath(a.work_dir)
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)

    corpus, refs = os.path.join(work, "voice_train"), os.path.join(work, "voice_eval")
    render(os.path.join(SENTENCES, "wordnet_train.txt"), corpus, a.voice, a.train_clips, logs)
    render(os.path.join(SENTENCES, "natural_eval.txt"), refs, a.voice, a.eval_limit, logs)

    # The starting point: the recipe's model, not adapted, speaking the new voice's sentences.
    base_scores = evaluate(os.path.join(a.base_dir, "echolancer", "export"), refs, a.base_dir, a.eval_limit, a.max_length,
                           os.path.join(work, "eval_base"), logs)
    rows = [{"run": "base (not adapted)", "minutes_of_audio": 0, "steps": 0, "train_seconds": 0, **base_scores}]
    print(json.dumps(rows[-1]), flush=True)
    for minutes in a.minutes:
        tag = f"{minutes:g}min"
        seconds = subset(corpus, os.path.join(work, f"data_{tag}", NEW_SPEAKER), minutes)
        data = os.path.join(work, f"tokens_{tag}")
        preprocess(os.path.join(work, f"data_{tag}", NEW_SPEAKER), data, a.base_dir, logs)
        for init in (True, False):
            name = f"{'finetune' if init else 'scratch'}_{tag}"
            run = os.path.join(work, name)
            spent = train(data, run, a.base_dir, a.steps, init, logs)
            scores = evaluate(os.path.join(run, "export"), refs, a.base_dir, a.eval_limit, a.max_length, os.path.join(work, f"eval_{name}"), logs)
            rows.append({"run": name, "minutes_of_audio": round(seconds / 60, 2), "steps": a.steps,
                         "train_seconds": round(spent, 1), **scores})
            print(json.dumps(rows[-1]), flush=True)

    with open(os.path.join(work, "finetune_voice.json"), "w", encoding="utf-8") as f:
        json.dump({"voice": a.voice, "base_dir": os.path.abspath(a.base_dir), "rows": rows}, f, indent=1)
    print("\n| run | audio (min) | steps | WER | CER | stop failures | speaker similarity |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sim = "-" if r["speaker_similarity"] is None else f"{r['speaker_similarity']:.3f}"
        print(f"| {r['run']} | {r['minutes_of_audio']} | {r['steps']} | {100 * r['wer']:.1f}% | "
              f"{100 * r['cer']:.1f}% | {100 * (r['stop_failure_rate'] or 0):.1f}% | {sim} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
