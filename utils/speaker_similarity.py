"""Speaker similarity: does a clip sound like the same person as a reference recording?

The speaker encoder is Resemblyzer's GE2E voice encoder (a 3-layer LSTM over 40-band mels at
16 kHz, trained for speaker verification on LibriSpeech, VoxCeleb 1 and 2). Its weights,
``pretrained.pt``, ship inside the ``resemblyzer`` wheel on PyPI, so nothing downloads. A clip
becomes one 256-wide, L2-normalised embedding (the mean over 1.6 s windows); the similarity of two
clips is the cosine of their embeddings. The encoder ends in a ReLU, so embeddings are
non-negative and the cosine lies in [0, 1]: a clip against itself is 1, the same voice on another
sentence is typically above 0.8, different voices lower.

    enc = SpeakerEncoder()                       # loads the encoder on the CPU (~1 s)
    e = enc.embed(wav, 22050)                    # (256,) float32
    s = enc.similarity(generated, 22050, reference, 22050)
    s = cosine_similarity(e_generated, e_reference)  # embeddings computed once, compared many times

Install (the ``--no-deps`` is on purpose: resemblyzer's metadata asks for the obsolete ``typing``
backport and ``webrtcvad``, which only builds from source; ``webrtcvad-wheels`` provides the same
``webrtcvad`` module prebuilt)::

    pip install -r requirements-dev.txt -c constraints-ci.txt   # librosa, webrtcvad-wheels
    pip install --no-deps -r requirements-nodeps.txt             # resemblyzer
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import nn

ENCODER_RATE = 16000  # the rate Resemblyzer's mels (and so its weights) were made at
EMBEDDING_SIZE = 256
INSTALL = "pip install --no-deps -r requirements-nodeps.txt (resemblyzer==0.1.4; its dependencies librosa and " \
          "webrtcvad-wheels are in requirements-dev.txt)"


class SpeakerEncoderUnavailable(RuntimeError):
    """Speaker similarity was asked for, but the ``resemblyzer`` package (or one of its imports) is missing."""


def _import_resemblyzer() -> Any:
    try:
        with warnings.catch_warnings():
            # resemblyzer 0.1.4 imports binary_dilation from scipy's deprecated ndimage.morphology
            # alias; the function is the same, the warning is noise for every user of this module.
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
            import resemblyzer.hparams  # noqa: F401  (the encoder's sizes and audio settings)
    except ImportError as e:
        raise SpeakerEncoderUnavailable(
            f"speaker similarity needs the resemblyzer package ({e}): {INSTALL}") from e
    return resemblyzer


def _build_voice_encoder(device: torch.device) -> nn.Module:
    """Resemblyzer's ``VoiceEncoder`` with its shipped weights, loaded with ``weights_only=True``.

    ``VoiceEncoder.__init__`` builds the network and then calls ``torch.load`` on its file without
    ``weights_only``; this project loads every file with ``weights_only=True``. So a subclass builds
    the same layers (from resemblyzer's own hyperparameters) and loads the state dict itself, while
    everything else (``forward``, the 1.6 s windowing of ``embed_utterance``) stays resemblyzer's.
    """
    rz = _import_resemblyzer()
    hp = rz.hparams

    class SafeVoiceEncoder(rz.VoiceEncoder):
        def __init__(self, weights: Path, device: torch.device) -> None:
            nn.Module.__init__(self)  # not VoiceEncoder.__init__: see above
            self.lstm = nn.LSTM(hp.mel_n_channels, hp.model_hidden_size, hp.model_num_layers, batch_first=True)
            self.linear = nn.Linear(hp.model_hidden_size, hp.model_embedding_size)
            self.relu = nn.ReLU()
            checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
            # similarity_weight/bias are the GE2E loss's scale and offset, used only in training.
            state = {k: v for k, v in checkpoint["model_state"].items() if not k.startswith("similarity_")}
            self.load_state_dict(state)  # strict: a changed file fails here, not as silent garbage
            self.device = device
            self.to(device).eval()

    weights = Path(rz.__file__).resolve().parent / "pretrained.pt"
    if not weights.is_file():
        raise SpeakerEncoderUnavailable(f"{weights}: resemblyzer's packaged weights are missing; reinstall: {INSTALL}")
    return SafeVoiceEncoder(weights, device)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two embeddings; 0.0 when either is all zeros (a clip with no signal has no voice).

    Args:
        a: (D,) embedding.  b: (D,) embedding.
    """
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class SpeakerEncoder:
    """Speaker embeddings and their cosine similarity, offline.

    Args:
        device: a torch device for the encoder (a small LSTM: the CPU is fine).
    Raises:
        SpeakerEncoderUnavailable: resemblyzer (or librosa, webrtcvad) is not installed; the
            message names the install command.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self._rz = _import_resemblyzer()
        self.device = torch.device(device)
        self.model = _build_voice_encoder(self.device)
        # What the reports name as the scorer: figures from another encoder are not comparable.
        self.name = f"resemblyzer {importlib.metadata.version('resemblyzer')} VoiceEncoder (GE2E, 16 kHz)"

    def preprocess(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
        """The waveform as the encoder wants it: mono 16 kHz in [-1, 1], quiet clips raised to
        -30 dBFS and long pauses cut (Resemblyzer's own preprocessing, minus its resampler).

        Args:
            wav: (N,) float samples, any rate.  sample_rate: the rate of ``wav``.
        Returns:
            (M,) float32 at ``ENCODER_RATE``; empty when the clip has no signal.
        """
        x = torch.as_tensor(wav, dtype=torch.float32).reshape(-1).cpu()
        if x.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        if sample_rate != ENCODER_RATE:  # the same resampler as the ASR (utils/asr.py)
            x = torchaudio.functional.resample(x, sample_rate, ENCODER_RATE)
        # The VAD converts to 16-bit PCM without clipping: out-of-range samples would wrap around.
        x = x.clamp(-1.0, 1.0).numpy().astype(np.float32)
        if not np.isfinite(x).all() or not np.any(x):
            return np.zeros(0, dtype=np.float32)
        x = self._rz.normalize_volume(x, self._rz.hparams.audio_norm_target_dBFS, increase_only=True)
        trimmed = self._rz.trim_long_silences(x)
        # Where the VAD hears no voice at all (noise, a model's buzz) the clip is kept whole, so it
        # still gets an embedding, and scores low, instead of none.
        return (trimmed if trimmed.size else x).astype(np.float32)

    def embed(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
        """One speaker embedding for a clip.

        Args:
            wav: (N,) float samples in [-1, 1], any sample rate.
            sample_rate: the rate of ``wav``; resampled to 16 kHz here.
        Returns:
            (256,) float32, L2-normalised and non-negative; all zeros for a clip with no signal.
        """
        x = self.preprocess(wav, sample_rate)
        if x.size == 0:
            return np.zeros(EMBEDDING_SIZE, dtype=np.float32)
        e = self.model.embed_utterance(x)
        # An input the ReLU silences entirely normalises 0 / 0: treat it as "no voice" too.
        return e.astype(np.float32) if np.isfinite(e).all() else np.zeros(EMBEDDING_SIZE, dtype=np.float32)

    def similarity(self, generated: torch.Tensor | np.ndarray, generated_rate: int,
                   reference: torch.Tensor | np.ndarray, reference_rate: int) -> float:
        """Cosine similarity of the speaker embeddings of two clips.

        Args:
            generated: (N,) the clip to judge.  generated_rate: its sample rate.
            reference: (M,) a recording of the wanted speaker.  reference_rate: its sample rate.
        Returns:
            In [0, 1]: 1 for the same clip, lower the less alike the voices sound.
        """
        return cosine_similarity(self.embed(generated, generated_rate), self.embed(reference, reference_rate))
