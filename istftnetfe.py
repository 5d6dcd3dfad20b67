"""ISTFTNet front end: mel (B, n_mels, T) -> waveform (B, T * hop), and its TorchScript directory.

    fe = ISTFTNetFE.load_ts("exports/istftnet", "cuda")   # falls back to CPU with a warning
    wav = fe(mel)                                          # (B, T * 256) float32 in about [-1, 1]
    pcm = fe.infer(mel)                                    # int16 numpy, ready for a WAV file

An exported directory (docs/DESIGN.md "Exported component formats") holds

    istft_cpu.pt    traced generator, mel (B, n_mels, T) -> (magnitude, phase), each (B, n_fft/2+1, T*64+1)
    istft_cuda.pt   the same traced on a GPU (written when CUDA is available)
    config.json     gen_istft_n_fft, gen_istft_hop_size, sampling_rate, and the mel settings
                    (num_mels, n_fft, hop_size, win_size, fmin, fmax: HiFi-GAN's names)

The original iSTFTNet exports carry only the first three keys; they still load, with the shared
default mel settings and a warning. The inverse STFT itself is not traced: it runs through
``torch.istft`` here (:class:`model.istftnet.ISTFT`), on the generator's device or on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from model.istftnet import ISTFT
from utils.audio import audio_mismatch
from utils.config import AudioConfig, ConfigError, config_from_dict

CONFIG_NAME = "config.json"
REQUIRED_KEYS = ("gen_istft_n_fft", "gen_istft_hop_size", "sampling_rate")
# config.json key -> AudioConfig field (HiFi-GAN's config names, so the file reads like one).
MEL_KEYS = {
    "num_mels": "n_mels",
    "n_fft": "n_fft",
    "hop_size": "hop_length",
    "win_size": "win_length",
    "fmin": "fmin",
    "fmax": "fmax",
}
INT16_SCALE = 32767.0

Device = Union[str, torch.device]


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit.* is deprecated" FutureWarnings: the exported directory format is
    TorchScript by contract (compatible with the original exports), so they are not actionable here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


class ISTFTNetDirError(ValueError):
    """An ISTFTNet export directory that is malformed (bad config, unreadable or wrong model file)."""


def _file_name(device: torch.device) -> str:
    return f"istft_{device.type}.pt"


def _resolve_device(device: Device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"ISTFTNetFE: device '{device}' requested but CUDA is not available; using the CPU",
                      stacklevel=3)
        return torch.device("cpu")
    return dev


class _ClassOrInstanceMethod:
    """``ISTFTNetFE.load_ts(dir, dev)`` builds a new front end; ``fe.load_ts(dir, dev)`` (the seed's
    style, on an ``ISTFTNetFE(None, None)``) loads into ``fe``. Both return the loaded front end."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type):
        target = owner(None, None) if obj is None else obj
        return self.fn.__get__(target, owner)


