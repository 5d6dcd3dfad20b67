"""Codec tokens on one FSQ digit share vectors (``model.code_levels``, ``model.layers.CodeFactors``):
the tables it builds, that it starts from the plain model, and that training one token moves its
grid neighbours."""

import pytest
import torch
import torch.nn.functional as F

from model.echolancer import Echolancer
from model.layers import CodeFactors, NormalizedEmbedding
from model.preencoder import FSQ
from utils.config import ConfigError, load_config

TINY = ["model.code_levels=[8,5,5,5]"]  # the default of config/model.yaml
FREE = ["model.code_levels=[]"]  # a free vector per token


def test_each_code_vector_is_its_own_plus_one_vector_per_digit():
    levels = [4, 3, 2]
    cf = CodeFactors(levels, dim=5, n_vocab=24 + 3)  # 24 codes, then BOS, EOS, pad
    emb = NormalizedEmbedding(27, 5)
    ids = torch.arange(27)
    got = emb.embedding(ids) + cf.digit_sum(ids, cf.inputs)
    fsq = FSQ(levels)
    digits = fsq.indices_to_codes(torch.arange(24)).long() + fsq.half_width  # the codec's numbering
    starts = [0, 4, 7]
    expanded = emb.embedding.weight.detach().clone()
    for k in range(24):
        want = emb.embedding.weight[k] + sum(cf.inputs[starts[d] + digits[k, d]] for d in range(3))
        torch.testing.assert_close(got[k], want)
        expanded[k] = want.detach()
    assert torch.equal(got[24:], emb.embedding.weight[24:])  # the special tokens keep their own vectors only
    torch.testing.assert_close(cf.embed(emb, ids[None]), emb.norm(expanded)[None])  # before the norm
    # The head adds the same per-digit scores to a plain head's logits (the specials' logits unchanged).
    plain, bias, h = torch.randn(27, 5), torch.randn(27), torch.randn(3, 5)
    out_expanded = plain.clone()
    for k in range(24):
        out_expanded[k] += sum(cf.outputs[starts[d] + digits[k, d]] for d in range(3)).detach()
    torch.testing.assert_close(cf.add_logits(torch.nn.functional.linear(h, plain, bias), h),
                               torch.nn.functional.linear(h, out_expanded, bias))


def test_zero_digit_vectors_give_exactly_the_plain_model():
    torch.manual_seed(0)
    plain = Echolancer.from_config(load_config("config/model_tiny.yaml", FREE)).eval()
    shared = Echolancer.from_config(load_config("config/model_tiny.yaml", TINY)).eval()
    missing, unexpected = shared.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["code_factors.inputs", "code_factors.outputs"] and not unexpected
    with torch.no_grad():
        shared.code_factors.inputs.zero_()
        shared.code_factors.outputs.zero_()
    texts, lens = torch.randint(1, 60, (2, 9)), torch.tensor([9, 6])
    mels, mel_lens = torch.randint(0, 1000, (2, 20)), torch.tensor([20, 13])
    args = (torch.tensor([0, 1]), texts, lens, mels, mel_lens, torch.randn(2, plain.cfg.emotion_input_size))
    torch.testing.assert_close(shared(*args).logits, plain(*args).logits)
    with torch.no_grad():
        shared.code_factors.outputs.normal_()
    assert not torch.allclose(shared(*args).logits, plain(*args).logits)  # and the digits are in the path


@pytest.mark.parametrize("factored", [False, True])
def test_training_one_code_moves_the_codes_that_share_its_digits(factored):
    """One step of cross-entropy towards code k: with shared digits, a code that differs from k in
    one digit only gains too; with free vectors it loses, like every other wrong code."""
    torch.manual_seed(0)
    model = Echolancer.from_config(load_config("config/model_tiny.yaml", TINY if factored else FREE))
    fsq = FSQ([8, 5, 5, 5])
    k = int(fsq.codes_to_indices(torch.tensor([1.0, 0.0, -1.0, 2.0])))
    near = int(fsq.codes_to_indices(torch.tensor([1.0, 0.0, -1.0, 1.0])))  # one digit apart
    h = torch.randn(8, 32)
    before = model.project(h)[0][:, near].mean()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model.project(h)[0], torch.full((8,), k)).backward()
    opt.step()
    moved = model.project(h)[0][:, near].mean() - before
    assert (moved > 0) if factored else (moved < 0), float(moved)


def test_levels_that_do_not_make_the_codebook_are_an_error_naming_both():
    with pytest.raises(ConfigError, match=r"code_levels \[8, 5, 5\] hold 200 codes but codebook_size is 1000"):
        load_config("config/model_tiny.yaml", ["model.code_levels=[8,5,5]"])
    with pytest.raises(ConfigError, match=r"code_levels \[8, 5, 5, 5\] hold 1000 codes but codebook_size is 20"):
        load_config("config/model_tiny.yaml", ["model.codebook_size=20"])  # the default levels, another codebook
    with pytest.raises(ConfigError, match="code_levels must each be >= 2"):
        load_config("config/model_tiny.yaml", ["model.code_levels=[1000,1]", "model.codebook_size=1000"])


def test_a_model_saved_before_code_levels_existed_loads_with_free_vectors(tmp_path):
    """A saved config without the key is a model from before it: free vectors, whatever
    config/model.yaml now defaults to (its weights have no digit vectors to load)."""
    from model.pretrained import export_echolancer, load_echolancer
    from utils.char_tokenizer import CharTokenizer

    cfg = load_config("config/model_tiny.yaml", FREE)
    model = Echolancer.from_config(cfg).eval()
    path = export_echolancer(model, cfg, CharTokenizer(), str(tmp_path / "old"), 5)  # .../echolancer.pt
    state = torch.load(path, weights_only=True)
    del state["model_config"]["model"]["code_levels"]  # as written before the key existed
    torch.save(state, path)
    loaded = load_echolancer(str(tmp_path / "old"))
    assert loaded.model.code_factors is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
