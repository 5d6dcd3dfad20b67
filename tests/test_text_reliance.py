"""scripts/text_reliance.py: the loss a wrong text costs is zero for a model that cannot see the
text and large for one that has learnt to read it."""

import torch

from data.dataset import Collate
from model.echolancer import Echolancer
from scripts.text_reliance import swap_text, text_reliance
from utils.config import load_config

CFG = ["model.multi_speaker=false", "model.emotion_input_size=8", "model.vocab_size=12"]


def items(n: int, seed: int) -> list[dict]:
    """Utterances whose audio spells the text: symbol s (1..10) sounds as codes 2s, 2s + 1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        text = torch.randint(1, 11, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g)
        mel = torch.stack([2 * text, 2 * text + 1], dim=1).flatten()
        out.append({"text": text, "mel": mel, "speaker": 0, "emotion": torch.zeros(8), "index": i})
    return out


def test_swapping_rotates_text_and_sentence_vector_and_keeps_the_audio():
    batch = {"texts": torch.arange(6).view(3, 2), "src_lens": torch.tensor([2, 1, 2]),
             "em_hidden": torch.arange(3.0)[:, None], "mels": torch.arange(9).view(3, 3)}
    out = swap_text(batch)
    assert out["texts"][0].tolist() == [4, 5] and out["src_lens"].tolist() == [2, 2, 1]
    assert out["em_hidden"][:, 0].tolist() == [2.0, 0.0, 1.0] and out["mels"] is batch["mels"]


def test_a_model_that_cannot_see_the_text_gains_nothing_from_it():
    torch.manual_seed(0)
    model = Echolancer.from_config(load_config("config/model_tiny.yaml", CFG)).eval()
    with torch.no_grad():  # nothing of the text side reaches the decoder
        for layer in model.dec_layers:
            for p in layer.cross_attn.parameters():
                p.zero_()
        model.dec_cond.weight.zero_()
    r = text_reliance(model, items(10, 1), batch_size=4)
    assert r["utterances"] == 10 and r["text_gain_nats"] == 0.0


def test_a_model_trained_to_read_the_text_loses_much_with_a_wrong_one():
    torch.manual_seed(0)
    model = Echolancer.from_config(load_config("config/model_tiny.yaml", CFG))
    opt = torch.optim.Adam(model.parameters(), lr=3.0e-3)
    collate = Collate(model.pad_id)
    for step in range(300):
        b = collate(items(16, 100 + step))
        out = model(None, b["texts"], b["src_lens"], b["mels"], b["mel_lens"], b["em_hidden"])
        valid = ~out.tgt_pad
        loss = torch.nn.functional.cross_entropy(out.logits[valid], out.targets[valid])
        opt.zero_grad()
        loss.backward()
        opt.step()
    r = text_reliance(model.eval(), items(32, 1), batch_size=8)
    assert r["text_gain_nats"] > 0.5, r  # 0.98 at step 300; 0.00 untrained