class ISTFTNetFE(nn.Module):
    """Vocoder front end: a generator mel -> (magnitude, phase) followed by an inverse STFT.

    Args:
        gen: an eager :class:`~model.istftnet.ISTFTNetGenerator` or a loaded TorchScript generator
            (None until :meth:`load_ts`).
        stft: the :class:`~model.istftnet.ISTFT` matching the generator (None until loaded).
        audio: the mel settings the generator expects (sample rate included); None = unknown.
    """

    def __init__(self, gen: Optional[nn.Module], stft: Optional[ISTFT], audio: Optional[AudioConfig] = None) -> None:
        super().__init__()
        self.gen = gen
        self.stft = stft
        self.audio = audio
        self.sampling_rate: Optional[int] = audio.sampling_rate if audio is not None else None

    # ---------------------------------------------------------------------------------- running

    @property
    def device(self) -> torch.device:
        self._require_loaded()
        param = next(self.gen.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _require_loaded(self) -> None:
        if self.gen is None or self.stft is None:
            raise RuntimeError("ISTFTNetFE: no generator loaded; pass one to the constructor or call load_ts()")

    def _check_mel(self, mel: Tensor) -> None:
        if mel.dim() != 3:
            raise ValueError(f"ISTFTNetFE: mel must be (B, n_mels, T), got shape {tuple(mel.shape)}")
        if self.audio is not None and mel.shape[1] != self.audio.n_mels:
            raise ValueError(
                f"ISTFTNetFE: mel has {mel.shape[1]} channels but this vocoder expects n_mels={self.audio.n_mels} "
                "(the vocoder speaks (B, C, T); the pre-encoder's output (B, T, C) must be transposed)"
            )

    @torch.no_grad()
    def forward(self, mel: Tensor) -> Tensor:
        """Args: mel (B, n_mels, T) log-mel. Returns (B, T * hop) float32 waveform on the generator's device."""
        self._require_loaded()
        self._check_mel(mel)
        magnitude, phase = self.gen(mel.to(self.device, torch.float32))
        return self.stft(magnitude, phase)

    @staticmethod
    def _to_int16(wav: Tensor) -> np.ndarray:
        # Clamp first: 1.0 * 32768 would wrap around to -32768 in int16.
        pcm = (wav.float().clamp(-1.0, 1.0) * INT16_SCALE).round().to(torch.int16)
        pcm = pcm.cpu().numpy()
        return pcm[0] if pcm.shape[0] == 1 else pcm

    def infer(self, mel: Tensor) -> np.ndarray:
        """Args: mel (B, n_mels, T). Returns int16 numpy (T * hop,) for B = 1, else (B, T * hop)."""
        return self._to_int16(self(mel))

    @torch.no_grad()
    def infer_cpuistft(self, mel: Tensor) -> np.ndarray:
        """Like :meth:`infer`, but the inverse STFT runs on the CPU (the generator stays where it is).

        Useful where ``torch.istft`` is slow or missing on the accelerator; ``self.stft`` is not moved.
        """
        self._require_loaded()
        self._check_mel(mel)
        magnitude, phase = self.gen(mel.to(self.device, torch.float32))
        cpu_stft = ISTFT(self.stft.n_fft, self.stft.hop_length, self.stft.win_length)
        return self._to_int16(cpu_stft(magnitude.cpu(), phase.cpu()))

    # -------------------------------------------------------------------------------- exporting

    def export_ts(
        self,
        out_dir: str | os.PathLike,
        sampling_rate: Optional[int] = None,
        devices: Optional[list[str]] = None,
        example_frames: int = 32,
    ) -> list[str]:
        """Trace the generator to ``istft_<device>.pt`` and write ``config.json``.

        Weight norm is folded into the weights of a copy first (the live generator is untouched).
        Each traced file is checked against the eager generator on a random mel.

        Args:
            out_dir: directory to write (created).
            sampling_rate: must agree with ``self.audio`` when both are known.
            devices: devices to trace on; default ["cpu"] plus "cuda" when CUDA is available.
            example_frames: mel frames of the tracing example (the trace works for any T).
        Returns:
            the paths of the files written.
        """
        self._require_loaded()
        if isinstance(self.gen, torch.jit.ScriptModule):
            raise RuntimeError("ISTFTNetFE.export_ts needs the eager generator, not a loaded TorchScript one")
        audio = self.audio
        if audio is None:
            if sampling_rate is None:
                raise ValueError("ISTFTNetFE.export_ts: sampling_rate is required when the mel settings are unknown")
            warnings.warn("ISTFTNetFE.export_ts: no mel settings given; recording the shared defaults", stacklevel=2)
            audio = AudioConfig(sampling_rate=int(sampling_rate))
        elif sampling_rate is not None and int(sampling_rate) != audio.sampling_rate:
            raise ValueError(
                f"ISTFTNetFE.export_ts: sampling_rate {sampling_rate} differs from the vocoder's "
                f"audio.sampling_rate {audio.sampling_rate}"
            )
        if devices is None:
            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)

        # A copy with weight norm folded in; never deepcopy + remove (see folded_copy's docstring).
        gen = self.gen.folded_copy() if hasattr(self.gen, "folded_copy") else copy.deepcopy(self.gen)
        gen = gen.float().eval()
        n_mels = getattr(gen, "n_mels", audio.n_mels)
        example = torch.randn(1, n_mels, example_frames, generator=torch.Generator().manual_seed(0))
        written = []
        for name in devices:
            dev = torch.device(name)
            g = gen.to(dev)
            x = example.to(dev)
            with torch.no_grad(), _quiet_jit():
                traced = torch.jit.trace(g, (x,), check_trace=False, strict=True)
                eager_out, traced_out = g(x), traced(x)
            for what, a, b in zip(("magnitude", "phase"), eager_out, traced_out):
                err = (a - b).abs().max().item() / (a.abs().max().item() + 1e-8)
                if err > 1e-4:
                    raise RuntimeError(f"ISTFTNetFE.export_ts: traced {what} differs from eager on {dev} "
                                       f"(relative error {err:.2e})")
            path = os.path.join(out_dir, _file_name(dev))
            with _quiet_jit():
                torch.jit.save(traced, path)
            written.append(path)

        cfg = {
            "gen_istft_n_fft": self.stft.n_fft,
            "gen_istft_hop_size": self.stft.hop_length,
            "gen_istft_win_size": self.stft.win_length,
            "sampling_rate": audio.sampling_rate,
        }
        cfg.update({key: getattr(audio, field) for key, field in MEL_KEYS.items()})
        path = os.path.join(out_dir, CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        written.append(path)
        return written

    # ---------------------------------------------------------------------------------- loading

    @_ClassOrInstanceMethod
    def load_ts(self, in_dir: str | os.PathLike, device: Device = "cpu") -> ISTFTNetFE:
        """Load an exported directory (ours or an original iSTFTNet export).

        ``ISTFTNetFE.load_ts(dir, device)`` returns a new front end; ``fe.load_ts(dir, device)``
        loads into ``fe`` and returns it. A CUDA device without CUDA falls back to the CPU with a
        warning; a device whose file is missing loads the other file onto it, with a warning.

        Raises:
            FileNotFoundError: no such directory, no config.json, or no istft_*.pt file.
            ISTFTNetDirError: unreadable config.json, a missing/invalid key, a file that is not
                a traced generator, or mel settings that contradict the generator.
        """
        in_dir = os.fspath(in_dir)
        if not os.path.isdir(in_dir):
            raise FileNotFoundError(f"ISTFTNet directory not found: {in_dir}")
        dev = _resolve_device(device)
        cfg_path = os.path.join(in_dir, CONFIG_NAME)
        raw = _read_config(cfg_path)
        n_fft, hop = int(raw["gen_istft_n_fft"]), int(raw["gen_istft_hop_size"])
        win = int(raw.get("gen_istft_win_size", n_fft))

        gen = _load_generator(in_dir, dev)
        audio = _audio_from_config(raw, cfg_path, _traced_input_channels(gen))
        stft = ISTFT(n_fft, hop, win).to(dev)
        _probe(gen, stft, audio, os.path.join(in_dir, _file_name(dev)), dev)

        self.gen, self.stft, self.audio = gen, stft, audio
        self.sampling_rate = audio.sampling_rate
        return self


# ------------------------------------------------------------------------------------------------
# Loading helpers
# ------------------------------------------------------------------------------------------------


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; an ISTFTNet directory needs config.json with "
                                f"{', '.join(REQUIRED_KEYS)}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ISTFTNetDirError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ISTFTNetDirError(f"{path}: expected a JSON object at the top level")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise ISTFTNetDirError(f"{path}: missing key '{key}'; required keys: {', '.join(REQUIRED_KEYS)}")
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ISTFTNetDirError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return raw


def _audio_from_config(raw: dict, path: str, traced_mels: Optional[int]) -> AudioConfig:
    """Mel settings of config.json; the shared defaults (with a warning) where an old export lacks them."""
    present = {field: raw[key] for key, field in MEL_KEYS.items() if key in raw}
    missing = [key for key in MEL_KEYS if key not in raw]
    if missing:
        if "n_mels" not in present and traced_mels is not None:
            present["n_mels"] = traced_mels  # the generator's own input width beats a default
        defaults = AudioConfig()
        assumed = ", ".join(f"{k}={present.get(f, getattr(defaults, f))}" for k, f in MEL_KEYS.items() if k in missing)
        warnings.warn(
            f"{path}: no {', '.join(missing)} (an original iSTFTNet export?); assuming {assumed} "
            "(num_mels from the traced generator when it can be read, else the shared defaults). "
            "Check that the vocoder was trained on these mels.",
            stacklevel=3,
        )
    present["sampling_rate"] = raw["sampling_rate"]
    try:
        audio = config_from_dict(AudioConfig, present, path)
    except ConfigError as e:
        raise ISTFTNetDirError(str(e)) from None
    if traced_mels is not None and traced_mels != audio.n_mels:
        raise ISTFTNetDirError(
            f"{path}: num_mels is {audio.n_mels} but the traced generator takes {traced_mels} mel channels"
        )
    return audio


def _load_generator(in_dir: str, dev: torch.device) -> torch.jit.ScriptModule:
    wanted = os.path.join(in_dir, _file_name(dev))
    path = wanted
    if not os.path.isfile(wanted):
        others = [os.path.join(in_dir, n) for n in ("istft_cpu.pt", "istft_cuda.pt")]
        others = [p for p in others if os.path.isfile(p)]
        if not others:
            raise FileNotFoundError(f"{in_dir}: no traced generator; expected {_file_name(dev)} "
                                    "(istft_cpu.pt and/or istft_cuda.pt)")
        path = others[0]
        warnings.warn(f"{wanted} not found; loading {os.path.basename(path)} onto {dev}", stacklevel=3)
    try:
        with _quiet_jit():
            gen = torch.jit.load(path, map_location=dev)
    except Exception as e:  # torch raises RuntimeError/ValueError variants for non-TorchScript files
        raise ISTFTNetDirError(f"{path}: not a TorchScript file ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return gen.eval()


def _traced_input_channels(gen: nn.Module) -> Optional[int]:
    """Input mel channels of a traced generator, read from its first convolution's weight, if named so."""
    # Folded weights, old-style weight norm (weight_v) or a parametrization's direction (original1).
    names = ("conv_pre.weight", "conv_pre.weight_v", "conv_pre.parametrizations.weight.original1")
    for name, p in gen.named_parameters():
        if name in names and p.dim() == 3:
            return int(p.shape[1])
    return None


def _probe(gen: nn.Module, stft: ISTFT, audio: AudioConfig, path: str, dev: torch.device) -> None:
    """Run two mel frames through the loaded module: a wrong file fails here, with its name."""
    n_bins = stft.n_fft // 2 + 1
    try:
        with torch.no_grad():
            out = gen(torch.zeros(1, audio.n_mels, 2, device=dev))
    except Exception as e:
        raise ISTFTNetDirError(f"{path}: the generator fails on a (1, {audio.n_mels}, 2) mel: "
                               f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    ok = (isinstance(out, (tuple, list)) and len(out) == 2 and all(torch.is_tensor(t) for t in out)
          and out[0].shape == out[1].shape and out[0].dim() == 3 and out[0].shape[1] == n_bins)
    if not ok:
        desc = [tuple(t.shape) for t in out] if isinstance(out, (tuple, list)) else type(out).__name__
        raise ISTFTNetDirError(f"{path}: expected (magnitude, phase) of shape (1, {n_bins}, F), got {desc}")
    samples = stft.hop_length * (out[0].shape[-1] - 1)
    if samples != 2 * audio.hop_length:
        raise ISTFTNetDirError(f"{path}: 2 mel frames give {samples} samples, expected 2 x hop_size = "
                               f"{2 * audio.hop_length}; config.json's hop settings do not match the generator")


def check_vocoder_audio(fe: ISTFTNetFE, expected: AudioConfig, what: str = "ISTFTNet directory") -> None:
    """Raise if the vocoder's mel settings differ from ``expected`` (e.g. the pre-encoder's)."""
    if fe.audio is None:
        raise ConfigError(f"{what}: the vocoder's mel settings are unknown")
    diffs = audio_mismatch(expected, fe.audio)
    if diffs:
        raise ConfigError(f"{what}: mel settings differ ({'; '.join(diffs)}); the vocoder would receive mels "
                         "it was not trained on")
