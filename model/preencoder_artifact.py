"""The exported pre-encoder: how it is written and how it is read back, in one place.

An export directory (docs/DESIGN.md "Exported component formats") holds

    model_cpu.pt        TorchScript module with ``encode(mel (B, T, C), mask)`` and ``decode(indices, mask)``
    model_cuda.pt       the same scripted on a GPU (written when CUDA is available)
    model_config.yaml   the pre-encoder config; at least ``model.mel_channels`` and
                        ``model.generator.fsq_levels``; our exports add ``audio`` and ``downsample``
    weights.pt          ``format`` "preencoder-export", ``format_version``, ``config``, ``model``
                        (tensors and plain values only: ``torch.load(weights_only=True)``)

:func:`export_preencoder` writes it, :func:`load_preencoder` reads the TorchScript side (ours and
the original exports, which lack ``audio`` and ``downsample``: those fall back to the shared
defaults, with a warning for the audio settings) and :func:`model_from_checkpoint` rebuilds the
eager model from ``weights.pt`` or a training checkpoint. ``scripted_preencoder.ScriptedPreEncoder``
is the front end over :func:`load_preencoder`.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import torch
import yaml

from model.preencoder import PreEncoder, lengths_to_mask
from utils.audio import make_audio_config
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from utils.config import AudioConfig, ConfigError, config_from_dict, config_to_dict
from utils.config.preencoder import PreEncoderConfig
from utils.device import Device, pick_device

CONFIG_NAME = "model_config.yaml"
EXPORT_FORMAT = "preencoder-export"
CPU_FILE, CUDA_FILE = "model_cpu.pt", "model_cuda.pt"


class PreEncoderDirError(ValueError):
    """A pre-encoder directory that cannot be used as it is; the message names the file and key."""


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_preencoder(model: PreEncoder, cfg: PreEncoderConfig, out_dir: str) -> list[str]:
    """Write the export directory: TorchScript ``model_cpu.pt`` (+ ``model_cuda.pt``),
    ``model_config.yaml``, and ``weights.pt`` (``format`` "preencoder-export", ``format_version``,
    ``model`` state dict, ``config`` as a plain dict; ``torch.load(weights_only=True)``-loadable).

    Each saved module is loaded back and must give the eager model's codes and mels on a probe
    batch, or this raises: an export that silently differs is worse than none.

    Returns:
        the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    eager = copy.deepcopy(model).float().cpu().eval()
    written = []
    targets = [("cpu", CPU_FILE)] + ([("cuda", CUDA_FILE)] if torch.cuda.is_available() else [])
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 37, eager.mel_channels, generator=g) * cfg.model.generator.mel_std + cfg.model.generator.mel_mean
    probe_mask = lengths_to_mask(torch.tensor([37, 21]), 37)
    with torch.no_grad():
        ref_idx = eager.encode(probe, probe_mask)
        ref_mel = eager.decode(ref_idx, eager.token_mask(probe_mask))
    for device, name in targets:
        path = os.path.join(out_dir, name)
        scripted = torch.jit.script(copy.deepcopy(eager).to(device))
        torch.jit.save(scripted, path)
        loaded = torch.jit.load(path, map_location=device)
        with torch.no_grad():
            idx = loaded.encode(probe.to(device), probe_mask.to(device)).cpu()
            mel = loaded.decode(ref_idx.to(device), eager.token_mask(probe_mask).to(device)).cpu()
        # CUDA kernels may round differently, so only the CPU export must match bit for bit.
        same = torch.equal(idx, ref_idx) if device == "cpu" else float((idx == ref_idx).float().mean()) > 0.99
        if not same or not torch.allclose(mel, ref_mel, atol=1e-3, rtol=1e-4):
            raise RuntimeError(f"export check failed: {path} disagrees with the eager model on a probe batch")
        written.append(path)
    cfg_path = os.path.join(out_dir, CONFIG_NAME)
    with open(cfg_path, "w", encoding="utf-8") as f:
        f.write("# Exported FSQ pre-encoder; load with scripted_preencoder.ScriptedPreEncoder(<this dir>).\n")
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
    written.append(cfg_path)
    weights_path = os.path.join(out_dir, "weights.pt")
    save_checkpoint({"format": EXPORT_FORMAT, "format_version": 1, "config": config_to_dict(cfg),
                     "model": {k: v.detach().cpu() for k, v in eager.state_dict().items()}}, weights_path)
    written.append(weights_path)
    return written


