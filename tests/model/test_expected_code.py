"""Expected-code decoding (``SamplingParams.code_levels``, ``evaluate.py --decode expected``):
the FSQ grid's numbering, the code it picks, and that stopping is unchanged."""

import pytest
import torch

from model.echolancer import Echolancer
from model.generation import generate
from model.preencoder import FSQ
from model.sampling import CodeGrid, SamplingParams
from utils.config import load_config

LEVELS = (8, 5, 5, 5)
TINY = ["model.encoder.hidden=32", "model.decoder.hidden=32", "model.encoder.layer=1", "model.decoder.layer=1",
        "model.encoder.head=2", "model.decoder.head=2", "model.encoder_kv_heads=2", "model.decoder_kv_heads=2",
        "model.emotion_input_size=8", "model.emotion_hidden_sizes=[8]", "model.emotion_channels=8",
        "model.vocab_size=12", "model.codebook_size=1000"]


def test_the_grid_numbers_codes_as_the_pre_encoders_fsq_does():
    grid, fsq = CodeGrid(LEVELS, torch.device("cpu")), FSQ(list(LEVELS))
    ids = torch.arange(1000)
    # id = sum(digit_d * basis_d), basis = cumprod([1] + levels[:-1]), digits from 0
    basis = torch.tensor([1, 8, 40, 200])
    digits = (grid.codes + fsq.half_width.float()).long()
    assert torch.equal((digits * basis).sum(-1), ids)
    assert torch.equal(fsq.codes_to_indices(grid.codes), ids)


def test_the_chosen_code_is_the_one_nearest_the_mean_digit_per_dimension():
    grid = CodeGrid(LEVELS, torch.device("cpu"))
    code = lambda d: int(sum(x * b for x, b in zip(d, (1, 8, 40, 200))))  # noqa: E731
    scores = torch.full((3, 1003), -1.0e4)
    scores[0, code((5, 1, 2, 3))] = 0.0  # one code: that code
    scores[1, code((2, 1, 1, 1))] = 0.0  # two codes, evenly: the digit between them
    scores[1, code((4, 1, 1, 3))] = 0.0
    scores[2, code((7, 4, 4, 4))] = 0.0  # the corner stays on the grid
    scores[2, 1001] = 5.0  # EOS is not a codec token: it never enters the mean
    got = grid.expected(scores, temperature=1.0, top_k=0, top_p=1.0).tolist()
    assert got == [code((5, 1, 2, 3)), code((3, 1, 1, 2)), code((7, 4, 4, 4))]
    # Greedy is the argmax over codec tokens.
    assert grid.expected(scores, 0.0, 0, 1.0)[0].item() == code((5, 1, 2, 3))


def test_expected_decoding_keeps_the_stop_decision_and_emits_only_codec_tokens():
    torch.manual_seed(0)
    model = Echolancer.from_config(load_config("config/model.yaml", TINY).model).eval()
    texts, lens = torch.randint(1, 12, (3, 7)), torch.tensor([7, 5, 3])
    em = torch.zeros(3, 8)
    kw = dict(max_length=40, temperature=1.0, top_k=50, generator=torch.Generator().manual_seed(3))
    res = generate(model, None, texts, lens, em_hidden=em, code_levels=LEVELS, **kw)
    valid = torch.arange(res.tokens.shape[1])[None] < res.lengths[:, None]
    assert ((res.tokens < 1000) | ~valid).all()
    with torch.no_grad():
        model.head.bias[model.eos_id] = 1.0e4  # a model that wants to stop at once still does
    res = generate(model, None, texts, lens, em_hidden=em, code_levels=LEVELS, **kw)
    assert res.lengths.tolist() == [0, 0, 0]


def test_levels_that_do_not_make_the_models_codebook_are_an_error_naming_them():
    model = Echolancer.from_config(load_config("config/model.yaml", TINY).model).eval()
    texts, lens = torch.randint(1, 12, (1, 4)), torch.tensor([4])
    with pytest.raises(ValueError, match="code_levels"):
        generate(model, None, texts, lens, em_hidden=torch.zeros(1, 8), code_levels=(8, 5, 5), max_length=5)
    with pytest.raises(ValueError, match="code_levels"):
        SamplingParams(code_levels=(8, 1))
