"""Echolancer model, its building blocks and losses.

The names below are imported on first use (PEP 562), so a submodule that needs none of them,
such as ``model.deploy`` (the exported chain, run with torch alone), loads without the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DecodeState": "model.echolancer",
    "Echolancer": "model.echolancer",
    "EcholancerOutput": "model.echolancer",
    "EncoderState": "model.echolancer",
    "EcholancerLoss": "model.loss",
    "LossOutput": "model.loss",
    "MaskedBCE": "model.loss",
    "MaskedCrossEntropy": "model.loss",
    "MaskedMAE": "model.loss",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
