"""The alignment aids (the prior, the guided attention loss, the inference window) and the pictures."""

import pytest
import torch

from model import Echolancer
from model.alignment import (
    alignment_image,
    alignment_prior,
    beta_binomial_log_prior,
    cross_attention_maps,
    diagonality,
    forward_sum_loss,
    guided_attention_loss,
    guided_attention_weights,
    prior_weight,
    window_mask,
    window_position,
)
from utils.config import load_config


def test_prior_rows_are_distributions_whose_peak_walks_the_diagonal():
    src, tgt = torch.tensor([8, 5]), torch.tensor([30, 12])
    lp = beta_binomial_log_prior(src, tgt, S=8, T=30, scale=1.0)  # (2, 30, 8)
    for b in range(2):
        S, T = int(src[b]), int(tgt[b])
        p = lp[b, :T, :S].exp()
        assert torch.allclose(p.sum(-1), torch.ones(T), atol=1e-4)
        peaks = p.argmax(-1)
        assert peaks[0] == 0 and peaks[-1] == S - 1
        assert (peaks[1:] >= peaks[:-1]).all()  # monotonic
        assert (lp[b, T:] == 0).all() and (lp[b, :, S:] == 0).all()  # padding left to the masks


def test_prior_weight_holds_then_fades_to_zero():
    w = [prior_weight(s, True, 10, 20) for s in (0, 9, 10, 20, 30, 100)]
    assert w == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert prior_weight(0, False, 10, 20) == 0.0
    assert alignment_prior(torch.tensor([3]), torch.tensor([4]), 3, 4, 1.0, 0.0) is None


def tiny_model() -> Echolancer:
    torch.manual_seed(0)
    return Echolancer.from_config(load_config("config/model_tiny.yaml")).eval()


def test_prior_enters_cross_attention_and_keeps_padding_invariance():
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    texts, sl = torch.randint(2, 40, (2, 7), generator=g), torch.tensor([7, 4])
    mels, ml = torch.randint(0, 1000, (2, 9), generator=g), torch.tensor([9, 6])
    spk = torch.tensor([0, 1])
    bias = alignment_prior(sl, ml, 7, 9, 1.0, 1.0)
    assert bias.shape == (2, 10, 7)
    plain = m(spk, texts, sl, mels, ml).logits
    with_prior = m(spk, texts, sl, mels, ml, cross_bias=bias).logits
    assert not torch.allclose(plain, with_prior, atol=1e-4)
    # junk text after each row's length changes no valid logit, prior or not
    junk = torch.cat([texts, torch.randint(2, 40, (2, 3), generator=g)], 1)
    bias_j = alignment_prior(sl, ml, 10, 9, 1.0, 1.0)
    out = m(spk, junk, sl, mels, ml, cross_bias=bias_j).logits
    for b in range(2):
        n = int(ml[b]) + 1
        assert torch.allclose(out[b, :n], with_prior[b, :n], atol=1e-5)


def test_cross_attention_maps_are_distributions_over_valid_text():
    m = tiny_model()
    g = torch.Generator().manual_seed(1)
    batch = {"speakers": torch.tensor([0, 1]), "texts": torch.randint(2, 40, (2, 6), generator=g),
             "src_lens": torch.tensor([6, 3]), "mels": torch.randint(0, 1000, (2, 8), generator=g),
             "mel_lens": torch.tensor([8, 5])}
    maps = cross_attention_maps(m, batch)
    assert len(maps) == m.cfg.decoder.layer and maps[0].shape == (2, 9, 6)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 9), atol=1e-5)
    assert (maps[0][1, :, 3:] == 0).all()


