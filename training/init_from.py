"""A new run from a trained model's weights (``train.py --init_from``), and parts held fixed (``training.freeze``).

Only the weights come from the source (an inference export or a training checkpoint): the
optimizer, schedule, step, early stopping and RNG start fresh, as in any new run. The source's
model config must equal the new one, with two exceptions that add rows to a table:

- ``model.n_speaker`` may grow: the speaker table keeps the source's rows, new speakers' rows keep
  their fresh initialisation;
- ``model.vocab_size`` may grow (a larger text vocabulary): the same for the text embedding. The
  source's tokenizer symbols must then be the first symbols of the new one, so every old id still
  means the same symbol.

Settings that change neither the weights' shapes nor what they compute at inference (the attention
kernel, dropout) may differ too. Every other difference is refused, naming each key.
"""

from __future__ import annotations

import logging
import os
import typing
from dataclasses import dataclass, field
from typing import Optional

import torch

from model.echolancer import Echolancer
from model.pretrained import resolve_checkpoint_path
from training.resume import check_resume_compatible
from utils.char_tokenizer import CharTokenizer
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.config import ConfigError, ModelConfig, config_from_dict, config_to_dict
from utils.config.train import Freezable

log = logging.getLogger("echolancer.train")

# Config key -> (the table it sizes, the training.freeze part that holds it).
GROWABLE = {"n_speaker": ("speaker_embed.weight", "speaker_embedding"),
            "vocab_size": ("text_embed.embedding.weight", "text_embedding")}
# May differ from the source: same weights, same function at inference.
FREE_KEYS = (("attention_backend",), ("encoder", "dropout"), ("decoder", "dropout"), ("ref_encoder", "dropout"))

# training.freeze names -> Echolancer submodules. The decoder is everything after the text side:
# audio embedding, layers, final norm, output and stop heads. The conditioning projections and the
# emotion encoder are not in any part.
FREEZE_PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("encoder",),
    "decoder": ("audio_embed", "code_factors", "dec_layers", "dec_norm", "head", "stop_head"),
    "text_embedding": ("text_embed",),
    "speaker_embedding": ("speaker_embed",),
}
assert set(FREEZE_PARTS) == set(typing.get_args(Freezable)), "FREEZE_PARTS and utils.config.train.Freezable differ"

HINT = ("--init_from keeps the source's architecture: only model.n_speaker and model.vocab_size may grow (and "
        "attention_backend and dropout change)")


@dataclass
class InitFrom:
    """What :func:`init_from_pretrained` loaded.

    path: the file read (absolute). step: its training step, if it says.
    grown: config key -> (source rows, new rows) for the tables that grew.
    """

    path: str
    step: Optional[int]
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"weights from {self.path}" + (f" (step {self.step})" if self.step is not None else "")]
        parts += [f"model.{k} {old} -> {new} (rows {old}..{new - 1} freshly initialised)"
                  for k, (old, new) in self.grown.items()]
        return "--init_from: " + "; ".join(parts) + "; optimizer, schedule, step, early stopping and RNG start fresh"


