"""The exported vocoder: how the iSTFTNet directory is written and how it is read back, in one place.

An export directory (docs/DESIGN.md "Exported component formats") holds

    istft_cpu.pt    traced generator, mel (B, n_mels, T) -> (magnitude, phase), each (B, n_fft/2+1, T*64+1)
    istft_cuda.pt   the same traced on a GPU (written when CUDA is available)
    config.json     gen_istft_n_fft, gen_istft_hop_size, gen_istft_win_size, sampling_rate, and the mel
                    settings (num_mels, n_fft, hop_size, win_size, fmin, fmax: HiFi-GAN's names)
    weights.pt      from the trainer only: ``format`` "istftnet-export", ``format_version``, ``config``,
                    ``step``, ``generator`` (tensors and plain values: ``torch.load(weights_only=True)``)

The original iSTFTNet exports carry only gen_istft_n_fft, gen_istft_hop_size and sampling_rate;
they still load, with the shared default mel settings and a warning. The inverse STFT is not
traced: the loader builds a :class:`model.istftnet.ISTFT` for ``torch.istft``.
:func:`export_istftnet` writes a directory, :func:`load_istftnet` reads one;
``istftnetfe.ISTFTNetFE.load_ts`` is the front end over the latter.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from collections.abc import Iterator
from typing import Optional

import torch
from torch import nn

from model.istftnet import ISTFT
from utils.checkpoint import save_checkpoint
from utils.config import AudioConfig, ConfigError, config_from_dict, config_to_dict
from utils.config.vocoder import VocoderConfig
from utils.device import Device, pick_device

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
EXPORT_FORMAT = "istftnet-export"
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


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit.* is deprecated" FutureWarnings: the exported directory format is
    TorchScript by contract (compatible with the original exports), so they are not actionable here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


class ISTFTNetDirError(ValueError):
    """An ISTFTNet export directory that is malformed (bad config, unreadable or wrong model file)."""


def file_name(device: torch.device) -> str:
    """The traced generator's file for ``device``: ``istft_cpu.pt`` or ``istft_cuda.pt``."""
    return f"istft_{device.type}.pt"


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def _resolve_audio(audio: Optional[AudioConfig], sampling_rate: Optional[int]) -> AudioConfig:
    """The mel settings to record: ``audio``, or the shared defaults at ``sampling_rate`` (with a warning)."""
    if audio is None:
        if sampling_rate is None:
            raise ValueError("export_istftnet: sampling_rate is required when the mel settings are unknown")
        warnings.warn("export_istftnet: no mel settings given; recording the shared defaults", stacklevel=3)
        return AudioConfig(sampling_rate=int(sampling_rate))
    if sampling_rate is not None and int(sampling_rate) != audio.sampling_rate:
        raise ValueError(
            f"export_istftnet: sampling_rate {sampling_rate} differs from the vocoder's "
            f"audio.sampling_rate {audio.sampling_rate}"
        )
    return audio


def _trace_checked(gen: nn.Module, example: torch.Tensor, dev: torch.device) -> torch.jit.ScriptModule:
    """Trace ``gen`` on ``dev`` and check the trace's magnitude and phase against the eager output.

    Args:
        gen: the folded float generator, moved to ``dev`` here.
        example: (1, n_mels, T) mel on the CPU.
    """
    g = gen.to(dev)
    x = example.to(dev)
    with torch.no_grad(), quiet_jit():
        traced = torch.jit.trace(g, (x,), check_trace=False, strict=True)
        eager_out, traced_out = g(x), traced(x)
    for what, a, b in zip(("magnitude", "phase"), eager_out, traced_out):
        err = (a - b).abs().max().item() / (a.abs().max().item() + 1e-8)
        if err > 1e-4:
            raise RuntimeError(f"export_istftnet: traced {what} differs from eager on {dev} "
                               f"(relative error {err:.2e})")
    return traced


def _write_config(out_dir: str, stft: ISTFT, audio: AudioConfig) -> str:
    """Write ``config.json`` (the iSTFT head's settings and the mel settings); returns its path."""
    raw = {
        "gen_istft_n_fft": stft.n_fft,
        "gen_istft_hop_size": stft.hop_length,
        "gen_istft_win_size": stft.win_length,
        "sampling_rate": audio.sampling_rate,
    }
    raw.update({key: getattr(audio, field) for key, field in MEL_KEYS.items()})
    path = os.path.join(out_dir, CONFIG_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=2)
    return path


