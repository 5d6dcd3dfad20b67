"""The training-only text-recognition loss (``model.decoder.text_ctc_weight``): what it scores,
that the head exists only when asked for, and that inference never depends on it."""

import math

import pytest
import torch

from model.echolancer import Echolancer
from model.loss import text_ctc_loss
from utils.config import ConfigError, load_config

TINY = ["model.encoder.hidden=32", "model.decoder.hidden=32", "model.encoder.layer=1", "model.decoder.layer=1",
        "model.encoder.head=2", "model.decoder.head=2", "model.encoder_kv_heads=2", "model.decoder_kv_heads=2",
        "model.emotion_input_size=8", "model.emotion_hidden_sizes=[8]", "model.emotion_channels=8",
        "model.vocab_size=12", "model.codebook_size=20", "model.code_levels=[]", "model.encoder.dropout=0.0", "model.decoder.dropout=0.0"]


def build(*overrides: str) -> Echolancer:
    torch.manual_seed(0)
    return Echolancer.from_config(load_config("config/model.yaml", TINY + list(overrides)).model)


def test_a_state_sequence_that_spells_the_text_scores_near_zero_and_one_that_does_not_scores_high():
    V, blank = 5, 5
    texts = torch.tensor([[1, 3, 3, 0]])  # "1 3 3" (a repeat needs a blank between) + padding
    path = [1, 1, blank, 3, blank, 3, 3]  # one valid CTC path over 7 steps
    good = torch.full((1, 7, V + 1), -20.0)
    good[0, torch.arange(7), torch.tensor(path)] = 20.0
    wrong = torch.full((1, 7, V + 1), -20.0)
    wrong[0, :, 2] = 20.0  # every step says "2"
    src, tgt = torch.tensor([3]), torch.tensor([7])
    assert text_ctc_loss(good, texts, src, tgt).item() < 1e-3
    assert text_ctc_loss(wrong, texts, src, tgt).item() > 10.0
    # Per decoder step: a uniform head costs the CTC path sum's NLL / 7 steps.
    uniform = torch.zeros(1, 7, V + 1)
    nll = torch.nn.functional.ctc_loss(torch.log_softmax(uniform, -1).transpose(0, 1), texts, tgt, src, blank=blank)
    assert text_ctc_loss(uniform, texts, src, tgt).item() == pytest.approx(nll.item() * 3 / 7, rel=1e-5)
    # The normalizer replaces this batch's step count (gradient accumulation).
    assert text_ctc_loss(uniform, texts, src, tgt, normalizer=14.0).item() == pytest.approx(
        text_ctc_loss(uniform, texts, src, tgt).item() / 2, rel=1e-5)


def test_padding_past_a_rows_length_does_not_change_its_loss():
    torch.manual_seed(1)
    logits = torch.randn(2, 9, 7)
    texts = torch.tensor([[1, 2, 3], [4, 5, 0]])
    src, tgt = torch.tensor([3, 2]), torch.tensor([9, 6])
    base = text_ctc_loss(logits, texts, src, tgt)
    noisy = logits.clone()
    noisy[1, 6:] = torch.randn(3, 7) * 50  # steps past row 1's length
    texts2 = texts.clone()
    texts2[1, 2] = 3  # text past row 1's length
    assert torch.allclose(text_ctc_loss(noisy, texts2, src, tgt), base)
    assert math.isfinite(base.item())


def test_the_head_exists_only_when_weighted_and_leaves_the_token_logits_unchanged():
    plain, with_head = build(), build("model.decoder.text_ctc_weight=1.0")
    assert plain.text_ctc_head is None
    assert with_head.text_ctc_head is not None and with_head.text_ctc_head.out_features == 12 + 1
    missing, unexpected = with_head.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["text_ctc_head.bias", "text_ctc_head.weight"]
    for m in (plain, with_head):
        m.eval()
    texts, src = torch.randint(1, 12, (2, 6)), torch.tensor([6, 4])
    mels, mel_lens = torch.randint(0, 20, (2, 10)), torch.tensor([10, 7])
    em = torch.randn(2, 8)
    a = plain(None, texts, src, mels, mel_lens, em)
    b = with_head(None, texts, src, mels, mel_lens, em)
    assert a.text_logits is None and b.text_logits.shape == (2, 11, 13)
    assert torch.equal(a.logits, b.logits)


def test_a_negative_weight_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="text_ctc_weight"):
        load_config("config/model.yaml", TINY + ["model.decoder.text_ctc_weight=-1.0"])
