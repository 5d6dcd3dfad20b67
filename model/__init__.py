"""Echolancer model, its building blocks and losses."""

from model.echolancer import DecodeState, Echolancer, EcholancerOutput, EncoderState
from model.loss import EcholancerLoss, LossOutput, MaskedBCE, MaskedCrossEntropy, MaskedMAE

__all__ = [
    "DecodeState",
    "Echolancer",
    "EcholancerLoss",
    "EcholancerOutput",
    "EncoderState",
    "LossOutput",
    "MaskedBCE",
    "MaskedCrossEntropy",
    "MaskedMAE",
]
