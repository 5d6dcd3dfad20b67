"""utils/speaker_similarity.py: Resemblyzer's packaged speaker encoder, offline, on Piper speech."""

import socket
import sys

import numpy as np
import pytest
import torch
import torchaudio

from scripts.make_corpus import make_corpus
from utils.audio import load_wav
from utils.speaker_similarity import SpeakerEncoder, SpeakerEncoderUnavailable, cosine_similarity

SENTENCES = ["The green door at the end of the hall was locked.", "A cold wind blew the hats off three fishermen.",
             "She poured hot tea into two chipped blue cups."]
RATE = 22050


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """Each sentence in the Piper voice and in the same voice 20 % higher (a different speaker to
    the ear: shorter vocal tract, higher pitch)."""
    root = tmp_path_factory.mktemp("spk")
    make_corpus(SENTENCES, str(root), voices=["joe", "joe,pitch=1.2"])
    return {name: [load_wav(str(p), RATE).numpy().reshape(-1) for p in sorted((root / name / "wavs").glob("*.wav"))]
            for name in ("joe", "joe_pitch_1_2")}


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder()


def test_the_same_clip_scores_one_at_any_sample_rate(voices, encoder):
    wav = voices["joe"][0]
    assert encoder.similarity(wav, RATE, wav, RATE) == pytest.approx(1.0, abs=1e-5)
    e = encoder.embed(wav, RATE)
    assert e.shape == (256,) and e.dtype == np.float32
    assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5) and (e >= 0).all()
    # The same clip at 16 kHz (the encoder's own rate, no resampling) and at 44.1 kHz.
    at_16k = torchaudio.functional.resample(torch.from_numpy(wav), RATE, 16000).numpy()
    at_44k = torchaudio.functional.resample(torch.from_numpy(wav), RATE, 44100).numpy()
    assert encoder.similarity(at_16k, 16000, wav, RATE) > 0.99
    assert encoder.similarity(at_44k, 44100, wav, RATE) > 0.99


def test_the_same_voice_on_other_sentences_scores_well_above_a_different_voice(voices, encoder):
    joe = [encoder.embed(w, RATE) for w in voices["joe"]]
    high = [encoder.embed(w, RATE) for w in voices["joe_pitch_1_2"]]
    same_voice = [cosine_similarity(joe[i], joe[j]) for i in range(3) for j in range(3) if i < j]
    other_voice = [cosine_similarity(h, j) for h, j in zip(high, joe)]  # even on the same sentence
    # Measured: 0.83-0.94 against 0.59-0.69 (bench/speaker_similarity.py, ten sentences).
    assert min(same_voice) > 0.8
    assert max(other_voice) < 0.75
    assert min(same_voice) - max(other_voice) > 0.1


def test_noise_and_silence_do_not_sound_like_the_speaker(voices, encoder):
    wav = voices["joe"][0]
    noise = (0.1 * np.random.default_rng(0).standard_normal(len(wav))).astype(np.float32)
    assert encoder.similarity(noise, RATE, wav, RATE) < 0.6
    silent = np.zeros(RATE, dtype=np.float32)
    assert not encoder.embed(silent, RATE).any()  # no signal, no voice: all zeros, not NaN
    assert encoder.similarity(silent, RATE, wav, RATE) == 0.0
    assert encoder.similarity(np.zeros(0, dtype=np.float32), RATE, wav, RATE) == 0.0
    # Loudness barely matters: a copy at half the level, and one 1.5 times louder (Piper peaks at
    # 1.0, so it clips) still sound like the same speaker. Measured: 0.96 and 0.97.
    assert encoder.similarity(0.5 * wav, RATE, wav, RATE) > 0.9
    assert encoder.similarity(1.5 * wav, RATE, wav, RATE) > 0.9


def test_the_packaged_weights_load_offline_and_weights_only(monkeypatch):
    import resemblyzer

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    enc = SpeakerEncoder()
    assert loads == [True]  # one load of the packaged file, and a safe one
    assert "resemblyzer" in enc.name
    # The weights really are the packaged ones (a strict load: no layer left at its random init).
    state = real_load(f"{resemblyzer.__path__[0]}/pretrained.pt", map_location="cpu", weights_only=True)["model_state"]
    assert torch.equal(enc.model.linear.weight, state["linear.weight"])
    assert torch.equal(enc.model.lstm.weight_hh_l2, state["lstm.weight_hh_l2"])


def test_a_missing_package_is_one_error_naming_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import resemblyzer -> ImportError
    with pytest.raises(SpeakerEncoderUnavailable, match=r"resemblyzer.*pip install --no-deps -r requirements-nodeps"):
        SpeakerEncoder()


def test_cosine_similarity():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(2 ** -0.5)
    assert cosine_similarity(np.zeros(2), np.array([1.0, 0.0])) == 0.0
