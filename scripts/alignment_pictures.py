"""Alignment pictures of held-out sentences: where a trained Echolancer looks in the text.

    python scripts/alignment_pictures.py --checkpoint WORK/echolancer/export --pre_encoder_dir WORK/preencoder/export \
        --reference_dir WORK/corpus/eval --bert_model DIR --output_dir WORK/alignment --limit 4

For each of the first ``--limit`` recordings of ``--reference_dir``: its true mel goes through the
pre-encoder to codec tokens, and the model reads them teacher-forced with the sentence's text (no
alignment prior: this is what the model does on its own). Writes one PNG per sentence (every
decoder layer's cross-attention, averaged over heads, stacked top to bottom; text upward, audio
steps to the right) and ``alignment.json`` with each layer's diagonality (the share of attention
within a band around the diagonal: near 1 = monotonic alignment, about 0.4 = spread over the text).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from model.alignment import alignment_image, cross_attention_maps, diagonality  # noqa: E402
from utils.device import pick_device  # noqa: E402


def _stack(images: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """Layers top to bottom, separated by a white line, each pixel ``scale`` x ``scale``."""
    width = max(i.shape[1] for i in images)
    rows = []
    for img in images:
        pad = np.zeros((img.shape[0], width), dtype=np.uint8)
        pad[:, : img.shape[1]] = img
        rows += [pad, np.full((1, width), 255, dtype=np.uint8)]
    out = np.concatenate(rows[:-1], axis=0)
    return np.kron(out, np.ones((scale, scale), dtype=np.uint8))


def pictures(args: argparse.Namespace) -> dict:
    from evaluate import read_references
    from model.pretrained import load_echolancer
    from scripted_preencoder import ScriptedPreEncoder
    from utils.audio import load_wav, mel_spectrogram

    device = pick_device(args.device)
    loaded = load_echolancer(args.checkpoint, device=device)
    model, tok = loaded.model, loaded.tokenizer
    cfg = loaded.model_config
    audio = getattr(cfg, "audio", None) or cfg.preprocessing.audio  # the audio settings moved in newer configs
    pre = ScriptedPreEncoder(args.pre_encoder_dir, device)
    bert = None
    if args.bert_model:
        from bertfe import BERTFrontEnd

        bert = BERTFrontEnd(args.bert_model, device=device)
    os.makedirs(args.output_dir, exist_ok=True)
    report = {"checkpoint": loaded.path, "step": loaded.step, "sentences": []}
    for i, ref in enumerate(read_references(args.reference_dir, args.limit)):
        mel = mel_spectrogram(load_wav(ref.wav_path, audio.sampling_rate), audio)  # (1, C, T)
        with torch.no_grad():
            tokens = pre.encode(mel.transpose(1, 2).to(device))  # (1, T')
            ids = torch.tensor([tok.encode(ref.text)], dtype=torch.long, device=device)
            batch = {"speakers": torch.zeros(1, dtype=torch.long, device=device), "texts": ids,
                     "src_lens": torch.tensor([ids.shape[1]], device=device), "mels": tokens,
                     "mel_lens": torch.tensor([tokens.shape[1]], device=device)}
            if bert is not None:
                batch["em_hidden"] = bert.encode([ref.text]).to(device)
            maps = cross_attention_maps(model, batch)  # per layer (1, T' + 1, S)
        steps = tokens.shape[1] + 1
        diag = [round(float(diagonality(m, batch["src_lens"], torch.tensor([steps]))[0]), 4) for m in maps]
        images = [alignment_image(m[0], ids.shape[1], steps).cpu().numpy() for m in maps]
        path = os.path.join(args.output_dir, f"{i:03d}.png")
        from PIL import Image

        Image.fromarray(_stack(images)).save(path)
        report["sentences"].append({"text": ref.text, "normalized": tok.normalize_text(ref.text), "png": path,
                                    "text_tokens": int(ids.shape[1]), "audio_tokens": int(tokens.shape[1]),
                                    "diagonality_per_layer": diag})
        print(f"{path}: diagonality per layer {diag}  {ref.text}")
    with open(os.path.join(args.output_dir, "alignment.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="Echolancer checkpoint file, ckpt/ directory or export/")
    p.add_argument("--pre_encoder_dir", required=True)
    p.add_argument("--reference_dir", required=True, help="corpus with recordings (e.g. the held-out sentences)")
    p.add_argument("--bert_model", default=None, help="the BERT the model was trained with (emotion vectors)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    pictures(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