def export_istftnet(
    generator: nn.Module,
    stft: ISTFT,
    audio: Optional[AudioConfig],
    out_dir: str | os.PathLike,
    sampling_rate: Optional[int] = None,
    devices: Optional[list[str]] = None,
    example_frames: int = 32,
    cfg: Optional[VocoderConfig] = None,
    step: int = 0,
) -> list[str]:
    """Trace ``generator`` to ``istft_<device>.pt``, write ``config.json`` and, given ``cfg``, ``weights.pt``.

    Weight norm is folded into the weights of a copy first (the live generator is untouched).
    Each traced file is checked against the eager generator on a random mel.

    Args:
        generator: the eager :class:`~model.istftnet.ISTFTNetGenerator` (not a TorchScript one).
        stft: the :class:`~model.istftnet.ISTFT` it was trained with (n_fft, hop, window).
        audio: the mel settings the generator expects; None = unknown (``sampling_rate`` required,
            the shared defaults are recorded with a warning).
        out_dir: directory to write (created).
        sampling_rate: must agree with ``audio`` when both are known.
        devices: devices to trace on; default ["cpu"] plus "cuda" when CUDA is available.
        example_frames: mel frames of the tracing example (the trace works for any T).
        cfg: the vocoder config, stored in ``weights.pt`` with the generator's tensors; None
            writes no ``weights.pt``.
        step: the training step recorded in ``weights.pt``.
    Returns:
        the paths of the files written.
    """
    if isinstance(generator, torch.jit.ScriptModule):
        raise RuntimeError("export_istftnet needs the eager generator, not a loaded TorchScript one")
    audio = _resolve_audio(audio, sampling_rate)
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    # A copy with weight norm folded in; never deepcopy + remove (see folded_copy's docstring).
    gen = generator.folded_copy() if hasattr(generator, "folded_copy") else copy.deepcopy(generator)
    gen = gen.float().eval()
    n_mels = getattr(gen, "n_mels", audio.n_mels)
    example = torch.randn(1, n_mels, example_frames, generator=torch.Generator().manual_seed(0))
    written = []
    for name in devices:
        dev = pick_device(name, what="export_istftnet devices")
        traced = _trace_checked(gen, example, dev)
        path = os.path.join(out_dir, file_name(dev))
        with quiet_jit():
            torch.jit.save(traced, path)
        written.append(path)

    written.append(_write_config(out_dir, stft, audio))
    if cfg is not None:
        path = os.path.join(out_dir, WEIGHTS_NAME)
        save_checkpoint({"format": EXPORT_FORMAT, "format_version": 1, "config": config_to_dict(cfg), "step": step,
                         "generator": {k: v.detach().cpu() for k, v in generator.state_dict().items()}}, path)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# Load
# ------------------------------------------------------------------------------------------------


def load_istftnet(in_dir: str | os.PathLike, device: Device = "cpu") -> tuple[torch.jit.ScriptModule, ISTFT, AudioConfig]:
    """Load an exported directory (ours or an original iSTFTNet export).

    Args:
        in_dir: the export directory.
        device: resolved by :func:`utils.device.pick_device` (an unusable CUDA device is an error).
            When that device's file is missing the other file is loaded onto it, with a warning.
    Returns:
        (traced generator in eval mode, ISTFT, mel settings), both modules on the device.
    Raises:
        FileNotFoundError: no such directory, no config.json, or no istft_*.pt file.
        ISTFTNetDirError: unreadable config.json, a missing/invalid key, a file that is not
            a traced generator, or mel settings that contradict the generator.
    """
    in_dir = os.fspath(in_dir)
    if not os.path.isdir(in_dir):
        raise FileNotFoundError(f"ISTFTNet directory not found: {in_dir}")
    dev = pick_device(device, what="ISTFTNetFE device")
    cfg_path = os.path.join(in_dir, CONFIG_NAME)
    raw = _read_config(cfg_path)
    n_fft, hop = int(raw["gen_istft_n_fft"]), int(raw["gen_istft_hop_size"])
    win = int(raw.get("gen_istft_win_size", n_fft))

    gen = _load_generator(in_dir, dev)
    audio = _audio_from_config(raw, cfg_path, _traced_input_channels(gen))
    stft = ISTFT(n_fft, hop, win).to(dev)
    _probe(gen, stft, audio, os.path.join(in_dir, file_name(dev)), dev)
    return gen, stft, audio


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
            stacklevel=4,
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
    wanted = os.path.join(in_dir, file_name(dev))
    path = wanted
    if not os.path.isfile(wanted):
        others = [os.path.join(in_dir, n) for n in ("istft_cpu.pt", "istft_cuda.pt")]
        others = [p for p in others if os.path.isfile(p)]
        if not others:
            raise FileNotFoundError(f"{in_dir}: no traced generator; expected {file_name(dev)} "
                                    "(istft_cpu.pt and/or istft_cuda.pt)")
        path = others[0]
        warnings.warn(f"{wanted} not found; loading {os.path.basename(path)} onto {dev}", stacklevel=4)
    try:
        with quiet_jit():
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
