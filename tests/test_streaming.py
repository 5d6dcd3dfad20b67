"""Streaming synthesis (model/streaming.py, Synthesizer.stream): the stream is one-shot synthesis, a chunk at a time."""

import math

import numpy as np
import pytest
import torch

from model.echolancer import Echolancer
from model.istftnet import ISTFTNetGenerator
from model.stream_audio import AudioChunker, Reach, measure_reach
from model.streaming import TokenStream
from pipeline import PipelineError, Synthesizer
from tests.tiny_chain import TEXT, build_chain
from utils.audio import mel_spectrogram
from utils.char_tokenizer import CharTokenizer
from utils.config import AudioConfig
from utils.config.vocoder import GeneratorConfig


@pytest.fixture(scope="module")
def shared_chain(tmp_path_factory):
    return build_chain(tmp_path_factory.mktemp("stream"))


@pytest.fixture
def chain(shared_chain):
    with torch.no_grad():
        shared_chain[0].head.bias.zero_()  # tests below move the EOS bias; each starts from the model as built
    return shared_chain


def stop_at(model: Echolancer, n: int) -> dict:
    """Generation keywords under which the random model stops by EOS after exactly n tokens."""
    with torch.no_grad():
        model.head.bias[model.eos_id] = 30.0  # EOS wins every step once it is allowed
    return {"temperature": 0.0, "min_length": n, "max_length": n + 20}


def joined(stream) -> np.ndarray:
    chunks = list(stream)
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    return np.concatenate(chunks)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 100])
def test_istftnet_stream_equals_one_shot_when_the_row_stops(chain, chunk_tokens):
    model, pre, voc = chain
    synth = Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc)
    gen = stop_at(model, 45)
    (utt,) = synth.synthesize([TEXT], **gen)
    assert not utt.hit_max_length and len(utt.tokens) == 45
    stream = synth.stream(TEXT, chunk_tokens=chunk_tokens, **gen)
    wav = joined(stream)
    assert wav.shape == utt.wav.shape == (45 * 256,)
    assert np.abs(wav - utt.wav).max() < 1e-5
    assert torch.equal(stream.utterance.tokens, utt.tokens)
    assert torch.equal(stream.utterance.gate, utt.gate)
    if chunk_tokens < 45:
        assert len(stream.chunk_sizes) > 1  # really streamed: several chunks, not one at the end
    assert stream.first_audio_s is not None and stream.first_audio_s > 0


def test_istftnet_stream_equals_one_shot_when_the_row_hits_max_length(chain):
    model, pre, voc = chain
    with torch.no_grad():
        model.head.bias[model.eos_id] = -30.0  # never stops: cut by max_length
    synth = Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc)
    gen = {"temperature": 0.0, "max_length": 50}
    (utt,) = synth.synthesize([TEXT], **gen)
    assert utt.hit_max_length
    stream = synth.stream(TEXT, chunk_tokens=8, **gen)
    wav = joined(stream)
    assert wav.shape == utt.wav.shape and np.abs(wav - utt.wav).max() < 1e-5
    assert stream.utterance.hit_max_length


def test_trimming_the_context_matters(chain):
    """Without the measured left context and holdback the joins differ: the test above can fail."""
    model, pre, voc = chain
    synth = Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc)
    tokens = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(3))
    ref = synth.render(tokens[None], 40).numpy()
    for reach in (Reach(0, 0), Reach(synth.stream_reach().left, 0), Reach(0, synth.stream_reach().right)):
        chunker = AudioChunker(synth.render, reach, 256)
        out = [chunker.push(tokens[i : i + 8]) for i in range(0, 40, 8)] + [chunker.finish()]
        assert np.abs(np.concatenate(out) - ref).max() > 1e-4
    chunker = AudioChunker(synth.render, synth.stream_reach(), 256)
    out = [chunker.push(tokens[i : i + 8]) for i in range(0, 40, 8)] + [chunker.finish()]
    assert np.abs(np.concatenate(out) - ref).max() < 1e-5


def test_chunk_boundaries_follow_the_reach(chain):
    """Each push hands out exactly the samples of tokens no longer within reach.right of the end."""
    model, pre, voc = chain
    synth = Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc)
    reach = synth.stream_reach()
    chunker = AudioChunker(synth.render, reach, 256)
    tokens = torch.randint(0, 1000, (60,), generator=torch.Generator().manual_seed(4))
    total = 0
    for i in range(0, 60, 10):
        total += chunker.push(tokens[i : i + 10]).size
        assert total == max(0, i + 10 - reach.right) * 256
    assert total + chunker.finish().size == 60 * 256


def conv_reach(m) -> tuple[int, int]:
    """Inputs a Conv1d output reads to its left and right."""
    k, d, p = m.kernel_size[0], m.dilation[0], m.padding[0]
    return p, d * (k - 1) - p


