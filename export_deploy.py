"""Export the whole chain (text encoder, one decode step with explicit KV caches, pre-encoder
decoder, vocoder) as TorchScript files with a ``deploy.yaml``, for running without the model code.

    python export_deploy.py --checkpoint outputs/run/export --pre_encoder_dir runs/pe/export \\
        --istftnet_dir runs/voc/export --output_dir deploy/ --max_length 1000

Each file is loaded back and compared with the eager chain on probe inputs; a module that differs
by more than 1e-5 is refused (exit status 1, one line) and nothing is written. An ``--output_dir``
that holds files is refused unless ``--overwrite`` (which replaces this format's five files
only). Load the result with ``model.deploy.DeployedChain("deploy/")``; the format is in
``model/deploy_export.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from model.deploy_export import DeployError, ExportMismatch, check_output_dir, export_chain
from model.istftnet_artifact import quiet_jit
from model.pretrained import load_echolancer
from pipeline import build_synthesizer
from training.command import bad_input_errors
from utils.cli import error_line, run_command

PROG = "export_deploy.py"
EXIT_MISMATCH = 1


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="inference export (export/echolancer.pt or its directory), a checkpoint file, or a ckpt/ directory")
    p.add_argument("--model_config", default=None, help="model YAML; only for raw state dicts")
    p.add_argument("--pre_encoder_dir", required=True, help="exported pre-encoder (codec tokens -> mel)")
    p.add_argument("--istftnet_dir", required=True, help="exported ISTFTNet vocoder (mel -> waveform)")
    p.add_argument("--output_dir", required=True, help="where the deployment files go (new or empty)")
    p.add_argument("--max_length", type=int, default=1000,
                   help="KV-cache positions: the most codec tokens a deployed utterance can have (86.13 = 1 s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export's files in --output_dir (other files there are kept)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[str]:
    """Load, export, check, write; returns the paths written."""
    if args.max_length < 1:
        raise DeployError(f"--max_length must be >= 1, got {args.max_length}")
    check_output_dir(args.output_dir, args.overwrite)  # before any loading: a refusal costs nothing
    loaded = load_echolancer(args.checkpoint, device="cpu", model_config_path=args.model_config)
    synth = build_synthesizer(loaded.model, loaded.tokenizer, pre_encoder_dir=args.pre_encoder_dir,
                              istftnet_dir=args.istftnet_dir, device="cpu", audio=loaded.model_config.audio)
    source = {"checkpoint": loaded.path, "step": loaded.step, "pre_encoder_dir": args.pre_encoder_dir,
              "istftnet_dir": args.istftnet_dir}
    written = export_chain(synth, args.output_dir, args.max_length, overwrite=args.overwrite, source=source)
    for path in written:
        print(f"wrote {path}")
    print(f"every module matches the eager chain within 1e-5; load with model.deploy.DeployedChain({args.output_dir!r})")
    return written


def main(argv: Optional[list[str]] = None) -> int:
    """0 written; 2 and one line for bad input; 1 and one line when an export differs from eager."""
    args = parse_args(argv)
    try:
        with quiet_jit():  # TorchScript is this command's output format: its deprecation notes are noise here
            outcome = run_command(PROG, lambda: run(args), bad_input_errors() + (DeployError,))
    except ExportMismatch as e:
        print(error_line(PROG, e), file=sys.stderr)
        return EXIT_MISMATCH
    return outcome if isinstance(outcome, int) else 0


if __name__ == "__main__":
    sys.exit(main())
