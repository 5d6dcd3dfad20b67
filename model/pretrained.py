"""Rebuild a ready-to-use Echolancer from an inference export or a checkpoint alone.

    loaded = load_echolancer("outputs/run/export")        # the inference export (echolancer.pt)
    loaded = load_echolancer("outputs/run/ckpt")          # a file, or a directory -> newest
    loaded.model, loaded.tokenizer, loaded.model_config, loaded.train_config, loaded.step

An *inference export* (:func:`export_echolancer`, ``<output_dir>/export/echolancer.pt``) holds only
what inference needs: ``format`` ("echolancer-export"), ``format_version``, the weights, the model
config, the tokenizer's symbols, the special token ids and the step; tensors and plain values only
(``torch.load(weights_only=True)``). A training checkpoint (``utils/checkpoint.py``) carries everything: the state dict, the model and
training configs as plain dicts, the tokenizer's symbols and the special token ids. A *raw* state
dict (just parameter names -> tensors, e.g. exported by hand) carries no config, so it needs
``model_config_path``; its tokenizer is then the default ``CharTokenizer``.

Every mismatch is an error that names the checkpoint and what disagrees, before any weight is
copied: config vs. weights (missing / unexpected keys, shapes), special token ids, tokenizer vs.
the model's text vocabulary, and a ``--model_config`` file that contradicts the checkpoint's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from model.echolancer import Echolancer
from model.generation_defaults import configure_generation
from utils.char_tokenizer import CharTokenizer
from utils.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from utils.config import ConfigError, ModelConfig, TrainConfig, config_from_dict, config_to_dict, load_config

SUPPORTED_FORMAT_VERSIONS = (1,)
EXPORT_FORMAT = "echolancer-export"
EXPORT_NAME = "echolancer.pt"
# Prefixes that wrappers add to parameter names: torch.compile and DistributedDataParallel.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass
class LoadedModel:
    """A model in eval mode on the requested device, with what it was trained with.

    step: the training step of the checkpoint, or None for a raw state dict.
    path: the checkpoint file actually read (the newest one when a directory was given).
    """

    model: Echolancer
    tokenizer: CharTokenizer
    model_config: ModelConfig
    train_config: Optional[TrainConfig]
    step: Optional[int]
    path: str


def resolve_checkpoint_path(path_or_dir: str | os.PathLike) -> str:
    """A file as given; a directory: its inference export (``echolancer.pt``), else its newest
    ``ckpt_<step>.pt``; a run's output directory: ``export/echolancer.pt``."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        for candidate in (os.path.join(path, EXPORT_NAME), os.path.join(path, "export", EXPORT_NAME)):
            if os.path.isfile(candidate):
                return candidate
        newest = latest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"{path}: no inference export ({EXPORT_NAME}) and no checkpoint files "
                                  "(ckpt_<step>.pt) in this directory")
        return newest
    return path


def export_echolancer(model: Echolancer, model_cfg: ModelConfig, tokenizer: CharTokenizer, out_dir: str,
                      step: Optional[int] = None, length_stats: Optional[dict] = None) -> str:
    """Write the inference export ``<out_dir>/echolancer.pt`` (atomically) and return its path.

    No optimizer, scheduler or RNG state: a fraction of a training checkpoint's size, and all a
    user of the model needs. :func:`load_echolancer` reads it back (file or directory).
    """
    sd = _strip_wrapper_prefixes({k: v.detach().cpu() for k, v in model.state_dict().items()})
    state = {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "model": sd,
        "model_config": config_to_dict(model_cfg),
        "tokenizer": tokenizer.to_dict(),
        "special_tokens": {"codebook_size": model.codebook_size, "bos_id": model.bos_id, "eos_id": model.eos_id,
                           "pad_id": model.pad_id},
        "step": step,
        "length_stats": length_stats,  # the training data's audio-per-text ratios (generation bounds)
    }
    path = os.path.join(out_dir, EXPORT_NAME)
    save_checkpoint(state, path)
    return path


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _strip_wrapper_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in _WRAPPER_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            flat.update(_flatten(v, key))
        else:
            flat[key] = v
    return flat


def _check_same_config(ckpt_cfg: ModelConfig, file_cfg: ModelConfig, path: str, cfg_path: str) -> None:
    a, b = _flatten(config_to_dict(ckpt_cfg)), _flatten(config_to_dict(file_cfg))
    diffs = [f"{k} (checkpoint {a[k]!r}, file {b[k]!r})" for k in a if a[k] != b.get(k)]
    if diffs:
        raise ConfigError(
            f"{path} carries its own model config and {cfg_path} contradicts it at: "
            + "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "")
            + ". Drop --model_config: it is only needed for raw state dicts."
        )


