"""Time to first audio and real-time factor: streaming vs one-shot synthesis of the same text.

    python bench/streaming.py                          # tiny chain, 400 tokens (4.6 s), chunks of 16
    python bench/streaming.py --chunk_tokens 32 --tokens 800 --threads 1
    python bench/streaming.py --griffin_lim            # without a vocoder (approximate streaming)

The chain is built here, random and untrained (nothing is downloaded): config/model_tiny.yaml, the
pre-encoder of config/preencoder_tiny.yaml and the generator of --vocoder_config, exported and
loaded back as the pipeline loads them. Its EOS bias is raised so that greedy decoding stops after
exactly --tokens tokens, both ways. Each way runs --repeats times after a warm-up; the medians are
printed, then stream / one-shot ratios, and the largest difference between the two waveforms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from istftnetfe import ISTFTNetFE  # noqa: E402
from model.echolancer import Echolancer  # noqa: E402
from model.istftnet import ISTFT, ISTFTNetGenerator  # noqa: E402
from model.istftnet_artifact import export_istftnet, quiet_jit  # noqa: E402
from model.preencoder import PreEncoder  # noqa: E402
from model.preencoder_artifact import export_preencoder  # noqa: E402
from pipeline import Synthesizer  # noqa: E402
from scripted_preencoder import ScriptedPreEncoder  # noqa: E402
from utils.char_tokenizer import CharTokenizer  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.config.preencoder import PreEncoderConfig  # noqa: E402
from utils.config.vocoder import VocoderConfig  # noqa: E402

TEXT = "Streaming speech starts playing before the sentence is finished."


def build(tmp: str, vocoder_config: str, griffin_lim: bool) -> Synthesizer:
    """The random tiny chain; see the module docstring."""
    torch.manual_seed(0)
    pe_cfg = load_config("config/preencoder_tiny.yaml", schema=PreEncoderConfig)
    with quiet_jit():
        export_preencoder(PreEncoder.from_config(pe_cfg).eval(), pe_cfg, os.path.join(tmp, "pe"))
        pre = ScriptedPreEncoder(os.path.join(tmp, "pe"))
        voc = None
        if not griffin_lim:
            vcfg = load_config(vocoder_config, schema=VocoderConfig)
            gen = ISTFTNetGenerator(vcfg.generator, vcfg.audio.n_mels).eval()
            export_istftnet(gen, ISTFT(vcfg.generator.gen_istft_n_fft, vcfg.generator.gen_istft_hop_size), vcfg.audio,
                            os.path.join(tmp, "voc"), devices=["cpu"])
            voc = ISTFTNetFE.load_ts(os.path.join(tmp, "voc"), "cpu")
    model = Echolancer.from_config(load_config("config/model_tiny.yaml")).eval()
    with torch.no_grad():
        model.head.bias[model.eos_id] = 30.0  # stops as soon as min_length allows
    return Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc)


def one_shot(synth: Synthesizer, gen: dict) -> tuple[float, float, np.ndarray]:
    """(time to first audio, total time, wav): one-shot audio arrives all at once, at the end."""
    t0 = time.perf_counter()
    (utt,) = synth.synthesize([TEXT], **gen)
    total = time.perf_counter() - t0
    return total, total, utt.wav


def streamed(synth: Synthesizer, gen: dict, chunk_tokens: int) -> tuple[float, float, np.ndarray]:
    """(time to first audio, total time, wav), both clocks from the call, as one-shot is timed."""
    t0 = time.perf_counter()
    first, chunks = None, []
    for chunk in synth.stream(TEXT, chunk_tokens=chunk_tokens, **gen):
        if first is None:
            first = time.perf_counter() - t0  # a player would start here
        chunks.append(chunk)
    total = time.perf_counter() - t0
    return first if first is not None else total, total, np.concatenate(chunks)


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Run the bench; returns {way: (median time to first audio, median total)} in seconds."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=400, help="codec tokens of the utterance (86.13 = 1 s)")
    p.add_argument("--chunk_tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--vocoder_config", default="config/istftnet_tiny.yaml")
    p.add_argument("--griffin_lim", action="store_true", help="no vocoder: Griffin-Lim, streamed approximately")
    args = p.parse_args(argv)
    if args.tokens < 1 or args.chunk_tokens < 1 or args.repeats < 1:
        sys.exit("bench/streaming.py: --tokens, --chunk_tokens and --repeats must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        synth = build(tmp, args.vocoder_config, args.griffin_lim)
    gen = {"temperature": 0.0, "min_length": args.tokens, "max_length": args.tokens + 8}
    reach = synth.stream_reach()  # measured once per synthesizer, before the clocks
    seconds = args.tokens * synth.pre_encoder.downsample * synth.audio.hop_length / synth.sample_rate
    results = {}
    for name, run in (("one-shot", lambda: one_shot(synth, gen)),
                      ("stream", lambda: streamed(synth, gen, args.chunk_tokens))):
        run()  # warm-up
        times = [run() for _ in range(args.repeats)]
        first = statistics.median(t[0] for t in times)
        total = statistics.median(t[1] for t in times)
        results[name] = (first, total, times[-1][2])
        print(f"{name:>8}: time to first audio {first * 1000:8.1f} ms   total {total:6.3f} s   "
              f"RTF {total / seconds:.3f}")
    (f1, t1, w1), (f2, t2, w2) = results["one-shot"], results["stream"]
    vocoder = "Griffin-Lim" if args.griffin_lim else f"ISTFTNet ({args.vocoder_config})"
    print(f"chain: tiny Echolancer, tiny pre-encoder, {vocoder}; {args.tokens} tokens = {seconds:.2f} s of audio, "
          f"chunks of {args.chunk_tokens} tokens, reach {reach.left}/{reach.right} tokens, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"ratios: time to first audio one-shot / stream = {f1 / f2:.1f}x; RTF stream / one-shot = {t2 / t1:.2f}")
    diff = float(np.abs(w1 - w2).max()) if w1.shape == w2.shape else float("nan")
    print(f"stream vs one-shot: {w2.shape[0]} vs {w1.shape[0]} samples, largest difference {diff:.2e}")
    return {name: (r[0], r[1]) for name, r in results.items()}


if __name__ == "__main__":
    main()
