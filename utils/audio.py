"""The one audio front end of the project: WAV I/O, the log-mel function, Griffin-Lim.

Every component that turns audio into mel frames (preprocessing, the pre-encoder, the vocoder)
calls :func:`mel_spectrogram` with the shared :class:`~utils.config.AudioConfig`, so their mels
agree bit for bit. The function is the HiFi-GAN / iSTFTNet one (docs/DESIGN.md "Audio settings"):

    reflect-pad (n_fft - hop) / 2 on both sides -> STFT (center=False, Hann window) -> magnitude
    -> slaney-scale, slaney-normalised mel filterbank -> log(clamp(mel, 1e-5))

so a clip of N samples gives exactly N // hop frames. torchaudio's ``MelSpectrogram`` defaults
(HTK scale, no filter normalisation, centre padding, power spectrum) give different numbers; a
vocoder trained on one and fed the other sounds broken.

    wav = load_wav("clip.wav", 22050)                 # (N,) float32 in [-1, 1]
    mel = mel_spectrogram(wav, AudioConfig())         # (1, 80, N // 256)
    back = griffin_lim(mel[0], AudioConfig())         # (N // 256 * 256,)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

from utils.config import AudioConfig, ConfigError

LOG_CLAMP = 1.0e-5  # floor of the mel magnitude before the log: log(1e-5) ~ -11.5 is "silence"

# Filterbanks, windows and pseudo-inverses depend only on the settings and the device, so they are
# built once per (settings, device, kind) and reused; the key is hashable because AudioConfig's
# fields are plain numbers.
_CACHE: dict[tuple, Tensor] = {}


def _settings_key(audio: AudioConfig) -> tuple:
    return tuple(dataclasses.astuple(audio))


def _cached(kind: str, audio: AudioConfig, device: torch.device) -> Tensor:
    key = (kind, _settings_key(audio), str(device))
    if key not in _CACHE:
        if kind == "window":
            value = torch.hann_window(audio.win_length, device=device)
        elif kind == "fbank":
            # (n_freqs, n_mels); transposed to (n_mels, n_freqs) so that fbank @ spec works.
            value = torchaudio.functional.melscale_fbanks(
                n_freqs=audio.n_fft // 2 + 1,
                f_min=float(audio.fmin),
                f_max=float(audio.fmax),
                n_mels=audio.n_mels,
                sample_rate=audio.sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            ).T.contiguous().to(device)
        elif kind == "fbank_pinv":
            # (n_freqs, n_mels): least-squares inverse of the filterbank, for Griffin-Lim.
            value = torch.linalg.pinv(_cached("fbank", audio, torch.device("cpu")).double()).float().to(device)
        else:
            raise KeyError(kind)
        _CACHE[key] = value
    return _CACHE[key]


def mel_spectrogram(wav: Tensor, audio: AudioConfig) -> Tensor:
    """HiFi-GAN-style log-mel spectrogram.

    Args:
        wav: (N,) or (B, N) float waveform, nominally in [-1, 1].
        audio: the shared audio settings.
    Returns:
        (B, n_mels, N // hop_length) float32 natural-log mel magnitudes (B = 1 for a 1-D input).
    """
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ValueError(f"mel_spectrogram: wav must be (N,) or (B, N), got shape {tuple(wav.shape)}")
    wav = wav.float()
    pad = (audio.n_fft - audio.hop_length) // 2
    if wav.shape[-1] <= pad:
        raise ValueError(
            f"mel_spectrogram: clip of {wav.shape[-1]} samples is too short for n_fft={audio.n_fft} "
            f"(need more than {pad} samples)"
        )
    # Reflect padding (not zeros) so the edges look like the signal; with center=False the frame
    # count is then exactly N // hop.
    padded = torch.nn.functional.pad(wav[:, None], (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(
        padded,
        n_fft=audio.n_fft,
        hop_length=audio.hop_length,
        win_length=audio.win_length,
        window=_cached("window", audio, wav.device),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    # A tiny epsilon inside the sqrt keeps the gradient finite at exact zeros (HiFi-GAN does this).
    mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1.0e-9)  # (B, n_freqs, T)
    mel = torch.matmul(_cached("fbank", audio, wav.device), mag)  # (B, n_mels, T)
    return torch.log(torch.clamp(mel, min=LOG_CLAMP))


def frames_to_samples(n_frames: int, audio: AudioConfig) -> int:
    """Number of waveform samples that ``n_frames`` mel frames stand for (frames x hop)."""
    return int(n_frames) * audio.hop_length


def griffin_lim(log_mel: Tensor, audio: AudioConfig, n_iter: int = 32, momentum: float = 0.99) -> Tensor:
    """Invert a log-mel from :func:`mel_spectrogram` to a waveform without a trained vocoder.

    The linear magnitude is the least-squares inverse of the slaney filterbank (clamped at 0), then
    torchaudio's Griffin-Lim (``power=1``: these are magnitudes) estimates the phase. Usable as a
    reference and as the pipeline's fallback, not as a vocoder.

    Args:
        log_mel: (n_mels, T) or (B, n_mels, T) natural-log mel magnitudes.
        audio: the settings the mel was computed with.
        n_iter: Griffin-Lim iterations.  momentum: the "fast Griffin-Lim" momentum.
    Returns:
        (T * hop,) or (B, T * hop) float32 waveform, matching the input's batch layout.
    """
    squeeze = log_mel.dim() == 2
    if squeeze:
        log_mel = log_mel[None]
    if log_mel.dim() != 3 or log_mel.shape[1] != audio.n_mels:
        raise ValueError(
            f"griffin_lim: log_mel must be (n_mels={audio.n_mels}, T) or (B, n_mels, T), got {tuple(log_mel.shape)}"
        )
    T = log_mel.shape[-1]
    mag = torch.exp(log_mel.float())
    lin = torch.matmul(_cached("fbank_pinv", audio, mag.device), mag).clamp(min=0.0)  # (B, n_freqs, T)
    # Griffin-Lim's inverse STFT centres frame t on sample t*hop; mel_spectrogram's frame t is
    # centred on t*hop + hop/2 (reflect pad (n_fft-hop)/2, center=False). Shift by hop/2 so the
    # output lines up with the original clip and has exactly T * hop samples.
    half = audio.hop_length // 2
    total = frames_to_samples(T, audio)
    wav = torchaudio.functional.griffinlim(
        lin,
        window=_cached("window", audio, lin.device),
        n_fft=audio.n_fft,
        hop_length=audio.hop_length,
        win_length=audio.win_length,
        power=1.0,
        n_iter=n_iter,
        momentum=momentum,
        length=total - half,
        rand_init=True,
    )
    wav = torch.nn.functional.pad(wav, (half, 0))
    return wav[0] if squeeze else wav


# --------------------------------------------------------------------------------------------
# WAV I/O (soundfile: torchaudio's load/save need torchcodec)
# --------------------------------------------------------------------------------------------


def load_wav(path: str | os.PathLike, sampling_rate: int) -> Tensor:
    """Read an audio file as mono float32 at ``sampling_rate``.

    Args:
        path: any format soundfile reads (WAV, FLAC, OGG, ...), any channel count.
        sampling_rate: the target rate; other rates are resampled (torchaudio, windowed sinc).
    Returns:
        (N,) float32 tensor; integer PCM is scaled to [-1, 1], channels are averaged.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_wav: no such file: {path}")
    data, sr = sf.read(path, dtype="float32", always_2d=True)  # (N, channels)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sampling_rate:
        wav = torchaudio.functional.resample(wav, orig_freq=sr, new_freq=sampling_rate)
    return wav.float()


def save_wav(path: str | os.PathLike, wav: Tensor | np.ndarray, sampling_rate: int) -> None:
    """Write a mono waveform as 16-bit PCM WAV; values are clipped to [-1, 1].

    Args:
        wav: (N,) float samples (a tensor on any device, or a numpy array).
    """
    if isinstance(wav, Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"save_wav: expected a mono (N,) waveform, got shape {wav.shape}")
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    sf.write(os.fspath(path), np.clip(wav, -1.0, 1.0), sampling_rate, subtype="PCM_16")


# --------------------------------------------------------------------------------------------
# Settings carried by exported components
# --------------------------------------------------------------------------------------------


def audio_to_dict(audio: AudioConfig) -> dict:
    """The settings as a plain dict, for ``model_config.yaml`` / ``config.json`` of exports."""
    return dataclasses.asdict(audio)


def audio_mismatch(expected: AudioConfig, got: AudioConfig) -> list[str]:
    """Human-readable differences between two audio settings; empty when they agree."""
    diffs = []
    for f in dataclasses.fields(AudioConfig):
        a, b = getattr(expected, f.name), getattr(got, f.name)
        if float(a) != float(b):
            diffs.append(f"{f.name}: {a} vs {b}")
    return diffs


def check_same_audio(expected: AudioConfig, got: AudioConfig, what: str) -> None:
    """Raise if ``got`` (the settings of ``what``, e.g. a pre-encoder directory) differs from ``expected``."""
    diffs = audio_mismatch(expected, got)
    if diffs:
        raise ConfigError(f"{what}: audio settings differ from the model's ({'; '.join(diffs)}); "
                         "mels made with different settings are not interchangeable")


def make_audio_config(raw: Optional[dict], source: str) -> AudioConfig:
    """Validate a mapping of audio settings (e.g. read from an export) into an :class:`AudioConfig`."""
    from utils.config import config_from_dict

    return config_from_dict(AudioConfig, dict(raw or {}), source)
