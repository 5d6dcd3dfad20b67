"""model.decoder.token_dropout: hidden teacher-forced audio inputs in training, nothing at inference."""

import pytest
import torch

from model import Echolancer
from tests.model.test_echolancer import TINY, batch, make_model
from utils.config import ConfigError, load_config


def test_hidden_inputs_become_pad_at_about_the_configured_share_and_never_bos():
    m = make_model("model.decoder.token_dropout=0.3")
    inputs = torch.randint(0, m.codebook_size, (64, 200))
    inputs[:, 0] = m.bos_id
    torch.manual_seed(0)
    hidden = m.hide_tokens(inputs)
    changed = hidden != inputs
    assert (hidden[changed] == m.pad_id).all()
    assert not changed[:, 0].any()
    assert 0.27 < changed[:, 1:].float().mean().item() < 0.33
    assert (hidden[~changed] == inputs[~changed]).all()


def test_token_dropout_changes_training_logits_but_not_eval_or_targets():
    base = make_model()
    drop = make_model("model.decoder.token_dropout=0.5")  # same seed: same weights
    args = batch(base, B=2, T=30)[:5]
    with torch.no_grad():
        assert torch.equal(base(*args).logits, drop(*args).logits)  # eval mode: no hiding
        base.train(), drop.train()
        torch.manual_seed(1)
        a = base(*args)
        torch.manual_seed(1)
        b = drop(*args)
    assert torch.equal(a.targets, b.targets)  # the loss still scores every true token
    assert not torch.allclose(a.logits, b.logits)


def test_hidden_tokens_are_reproducible_from_the_rng_state():
    m = make_model("model.decoder.token_dropout=0.2").train()
    args = batch(m, T=20)[:5]
    state = torch.get_rng_state()
    with torch.no_grad():
        first = m(*args).logits
        torch.set_rng_state(state)
        again = m(*args).logits
    assert torch.equal(first, again)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_token_dropout_outside_zero_to_one_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="token_dropout"):
        Echolancer.from_config(load_config(TINY, [f"model.decoder.token_dropout={value}"]))
