"""The shared mel function, WAV I/O and Griffin-Lim (utils/audio.py)."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from utils.audio import (
    audio_mismatch,
    check_same_audio,
    frames_to_samples,
    griffin_lim,
    load_wav,
    mel_spectrogram,
    save_wav,
)
from utils.config import AudioConfig

AUDIO = AudioConfig()


def chirp(n: int, sr: int = 22050, f0: float = 200.0, f1: float = 3000.0) -> np.ndarray:
    t = np.arange(n) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
    return (0.5 * np.sin(phase)).astype(np.float32)


def reference_mel(wav: torch.Tensor, a: AudioConfig) -> torch.Tensor:
    """Written out step by step from docs/DESIGN.md, independently of utils/audio.py's caching."""
    pad = (a.n_fft - a.hop_length) // 2
    x = torch.nn.functional.pad(wav[None, None], (pad, pad), mode="reflect")[0, 0]
    frames = x.unfold(0, a.n_fft, a.hop_length)  # (T, n_fft)
    spec = torch.fft.rfft(frames * torch.hann_window(a.win_length), dim=-1)  # (T, n_freqs)
    spec = torch.sqrt(spec.abs() ** 2 + 1e-9)  # HiFi-GAN's magnitude, epsilon included
    fb = torchaudio.functional.melscale_fbanks(a.n_fft // 2 + 1, a.fmin, a.fmax, a.n_mels, a.sampling_rate,
                                               norm="slaney", mel_scale="slaney")
    return torch.log(torch.clamp(spec @ fb, min=1e-5)).T  # (n_mels, T)


@pytest.mark.parametrize("n", [256 * 40, 256 * 40 + 1, 256 * 40 + 255, 5000])
def test_frame_count_is_samples_floor_hop(n):
    mel = mel_spectrogram(torch.from_numpy(chirp(n)), AUDIO)
    assert mel.shape == (1, 80, n // 256)


def test_matches_direct_reference_computation():
    wav = torch.from_numpy(chirp(12345))
    ours = mel_spectrogram(wav, AUDIO)[0]
    ref = reference_mel(wav, AUDIO)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-4)


def test_batched_equals_one_by_one():
    a, b = torch.from_numpy(chirp(8000)), torch.from_numpy(chirp(8000, f0=500.0))
    batched = mel_spectrogram(torch.stack([a, b]), AUDIO)
    torch.testing.assert_close(batched[0], mel_spectrogram(a, AUDIO)[0])
    torch.testing.assert_close(batched[1], mel_spectrogram(b, AUDIO)[0])


def test_differs_from_torchaudio_melspectrogram_defaults():
    # The design's warning: torchaudio's defaults (HTK scale, no norm, centre padding, power 2)
    # give log-mels several nats away from the HiFi-GAN function; they must not be confused.
    wav = torch.from_numpy(chirp(22050))
    ours = mel_spectrogram(wav, AUDIO)[0]
    ta = torchaudio.transforms.MelSpectrogram(22050, n_fft=1024, win_length=1024, hop_length=256,
                                              f_min=0.0, f_max=8000.0, n_mels=80)(wav)
    ta = torch.log(ta.clamp(min=1e-5))[:, : ours.shape[-1]]
    assert (ours - ta).abs().mean() > 1.0


def test_loud_tone_lands_in_the_right_mel_bin():
    # A 1 kHz sine must peak in the mel bin whose slaney centre is nearest 1 kHz.
    n = 22050
    wav = torch.sin(2 * math.pi * 1000.0 * torch.arange(n) / 22050) * 0.5
    mel = mel_spectrogram(wav, AUDIO)[0]
    fb = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 80, 22050, norm="slaney", mel_scale="slaney")
    freqs = torch.linspace(0, 11025, 513)
    centres = freqs[fb.argmax(0)]
    expected = int((centres - 1000.0).abs().argmin())
    assert abs(int(mel[:, 10:-10].mean(1).argmax()) - expected) <= 1


def test_silence_is_the_log_floor():
    mel = mel_spectrogram(torch.zeros(4096), AUDIO)
    torch.testing.assert_close(mel, torch.full_like(mel, math.log(1e-5)), atol=1e-3, rtol=0)


def test_load_wav_mixes_channels_and_resamples(tmp_path):
    left = chirp(16000, sr=16000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    path = tmp_path / "stereo16k.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    wav = load_wav(path, 22050)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(wav.shape[0] - 22050) <= 1
    # Mean of the two channels: half the amplitude of the left one.
    assert abs(float(wav.abs().max()) - 0.25) < 0.03


def test_save_then_load_round_trip_is_16_bit_pcm(tmp_path):
    wav = torch.from_numpy(chirp(5000))
    path = tmp_path / "sub" / "x.wav"
    save_wav(path, wav, 22050)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == 22050 and info.frames == 5000
    back = load_wav(path, 22050)
    torch.testing.assert_close(back, wav, atol=1.0 / 32767 + 1e-6, rtol=0)


def test_load_wav_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_wav(tmp_path / "nope.wav", 22050)


def test_griffin_lim_length_and_spectral_fidelity():
    torch.manual_seed(0)
    wav = torch.from_numpy(chirp(256 * 60))
    mel = mel_spectrogram(wav, AUDIO)
    out = griffin_lim(mel[0], AUDIO)
    assert out.shape == (frames_to_samples(60, AUDIO),)
    # The inverted audio's mel is close to the original mel (GL loses phase, not spectrum);
    # a silent or noise output would be many nats away.
    err = (mel_spectrogram(out, AUDIO) - mel).abs()[..., 2:-2].mean()
    assert err < 1.0
    assert griffin_lim(mel, AUDIO).shape == (1, 60 * 256)


def test_audio_mismatch_is_reported_by_name():
    other = AudioConfig(sampling_rate=24000, hop_length=300, fmax=8000.0)
    diffs = audio_mismatch(AUDIO, other)
    assert any(d.startswith("sampling_rate") for d in diffs) and any(d.startswith("hop_length") for d in diffs)
    assert audio_mismatch(AUDIO, AudioConfig()) == []
    with pytest.raises(ValueError, match="hop_length"):
        check_same_audio(AUDIO, other, "pre-encoder dir")