def test_diagonality_scores_a_diagonal_high_and_a_smear_or_reversal_low():
    S, T = 20, 60
    diag = torch.zeros(1, T, S)
    diag[0, torch.arange(T), torch.arange(T) * S // T] = 1.0
    smear = torch.full((1, T, S), 1.0 / S)
    rev = diag.flip(-1)
    lens = (torch.tensor([S]), torch.tensor([T]))
    assert diagonality(diag, *lens) > 0.99
    assert diagonality(smear, *lens) < 0.45
    assert diagonality(rev, *lens) < 0.3


def test_alignment_image_puts_text_upward_and_audio_to_the_right():
    a = torch.zeros(4, 3)
    a[0, 0] = 1.0  # first step on the first text token
    a[3, 2] = 1.0
    img = alignment_image(a, src_len=3, tgt_len=4)
    assert img.shape == (3, 4) and img.dtype == torch.uint8
    assert img[2, 0] == 255 and img[0, 3] == 255  # first text token at the bottom row


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_prior_scale_sets_its_width(scale):
    lp = beta_binomial_log_prior(torch.tensor([30]), torch.tensor([100]), 30, 100, scale)
    p = lp[0, 50].exp()
    k = torch.arange(30.0)
    var = (p * (k - (p * k).sum()) ** 2).sum()
    base = beta_binomial_log_prior(torch.tensor([30]), torch.tensor([100]), 30, 100, 1.0)[0, 50].exp()
    var1 = (base * (k - (base * k).sum()) ** 2).sum()
    assert (var > var1) if scale < 1 else (var < var1)


def test_guided_penalty_is_zero_on_the_diagonal_and_grows_away_from_it():
    w = guided_attention_weights(torch.tensor([10, 4]), torch.tensor([40, 8]), S=10, T=40, sigma=0.2)
    assert w.shape == (2, 40, 10)
    # Row 0: step t's diagonal text position is t / 4.
    assert w[0, 0, 0] < 0.02 and w[0, 39, 9] < 0.02 and w[0, 20, 5] < 0.02
    assert w[0, 0, 9] > 0.99 and w[0, 39, 0] > 0.99
    assert (w[0, 20, 5:] == w[0, 20, 5:].sort().values).all()  # more penalty further away
    assert (w[1, 8:] == 0).all() and (w[1, :, 4:] == 0).all()  # padding costs nothing


def test_guided_loss_prefers_a_diagonal_alignment_to_a_smear_or_a_reversal():
    S, T = 6, 24
    src, tgt = torch.tensor([S]), torch.tensor([T])
    diag = torch.zeros(1, 2, T, S)
    diag[0, :, torch.arange(T), torch.arange(T) * S // T] = 1.0
    smear = torch.full((1, 2, T, S), 1.0 / S)
    rev = diag.flip(-1)
    loss = {n: float(guided_attention_loss([a, a], src, tgt, 0.2)) for n, a in
            [("diag", diag), ("smear", smear), ("rev", rev)]}
    assert loss["diag"] < 0.05 < 0.4 < loss["smear"] < loss["rev"]
    # A normalizer replaces the count of valid steps (gradient accumulation over micro-batches).
    torch.testing.assert_close(guided_attention_loss([smear], src, tgt, 0.2, normalizer=2 * T),
                               guided_attention_loss([smear], src, tgt, 0.2) / 2)


def test_guided_loss_trains_the_models_own_attention_not_the_prior():
    m = tiny_model().train()
    g = torch.Generator().manual_seed(0)
    texts, sl = torch.randint(3, 30, (2, 9), generator=g), torch.tensor([9, 6])
    mels, ml = torch.randint(0, 100, (2, 30), generator=g), torch.tensor([30, 21])
    bias = alignment_prior(sl, ml, 9, 30, 1.0, 1.0)
    with_prior = m(torch.zeros(texts.shape[0], dtype=torch.long), texts, sl, mels, ml, cross_bias=bias, return_cross_weights=True)
    plain = m(torch.zeros(texts.shape[0], dtype=torch.long), texts, sl, mels, ml, return_cross_weights=True)
    assert len(with_prior.cross_weights) == len(m.dec_layers)
    # The first layer sees the same input either way: its own attention ignores the prior.
    torch.testing.assert_close(with_prior.cross_weights[0], plain.cross_weights[0])
    loss = guided_attention_loss(with_prior.cross_weights, sl, ml + 1, 0.2)
    loss.backward()
    assert m.dec_layers[0].cross_attn.q_proj.weight.grad.abs().sum() > 0
    assert m(torch.zeros(texts.shape[0], dtype=torch.long), texts, sl, mels, ml).cross_weights is None  # only computed when asked


def _train_attention(loss_fn, steps: int) -> tuple[float, float, list[float]]:
    """Train a tiny model on one alignment loss alone: diagonality before, after, and the losses."""
    m = tiny_model().train()
    g = torch.Generator().manual_seed(0)
    texts, sl = torch.randint(3, 30, (4, 12), generator=g), torch.tensor([12, 10, 8, 12])
    mels, ml = torch.randint(0, 100, (4, 48), generator=g), torch.tensor([48, 40, 30, 44])
    batch = dict(speakers=torch.zeros(4, dtype=torch.long), texts=texts, src_lens=sl, mels=mels, mel_lens=ml)
    before = float(diagonality(cross_attention_maps(m, batch)[-1], sl, ml + 1).mean())
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        out = m(torch.zeros(4, dtype=torch.long), texts, sl, mels, ml, return_cross_weights=True)
        loss = loss_fn(out.cross_weights, sl, ml + 1)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(diagonality(cross_attention_maps(m, batch)[-1], sl, ml + 1).mean())
    return before, after, losses


def test_a_few_steps_of_the_guided_loss_make_the_attention_diagonal():
    before, after, _ = _train_attention(lambda w, sl, tl: guided_attention_loss(w, sl, tl, 0.2), 30)
    assert before < 0.6 and after > 0.8, (before, after)


def _path(durations: list[int], T: int, S: int, reverse: bool = False) -> torch.Tensor:
    """(T, S) attention that holds text position s for durations[s] steps (mostly), in order."""
    a = torch.full((T, S), 0.02 / S)
    t = 0
    for s, d in enumerate(durations):
        a[t : t + d, S - 1 - s if reverse else s] += 0.98
        t += d
    return a


def test_forward_sum_prefers_any_monotonic_pace_to_a_smear_or_a_reversal():
    S, T = 6, 36
    sl, tl = torch.tensor([S]), torch.tensor([T])
    steady = _path([6] * 6, T, S)
    drifting = _path([2, 2, 2, 10, 10, 10], T, S)  # fast, then slow: a valid alignment off the diagonal
    smear = torch.full((T, S), 1.0 / S)
    reverse = _path([6] * 6, T, S, reverse=True)

    def fs(a):
        return float(forward_sum_loss([a[None, None]], sl, tl))

    def gd(a):
        return float(guided_attention_loss([a[None, None]], sl, tl, 0.2))

    assert fs(steady) < fs(drifting) < fs(smear) < fs(reverse)
    # The point of the loss: a change of pace costs the forward-sum loss far less (relative to the
    # smear) than the guided loss, whose fixed diagonal scores it as more than half a misalignment.
    assert fs(drifting) / fs(smear) < 0.5 * gd(drifting) / gd(smear)
    assert gd(drifting) / gd(smear) > 0.5


def test_forward_sum_of_a_row_is_the_same_alone_and_in_a_padded_batch():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 2, 20, 7, generator=g)
    sl, tl = torch.tensor([7, 4]), torch.tensor([20, 13])
    w[1, :, :, 4:] = 0.0  # padded text carries no attention
    w = w / w.sum(-1, keepdim=True)
    w[1, :, 13:] = 0.0  # padded steps
    both = forward_sum_loss([w], sl, tl, normalizer=1.0)
    alone = [forward_sum_loss([w[b : b + 1, :, : tl[b], : sl[b]]], sl[b : b + 1], tl[b : b + 1], normalizer=1.0)
             for b in range(2)]
    torch.testing.assert_close(both, alone[0] + alone[1])
    # Per decoder step by default: the sum over rows divided by their valid steps.
    torch.testing.assert_close(forward_sum_loss([w], sl, tl), both / 33)


def test_forward_sum_row_too_short_for_its_text_contributes_nothing():
    w = torch.full((1, 1, 3, 5), 0.2)
    assert float(forward_sum_loss([w], torch.tensor([5]), torch.tensor([3]))) == 0.0


def test_a_few_steps_of_the_forward_sum_loss_make_the_attention_monotonic():
    before, after, losses = _train_attention(forward_sum_loss, 40)
    assert losses[-1] < 0.5 * losses[0], losses
    assert before < 0.6 and after > 0.8, (before, after)


def test_window_keeps_back_and_forward_positions_and_its_position_never_falls_back():
    mask = window_mask(torch.tensor([0, 4]), 8, (1, 2))
    assert mask.tolist() == [[True, True, True, False, False, False, False, False],
                             [False, False, False, True, True, True, True, False]]
    w = torch.zeros(2, 2, 8)
    w[0, :, 2] = 1.0  # row 0's attention peaks ahead
    w[1, :, 1] = 1.0  # row 1's behind its position
    assert window_position(torch.tensor([0, 4]), [w]).tolist() == [2, 4]