def model_from_checkpoint(path_or_dir: str) -> tuple[PreEncoder, PreEncoderConfig, int]:
    """Rebuild the eager model from a training checkpoint (file or directory: newest) or ``weights.pt``."""
    state = load_checkpoint(path_or_dir)
    if state.get("kind") != "preencoder" and state.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path_or_dir}: neither a pre-encoder checkpoint nor its weights.pt export "
                              f"(kind={state.get('kind')!r})")
    cfg = config_from_dict(PreEncoderConfig, state["config"], f"{path_or_dir} (stored config)")
    model = PreEncoder.from_config(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, int(state.get("step") or 0)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


def _get(raw: dict, dotted: str, path: str):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PreEncoderDirError(f"{path}: missing key '{dotted}'")
        node = node[part]
    return node


def read_preencoder_config(model_dir: str) -> tuple[int, list[int], int, AudioConfig]:
    """``(mel_channels, fsq_levels, downsample, audio)`` from ``<model_dir>/model_config.yaml``."""
    path = os.path.join(model_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise PreEncoderDirError(f"{model_dir}: no {CONFIG_NAME} (expected model_cpu.pt and {CONFIG_NAME})")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise PreEncoderDirError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise PreEncoderDirError(f"{path}: expected a mapping at the top level")
    mel_channels = _get(raw, "model.mel_channels", path)
    levels = _get(raw, "model.generator.fsq_levels", path)
    if isinstance(mel_channels, bool) or not isinstance(mel_channels, int) or mel_channels <= 0:
        raise PreEncoderDirError(f"{path}: 'model.mel_channels' must be a positive integer, got {mel_channels!r}")
    if not isinstance(levels, list) or not levels or not all(isinstance(v, int) and v >= 2 for v in levels):
        raise PreEncoderDirError(f"{path}: 'model.generator.fsq_levels' must be a list of integers >= 2, got {levels!r}")
    downsample = raw["model"]["generator"].get("downsample", 1)
    # The project's exports write ``audio``; a model-config style ``preprocessing.audio`` is accepted too.
    audio_raw = raw.get("audio")
    if audio_raw is None and isinstance(raw.get("preprocessing"), dict):
        audio_raw = raw["preprocessing"].get("audio")
    if audio_raw is None:
        warnings.warn(f"{path}: no audio settings recorded; assuming the shared defaults "
                      f"({AudioConfig()}); a pre-encoder trained on other mels will sound wrong", stacklevel=4)
        audio = AudioConfig(n_mels=mel_channels)
    else:
        try:
            audio = make_audio_config(audio_raw, f"{path} (audio)")
        except ConfigError as e:
            raise PreEncoderDirError(str(e)) from None
    if audio.n_mels != mel_channels:
        raise PreEncoderDirError(f"{path}: audio.n_mels ({audio.n_mels}) differs from model.mel_channels ({mel_channels})")
    return mel_channels, list(levels), int(downsample), audio


@dataclass
class LoadedPreEncoder:
    """What :func:`load_preencoder` read: the scripted module and the directory's settings.

    Args:
        module: the loaded TorchScript module (``encode``/``decode``), in eval mode on ``device``.
        path: the ``.pt`` file it came from.
        mel_channels, fsq_levels, downsample, audio: from ``model_config.yaml``.
        device: where ``module`` lives.
    """

    module: torch.jit.ScriptModule
    path: str
    mel_channels: int
    fsq_levels: list[int]
    downsample: int
    audio: AudioConfig
    device: torch.device


def load_preencoder(model_dir: str | os.PathLike, device: Device = "cpu") -> LoadedPreEncoder:
    """Load an export directory's TorchScript pre-encoder onto ``device``.

    Args:
        model_dir: the export directory.
        device: resolved by :func:`utils.device.pick_device` (an unusable CUDA device is an error).
            On CUDA ``model_cuda.pt`` is preferred, else ``model_cpu.pt`` is mapped onto the GPU.
    Raises:
        PreEncoderDirError: no such directory, or a config or module file that cannot be used.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise PreEncoderDirError(f"pre-encoder directory not found: {model_dir}")
    mel_channels, levels, downsample, audio = read_preencoder_config(model_dir)
    dev = pick_device(device, what="ScriptedPreEncoder device")
    cuda_file = os.path.join(model_dir, CUDA_FILE)
    cpu_file = os.path.join(model_dir, CPU_FILE)
    path = cuda_file if dev.type == "cuda" and os.path.isfile(cuda_file) else cpu_file
    if not os.path.isfile(path):
        raise PreEncoderDirError(f"{model_dir}: missing {CPU_FILE} (the TorchScript pre-encoder)")
    try:
        module = torch.jit.load(path, map_location=dev).eval()
    except RuntimeError as e:
        raise PreEncoderDirError(f"{path}: not a loadable TorchScript file ({str(e).splitlines()[0]})") from e
    for method in ("encode", "decode"):
        if not hasattr(module, method):
            raise PreEncoderDirError(f"{path}: the scripted module has no '{method}' method")
    # Our own exports carry their levels; a disagreement with the YAML means a mixed-up directory.
    stored = getattr(module, "fsq_levels", None)
    if stored is not None and list(stored) != levels:
        raise PreEncoderDirError(f"{model_dir}: {CONFIG_NAME} says fsq_levels {levels} but "
                                 f"{os.path.basename(path)} was exported with {list(stored)}")
    return LoadedPreEncoder(module, path, mel_channels, levels, downsample, audio, dev)
