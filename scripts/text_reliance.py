"""How much does a trained Echolancer read its text? Teacher-forced loss with the right text and a wrong one.

    python scripts/text_reliance.py --checkpoint WORK/echolancer/export --data_dir WORK/data/val

Each validation utterance is scored twice, teacher-forced, without the alignment prior: with its own
text (and its own BERT sentence vector), and with those of the next utterance in the batch (the
audio stays). The gap, in nats per codec token, is what the text is worth to the model: near 0
means it predicts from the previous audio tokens alone, however well it aligns. The token loss
alone cannot say this, since most of it is won inside a sound from the tokens before. Writes one
JSON line; ``--output`` also saves it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.dataset import Collate, EcholancerDataset  # noqa: E402
from model.echolancer import Echolancer  # noqa: E402
from model.pretrained import load_echolancer  # noqa: E402


def token_loss(model: Echolancer, batch: dict[str, Tensor]) -> tuple[float, int]:
    """(summed token cross-entropy over the valid targets, EOS included; their count)."""
    out = model(batch["speakers"] if model.cfg.multi_speaker else None, batch["texts"], batch["src_lens"],
                batch["mels"], batch["mel_lens"], batch["em_hidden"])
    valid = ~out.tgt_pad
    ce = F.cross_entropy(out.logits[valid].float(), out.targets[valid], reduction="sum")
    return float(ce), int(valid.sum())


def swap_text(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch with each utterance's text and sentence vector taken from the next one (rotated by one)."""
    out = dict(batch)
    for key in ("texts", "src_lens", "em_hidden"):
        out[key] = batch[key].roll(1, dims=0)
    return out


@torch.no_grad()
def text_reliance(model: Echolancer, dataset: EcholancerDataset, batch_size: int = 16,
                  limit: Optional[int] = None) -> dict:
    """Mean token loss (nats) with the right and with a wrong text, and their gap.

    Args:
        model: in eval mode.  dataset: the utterances (at least 2).  batch_size: >= 2, as the wrong
            text comes from the same batch.  limit: score only the first ``limit`` utterances.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (the wrong text is another utterance's), got {batch_size}")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n < 2:
        raise ValueError(f"need at least 2 utterances, got {n}")
    collate = Collate(model.pad_id)
    sums, count = {"right": 0.0, "wrong": 0.0}, 0
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        if len(items) < 2:  # a last batch of one has no other text: score it with the first two
            items = [dataset[0], items[0]]
        batch = collate(items)
        right, k = token_loss(model, batch)
        wrong, _ = token_loss(model, swap_text(batch))
        sums["right"] += right
        sums["wrong"] += wrong
        count += k
    right, wrong = sums["right"] / count, sums["wrong"] / count
    return {"utterances": n, "tokens": count, "loss_right_text": round(right, 4),
            "loss_wrong_text": round(wrong, 4), "text_gain_nats": round(wrong - right, 4)}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="an Echolancer export dir or checkpoint")
    p.add_argument("--data_dir", required=True, help="preprocessed utterances (e.g. WORK/data/val)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="score only the first N utterances")
    p.add_argument("--output", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    loaded = load_echolancer(args.checkpoint)
    model = loaded.model.eval()
    result = {"checkpoint": args.checkpoint, "step": loaded.step,
              **text_reliance(model, EcholancerDataset(args.data_dir, loaded.model_config), args.batch_size,
                              args.limit)}
    line = json.dumps(result)
    print(line)
    if args.output:
        with open(args.output, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