def _check_weights(model: Echolancer, sd: dict[str, Tensor], path: str, cfg_source: str) -> None:
    """Compare names and shapes first, so the error says what disagrees rather than a torch dump."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def few(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

    parts = []
    if shapes:
        parts.append(f"shape mismatches: {few(shapes)}")
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    raise CheckpointError(
        f"{path}: the weights do not fit the model built from {cfg_source} — " + "; ".join(parts)
        + ". The checkpoint comes from a different (incompatible) model config."
    )


def _check_special_tokens(model: Echolancer, special: Any, path: str) -> None:
    if special is None:
        return
    ours = {"codebook_size": model.codebook_size, "bos_id": model.bos_id, "eos_id": model.eos_id, "pad_id": model.pad_id}
    if not isinstance(special, dict):
        raise CheckpointError(f"{path}: 'special_tokens' must be a dict like {ours}, got {type(special).__name__}")
    wrong = {k: v for k, v in special.items() if k in ours and int(v) != ours[k]}
    if wrong:
        raise CheckpointError(
            f"{path}: special token ids {wrong} differ from this code's layout {ours}; "
            "the checkpoint was written with an incompatible token layout"
        )


def _split_checkpoint(state: Any, path: str) -> tuple[dict[str, Tensor], dict]:
    """The model's state dict (wrapper prefixes stripped) and the checkpoint's other entries.

    Returns:
        ``(sd, meta)``; ``meta`` is the whole checkpoint, or ``{}`` for a bare state dict (which
        carries no config, tokenizer, step, ...).
    """
    if _is_state_dict(state):
        raw_sd: Any = state  # a bare state dict
    elif "model" in state:
        raw_sd = state["model"]
    else:
        raise CheckpointError(
            f"{path}: neither a training checkpoint (no 'model' key; keys: {sorted(state)[:8]}) "
            "nor a raw state dict (parameter names -> tensors)"
        )
    if not _is_state_dict(raw_sd):
        raise CheckpointError(f"{path}: 'model' must map parameter names to tensors")
    meta = {} if raw_sd is state else state
    version = meta.get("format_version")
    if version is not None and version not in SUPPORTED_FORMAT_VERSIONS:
        raise CheckpointError(
            f"{path}: format_version {version} is not supported (supported: {SUPPORTED_FORMAT_VERSIONS})"
        )
    return _strip_wrapper_prefixes(raw_sd), meta


def _model_config(meta: dict, file_cfg: Optional[ModelConfig], path: str,
                  model_config_path: Optional[str | os.PathLike]) -> tuple[ModelConfig, str]:
    """The model config (the checkpoint's own, else the YAML's) and where it came from, for messages."""
    if "model_config" in meta:
        cfg = config_from_dict(ModelConfig, meta["model_config"], source=f"{path} (model_config)")
        if file_cfg is not None:
            _check_same_config(cfg, file_cfg, path, os.fspath(model_config_path))
        return cfg, "the checkpoint's model_config"
    if file_cfg is not None:
        return file_cfg, os.fspath(model_config_path)
    raise ConfigError(
        f"{path} is a raw state dict without a model config: pass the model YAML it was trained "
        "with (--model_config config/model.yaml)"
    )


def _tokenizer(meta: dict, cfg: ModelConfig, path: str) -> CharTokenizer:
    """The checkpoint's tokenizer (the default one when it has none), checked against the vocab size."""
    tok_dict = meta.get("tokenizer")
    tokenizer = CharTokenizer.from_dict(tok_dict) if tok_dict is not None else CharTokenizer()
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} symbols but model.vocab_size is "
            f"{cfg.model.vocab_size}; the text embedding cannot index them"
        )
    return tokenizer


def load_echolancer(
    checkpoint_path_or_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    model_config_path: Optional[str | os.PathLike] = None,
) -> LoadedModel:
    """Load a model, its tokenizer and configs from a checkpoint file or a ``ckpt/`` directory.

    Args:
        checkpoint_path_or_dir: an inference export or checkpoint file, or a directory (see
            :func:`resolve_checkpoint_path`).
        device: where to put the model.
        model_config_path: the model YAML, required for a raw state dict; for a full checkpoint
            it may be given but must agree with the checkpoint's own config.
    Raises:
        CheckpointError: unreadable file, incompatible weights or token layout.
        ConfigError: missing/invalid/contradicting model config.
    """
    path = resolve_checkpoint_path(checkpoint_path_or_dir)
    state = load_checkpoint(path, map_location="cpu")
    file_cfg = load_config(model_config_path, schema=ModelConfig) if model_config_path is not None else None
    sd, meta = _split_checkpoint(state, path)
    cfg, cfg_source = _model_config(meta, file_cfg, path, model_config_path)
    train_cfg = None
    if meta.get("train_config") is not None:
        train_cfg = config_from_dict(TrainConfig, meta["train_config"], source=f"{path} (train_config)")
    tokenizer = _tokenizer(meta, cfg, path)

    model = Echolancer.from_config(cfg)
    _check_special_tokens(model, meta.get("special_tokens"), path)
    _check_weights(model, sd, path, cfg_source)
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    configure_generation(model, cfg.generation, meta.get("length_stats"))
    step = int(meta["step"]) if meta.get("step") is not None else None
    return LoadedModel(model, tokenizer, cfg, train_cfg, step, path)