def generator_reach(gen: ISTFTNetGenerator, n_fft: int, hop: int) -> tuple[float, float]:
    """The generator's receptive field in mel frames, added up from its layers (an independent check)."""
    scale, left, right = 1.0, 0.0, 0.0  # scale: positions per mel frame where the layer runs
    parts = [conv_reach(gen.conv_pre)]
    for i, up in enumerate(gen.ups):
        k, s, p = up.kernel_size[0], up.stride[0], up.padding[0]
        parts.append(((k - 1 - p) / s, p / s))
        for a, b in parts:
            left, right = left + a / scale, right + b / scale
        parts, scale = [], scale * s
        blocks = gen.resblocks[i * gen.num_kernels : (i + 1) * gen.num_kernels]  # parallel: the widest counts
        sums = [[sum(x) for x in zip(*(conv_reach(c) for pair in zip(b.convs1, b.convs2) for c in pair))] for b in blocks]
        parts.append((max(x[0] for x in sums), max(x[1] for x in sums)))
    parts += [gen.reflection_pad.padding, conv_reach(gen.conv_post), (n_fft / 2 / hop, n_fft / 2 / hop)]
    for a, b in parts:
        left, right = left + a / scale, right + b / scale
    return left, right


def test_reach_is_measured_from_the_modules(tmp_path):
    """The measured reach is what the layers add up to: nothing hard-coded."""
    model, pre, voc = build_chain(tmp_path)
    whole = Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc).stream_reach()
    pre_only = Synthesizer(model, CharTokenizer(), pre_encoder=pre).stream_reach()  # Griffin-Lim: the pre-encoder
    # Pre-encoder: 2 blocks of kernel 3, one frame per token: 2 tokens each side (+1 margin).
    assert pre_only == Reach(3, 3)
    # The generator of tests/tiny_chain.py, added up layer by layer (in mel frames, fractions where
    # the layers run on upsampled positions), plus the pre-encoder's 2: within a token of the measure.
    left, right = generator_reach(ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=16), 80), 16, 4)
    assert left > 10 and right > 10  # dominated by the dilated ResBlocks
    for measured, counted in ((whole.left - 1, left + 2), (whole.right - 1, right + 2)):
        assert math.floor(counted) - 1 <= measured <= math.ceil(counted)

    def shifted(tokens, n):  # a render whose output for token t is token t + 5's: reach 5 to the right
        return torch.cat([tokens[0, 5:], torch.zeros(5, dtype=torch.long)]).float().repeat_interleave(4)

    assert measure_reach(shifted, 1000, 4) == Reach(1, 6)


def test_downsampled_codec_streams_exactly(tmp_path):
    model, pre, voc = build_chain(tmp_path, downsample=2)
    synth = Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc)
    gen = stop_at(model, 21)
    (utt,) = synth.synthesize([TEXT], **gen)
    wav = joined(synth.stream(TEXT, chunk_tokens=5, **gen))
    assert wav.shape == utt.wav.shape == (21 * 512,)
    assert np.abs(wav - utt.wav).max() < 1e-5


def test_griffin_lim_stream_is_finite_right_length_and_near_one_shot(chain):
    model, pre, _ = chain
    synth = Synthesizer(model, CharTokenizer(), pre_encoder=pre)
    gen = stop_at(model, 80)
    torch.manual_seed(0)
    (utt,) = synth.synthesize([TEXT], **gen)
    torch.manual_seed(0)
    wav = joined(synth.stream(TEXT, chunk_tokens=16, **gen))
    assert wav.shape == utt.wav.shape == (80 * 256,)
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    audio = AudioConfig()

    def logmel(x):
        return mel_spectrogram(torch.from_numpy(x)[None], audio)[0]

    ref = logmel(utt.wav)
    dist = float((logmel(wav) - ref).abs().mean())  # stream vs one-shot
    noise = np.random.default_rng(0).standard_normal(wav.shape).astype(np.float32) * float(np.std(utt.wav))
    baseline = float((logmel(noise) - ref).abs().mean())  # noise of the same level vs one-shot
    assert dist < 0.5 * baseline


def test_token_stream_gives_generate_tokens_and_restores_train_mode(chain):
    model, _, _ = chain
    texts = torch.tensor([CharTokenizer().encode(TEXT)])
    lens = torch.tensor([texts.shape[1]])
    spk = torch.zeros(1, dtype=torch.long)
    ref = model.infer(spk, texts, lens, temperature=0.0, max_length=30)
    model.train()
    stream = TokenStream(model, spk, texts, lens, temperature=0.0, max_length=30)
    assert not model.training
    got = torch.cat(list(stream.chunks(4)))
    assert model.training  # given back when the stream ended
    model.eval()
    n = int(ref.lengths[0])
    assert torch.equal(got, ref.tokens[0, :n].cpu())
    assert torch.equal(stream.result().tokens, ref.tokens)
    with pytest.raises(ValueError, match="batch size 1"):
        TokenStream(model, spk.repeat(2), texts.repeat(2, 1), lens.repeat(2))


def test_bad_stream_requests_are_clear_errors(chain):
    model, pre, voc = chain
    synth = Synthesizer(model, CharTokenizer(), pre_encoder=pre, vocoder=voc)
    with pytest.raises(ValueError, match="chunk_tokens must be an integer >= 1"):
        synth.stream(TEXT, chunk_tokens=0)
    with pytest.raises(PipelineError, match="streaming needs a pre-encoder"):
        Synthesizer(model, CharTokenizer()).stream(TEXT)
    with pytest.raises(PipelineError, match="tokenizer"):
        synth.stream("...")
