"""ISTFTNet training-step and inference speed for the tiny and default vocoder configs.

    python bench/vocoder_speed.py                 # CPU
    python bench/vocoder_speed.py --device cuda   # GPU

Prints GAN steps/s (discriminator + generator update on random audio) and the real-time
factor of synthesising 5 s of audio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.vocoder import VocoderTrainer  # noqa: E402
from utils.config import ConfigError, load_config  # noqa: E402
from utils.config.vocoder import VocoderConfig  # noqa: E402
from utils.device import CudaUnavailableError, pick_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (the GPU when CUDA is usable), cpu, cuda, cuda:N")
    p.add_argument("--configs", nargs="+", default=["config/istftnet_tiny.yaml", "config/istftnet.yaml"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 tiny / 2 default on CPU)")
    args = p.parse_args()
    try:
        device = pick_device(args.device)
    except (CudaUnavailableError, ConfigError) as e:  # one line, as the commands print it
        sys.exit(f"bench/vocoder_speed.py: {e}")
    for path in args.configs:
        cfg = load_config(path, schema=VocoderConfig)
        n = args.steps or (50 if device.type == "cuda" else (20 if "tiny" in path else 2))
        trainer = VocoderTrainer(cfg, device)
        wav = 0.3 * torch.randn(cfg.training.batch_size, cfg.training.segment_size, device=device)
        trainer.train_step(wav)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            trainer.train_step(wav)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / n
        print(f"{path}: batch {cfg.training.batch_size} x {cfg.training.segment_size} samples: "
              f"{1 / dt:.3f} steps/s ({dt:.2f} s/step)")
        seconds = 5.0
        mel = torch.randn(1, cfg.audio.n_mels, int(seconds * cfg.audio.sampling_rate / cfg.audio.hop_length), device=device)
        trainer.generator.eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            trainer.synthesize(mel)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        print(f"  inference: {seconds:.1f} s of audio in {dt:.3f} s (real-time factor {dt / seconds:.4f})")


if __name__ == "__main__":
    main()