def _drop(section: dict, path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        section = section.get(key, {})
    section.pop(path[-1], None)


def _read_source(source: str, output_dir: Optional[str]) -> tuple[str, dict]:
    """The source's resolved path and contents, refused when missing, inside ``output_dir`` or config-less."""
    if not os.path.exists(source):
        raise CheckpointError(f"--init_from {source}: no such file or directory (give a run's export/ directory, "
                              "an echolancer.pt, a checkpoint file or a ckpt/ directory)")
    path = os.path.abspath(resolve_checkpoint_path(source))
    if output_dir is not None and os.path.commonpath([path, os.path.abspath(output_dir)]) == os.path.abspath(output_dir):
        raise ConfigError(f"--init_from {path} lies inside --output_dir {output_dir}, which the new run writes "
                          "(its export would replace the source): choose another --output_dir")
    ck = load_checkpoint(path, map_location="cpu")
    if not isinstance(ck.get("model"), dict) or ck.get("model_config") is None:
        raise CheckpointError(f"--init_from {path}: not an inference export or training checkpoint (no model and "
                              "model_config); a raw state dict carries no config to check the architecture against")
    return path, ck


def _grown_tables(path: str, saved: dict, current: dict, target: dict) -> dict[str, tuple[int, int]]:
    """``key -> (old, new)`` of the tables that grow; sets ``saved[key]`` to the current size (so the
    architecture check compares the rest), refuses a table that would shrink.

    Args:
        saved, current: the source's and this run's ``model`` sections.
        target: the new model's state dict.
    """
    grown: dict[str, tuple[int, int]] = {}
    for key, (table, _) in GROWABLE.items():
        old, new = int(saved[key]), int(current[key])
        saved[key] = current[key]  # decided here; the rest must match exactly
        if table not in target:  # sizes nothing (n_speaker of a model without a speaker table)
            continue
        if new < old:
            raise ConfigError(f"--init_from {path}: model.{key} is {new} but the source has {old}: a table can grow "
                              f"for fine-tuning, not shrink (set model.{key} >= {old})")
        if new > old:
            grown[key] = (old, new)
    return grown


def init_from_pretrained(model: Echolancer, model_cfg: ModelConfig, tokenizer: CharTokenizer, source: str,
                         output_dir: Optional[str] = None) -> InitFrom:
    """Copy a trained model's weights into ``model`` (built from ``model_cfg``), growing tables as allowed.

    Args:
        source: an inference export (file, ``export/`` or a run directory) or a checkpoint file or
            ``ckpt/`` directory (its newest), as :func:`model.pretrained.resolve_checkpoint_path` reads them.
        tokenizer: the new run's tokenizer (checked against the source's symbols).
        output_dir: the new run's output directory; a source inside it is refused (the run writes there).
    Raises:
        CheckpointError: missing or unreadable source, or one without a model config.
        ConfigError: an architecture that differs, or a table that would shrink.
    """
    path, ck = _read_source(source, output_dir)
    # Through the schema, like resume: keys added since the source was written take their defaults.
    saved = config_to_dict(config_from_dict(ModelConfig, ck["model_config"], f"{path} (model_config)"))["model"]
    current = config_to_dict(model_cfg)["model"]

    target = model.state_dict()
    grown = _grown_tables(path, saved, current, target)
    for section in (saved, current):
        for key_path in FREE_KEYS:
            _drop(section, key_path)
    check_resume_compatible(path, {"model": (saved, current)}, hint=HINT)

    old_symbols = list((ck.get("tokenizer") or {}).get("symbols", []))
    if old_symbols and list(tokenizer.symbols[:len(old_symbols)]) != old_symbols:
        raise ConfigError(f"--init_from {path}: the source's {len(old_symbols)} text symbols are not the first "
                          f"symbols of this run's tokenizer ({len(tokenizer)}): its text ids would mean other symbols")

    sd = ck["model"]
    rows = {GROWABLE[k][0]: old for k, (old, _) in grown.items()}
    misfit = sorted(set(target) ^ set(sd)) + [
        k for k in target if k in sd and k not in rows and tuple(sd[k].shape) != tuple(target[k].shape)]
    if misfit:
        raise CheckpointError(f"--init_from {path}: its weights do not fit its own model_config (keys "
                              f"{', '.join(misfit[:4])}{' ...' if len(misfit) > 4 else ''}); the file was edited or damaged")
    with torch.no_grad():  # state_dict() tensors share the parameters' storage
        for name, dst in target.items():
            if name in rows:
                dst[:rows[name]].copy_(sd[name])
            else:
                dst.copy_(sd[name])
    step = ck.get("step")
    return InitFrom(path, int(step) if step is not None else None, grown)


def freeze_parts(model: Echolancer, parts: list[str], grown: Optional[dict[str, tuple[int, int]]] = None) -> int:
    """Set ``requires_grad=False`` on the named parts (``training.freeze``); returns the number of
    parameters frozen. A part the model lacks, or a table that grew (its new rows would never
    train), is a :class:`ConfigError`."""
    grown = grown or {}
    for key, (_, part) in GROWABLE.items():
        if part in parts and key in grown:
            old, new = grown[key]
            raise ConfigError(f"training.freeze: {part} cannot be frozen while model.{key} grows from {old} to {new}: "
                              "the new rows would keep their random initialisation")
    n = 0
    for part in parts:
        modules = [m for m in (getattr(model, name) for name in FREEZE_PARTS[part]) if m is not None]
        if not modules:
            have = [p for p, names in FREEZE_PARTS.items() if any(getattr(model, x) is not None for x in names)]
            raise ConfigError(f"training.freeze: this model has no {part} (model.multi_speaker is false); "
                              f"allowed here: {', '.join(have)}")
        for m in modules:
            for p in m.parameters():
                n += p.numel() if p.requires_grad else 0
                p.requires_grad_(False)
    return n
