"""The schema of ``config/model*.yaml``: the Echolancer model, its data and generation settings.

Its ``audio`` section is :class:`utils.config.audio.AudioConfig`, at the top level like in the
pre-encoder and vocoder configs. Files and saved configs that still have it at
``preprocessing.audio`` are read (moved on reading); ``cfg.preprocessing.audio`` still works and is
the same object as ``cfg.audio``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from utils.config.audio import AudioConfig
from utils.config.core import ConfigError, require

# --------------------------------------------------------------------------------------------
# Model config (config/model.yaml)
# --------------------------------------------------------------------------------------------

Activation = Literal["relu", "gelu", "swiglu", "relu2"]
# How the text encoder knows direction and place on top of ALiBi (see model/layers.py). A symmetric
# |i-j| bias alone makes the encoder mirror-blind, so there is deliberately no "symmetric" choice.
EncoderPosition = Literal["directional", "absolute", "directional_absolute"]
# Attention kernel of full-sequence forwards (training, validation); decoding always runs SDPA.
AttentionBackend = Literal["sdpa", "flex"]


@dataclass
class EncoderConfig:
    hidden: int = 256
    head: int = 4
    layer: int = 4
    dropout: float = 0.1
    forward_expansion: int = 4

    def check(self) -> None:
        require(self.hidden > 0 and self.head > 0 and self.layer > 0, "hidden, head and layer must be positive")
        require(
            self.hidden % self.head == 0,
            f"hidden ({self.hidden}) must be divisible by head ({self.head})",
        )
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        require(self.forward_expansion > 0, "forward_expansion must be positive")


@dataclass
class DecoderConfig(EncoderConfig):
    layer: int = 4
    # Share of teacher-forced audio input tokens replaced by an "unknown" token while training. The
    # next codec token is easy to guess from the previous ones, so a small decoder can lower its loss
    # while barely reading the text; hiding some of its audio context makes the text the reliable cue
    # (the role the always-on pre-net dropout plays in Tacotron). 0 = off.
    token_dropout: float = 0.0
    # Weight of a training-only text-recognition loss: a linear head reads the text back from the
    # decoder's states with CTC (each state names the symbol it is speaking, or blank). The token
    # loss is mostly won inside a sound, from the previous tokens; this one is won only by carrying
    # the attended symbol's identity into the state that predicts the next token. 0 = no head.
    text_ctc_weight: float = 0.0

    def check(self) -> None:
        super().check()
        require(0.0 <= self.token_dropout < 1.0, f"decoder.token_dropout must be in [0, 1), got {self.token_dropout}")
        require(self.text_ctc_weight >= 0.0, f"decoder.text_ctc_weight must be >= 0, got {self.text_ctc_weight}")


@dataclass
class RefEncoderConfig:
    """The small Transformer that turns a reference utterance's codec tokens into a speaker vector."""

    hidden: int = 128
    head: int = 2
    layer: int = 2
    dropout: float = 0.1
    forward_expansion: int = 4

    check = EncoderConfig.check


@dataclass
class ModelSection:
    vocab_size: int = 100
    text_frontend: Literal["chars", "phonemes"] = "chars"  # text ids: characters, or IPA (utils/phonemes.py)
    codebook_size: int = 1000
    # The codec's FSQ levels (config/preencoder.yaml's model.generator.fsq_levels), product =
    # codebook_size. When given, codec tokens that share an FSQ digit share part of their audio
    # embedding and output-head vectors (model.layers.CodeFactors). Empty = a free vector per token:
    # the default here, so a saved config from before the key loads as what it was; config/model.yaml
    # sets [8, 5, 5, 5].
    code_levels: list[int] = field(default_factory=list)
    mel_channels: int = 80
    emotion_input_size: int = 768
    emotion_hidden_sizes: list[int] = field(default_factory=lambda: [256])
    emotion_channels: int = 256
    speaker_channels: int = 32
    multi_speaker: bool = False
    n_speaker: int = 1
    use_alibi: bool = True
    alibi_alpha: float = 1.0
    encoder_position: EncoderPosition = "directional"
    attention_backend: AttentionBackend = "sdpa"
    activation: Activation = "gelu"
    vq_token_mode: bool = False
    vq_vocab_size: int = 1000
    ref_encoder: RefEncoderConfig = field(default_factory=RefEncoderConfig)
    encoder_kv_heads: int = 4
    decoder_kv_heads: int = 4
    stop_head: bool = False
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    # The decoder's special tokens follow the codebook. This is the one place they are defined;
    # the model, the data pipeline and checkpoints all read them from here.
    @property
    def bos_id(self) -> int:
        return self.codebook_size

    @property
    def eos_id(self) -> int:
        return self.codebook_size + 1

    @property
    def pad_id(self) -> int:
        return self.codebook_size + 2

    @property
    def n_audio_vocab(self) -> int:
        return self.codebook_size + 3

    def check(self) -> None:
        for name in ("vocab_size", "codebook_size", "mel_channels", "emotion_input_size",
                     "emotion_channels", "n_speaker"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        require(self.speaker_channels >= 0, "speaker_channels must be >= 0")
        if self.code_levels:
            require(all(n >= 2 for n in self.code_levels), f"code_levels must each be >= 2, got {self.code_levels}")
            require(
                math.prod(self.code_levels) == self.codebook_size,
                f"code_levels {self.code_levels} hold {math.prod(self.code_levels)} codes but codebook_size is "
                f"{self.codebook_size}: give the codec's fsq_levels (their product is its codebook), or [] for none",
            )
        require(all(h > 0 for h in self.emotion_hidden_sizes), "emotion_hidden_sizes must be positive")
        require(
            self.emotion_channels <= self.encoder.hidden,
            f"emotion_channels ({self.emotion_channels}) must be <= encoder.hidden ({self.encoder.hidden})",
        )
        require(self.alibi_alpha > 0, f"alibi_alpha must be > 0, got {self.alibi_alpha}")
        if self.use_alibi and self.encoder_position.startswith("directional"):
            stacks = [("encoder.head", self.encoder.head)]
            if self.vq_token_mode:
                stacks.append(("ref_encoder.head", self.ref_encoder.head))
            for name, heads in stacks:
                require(heads >= 2, f"{name} must be >= 2 for encoder_position '{self.encoder_position}' "
                        "(one head looks left, one right); or use encoder_position: absolute")
        if self.attention_backend == "flex":  # flex_attention has no attention-probability dropout
            drops = [("encoder", self.encoder), ("decoder", self.decoder)] + (
                [("ref_encoder", self.ref_encoder)] if self.vq_token_mode else [])
            for name, part in drops:
                require(part.dropout == 0.0, f"attention_backend flex has no attention dropout: {name}.dropout "
                        f"must be 0.0, got {part.dropout} (or use attention_backend: sdpa)")
        for part, kv in (("encoder", self.encoder_kv_heads), ("decoder", self.decoder_kv_heads)):
            heads = getattr(self, part).head
            require(
                kv > 0 and heads % kv == 0,
                f"{part}_kv_heads ({kv}) must divide {part}.head ({heads}); allowed: "
                + ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0),
            )
        if self.multi_speaker:
            require(self.speaker_channels > 0, "multi_speaker needs speaker_channels > 0")
        if self.vq_token_mode:
            require(self.speaker_channels > 0, "vq_token_mode needs speaker_channels > 0")
            require(
                self.vq_vocab_size >= self.codebook_size,
                f"vq_vocab_size ({self.vq_vocab_size}) must be >= codebook_size ({self.codebook_size}):"
                " reference utterances are codec tokens",
            )


@dataclass
class PreprocessingConfig:
    trim_silence: bool = False
    val_fraction: float = 0.02

    def check(self) -> None:
        require(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")


@dataclass
class DatasetConfig:
    max_text_len: int = 400  # longer utterances are left out of training, with a count
    max_audio_len: int = 1500  # codec tokens (~17 s at 86 tokens/s)
    skip_invalid_files: bool = False  # false: a bad file is an error; true: skipped and counted

    def check(self) -> None:
        require(self.max_text_len > 0 and self.max_audio_len > 0, "max lengths must be positive")


@dataclass
class TrackingConfig:
    """Alignment-tracked decoding (``model/tracking.py``): follow the text position the attention
    has reached, bias each step's attention around it, push it on where it sticks, and allow EOS
    only once it is at the end of the text. Its jump and stuck thresholds come from the training
    data's audio tokens per text token (saved in the checkpoint)."""

    enabled: bool = False
    back: int = 1  # text positions behind the tracked one with no penalty
    forward: int = 3  # ... and ahead of it
    slope: float = 2.0  # nats of penalty per position beyond that band
    stuck_factor: float = 3.0  # stuck after this many times the most tokens per symbol in the data
    end_slack: int = 1  # EOS allowed once the tracked position is this close to the last symbol

    def check(self) -> None:
        require(self.back >= 0 and self.forward >= 0 and self.end_slack >= 0,
                 f"tracking.back, forward and end_slack must be >= 0; got {self.back}, {self.forward}, {self.end_slack}")
        require(self.slope >= 0, f"tracking.slope must be >= 0, got {self.slope}")
        require(self.stuck_factor > 0, f"tracking.stuck_factor must be > 0, got {self.stuck_factor}")


@dataclass
class GenerationConfig:
    """Length bounds of generation, in audio tokens per text token, and the attention window.

    ``null`` takes a length bound from the training data's statistics, which training saves in the
    checkpoint (the smallest and largest ratio seen, widened by ``length_margin``).
    ``attention_window: [back, forward]`` holds each decoding step's cross-attention to the text
    from ``back`` positions before to ``forward`` after the furthest position it has reached
    (``model/alignment.py``); null lets it see all of the text. ``tracking`` is the soft
    alternative (a prior, not a mask; see :class:`TrackingConfig`).
    """

    min_tokens_per_text_token: Optional[float] = None
    max_tokens_per_text_token: Optional[float] = None
    length_margin: float = 1.5  # data-derived bounds: min / margin and max x margin
    attention_window: Optional[list[int]] = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self) -> None:
        w = self.attention_window
        require(not (w is not None and self.tracking.enabled),
                "attention_window and tracking.enabled both steer the attention; choose one")
        require(w is None or (len(w) == 2 and all(isinstance(v, int) and v >= 0 for v in w)),
                f"attention_window must be null or [back, forward], two integers >= 0; got {w}")
        require(self.length_margin >= 1.0, f"length_margin must be >= 1, got {self.length_margin}")
        lo, hi = self.min_tokens_per_text_token, self.max_tokens_per_text_token
        require(lo is None or lo >= 0, f"min_tokens_per_text_token must be >= 0 or null, got {lo}")
        require(hi is None or hi > 0, f"max_tokens_per_text_token must be > 0 or null, got {hi}")
        require(lo is None or hi is None or lo < hi,
                f"min_tokens_per_text_token ({lo}) must be < max_tokens_per_text_token ({hi})")


@dataclass
class ModelConfig:
    model: ModelSection = field(default_factory=ModelSection)
    audio: AudioConfig = field(default_factory=AudioConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        # Code written when the audio settings lived at preprocessing.audio keeps working: the same
        # object, not a copy (and not a field: it is neither saved nor compared).
        self.preprocessing.audio = self.audio

    @staticmethod
    def upgrade(raw: dict, source: str) -> dict:
        """Move ``preprocessing.audio`` (where earlier versions kept it) to the top-level ``audio``."""
        pre = raw.get("preprocessing")
        if not isinstance(pre, dict) or "audio" not in pre:
            return raw
        raw = {**raw, "preprocessing": {k: v for k, v in pre.items() if k != "audio"}}
        if "audio" in raw and raw["audio"] != pre["audio"]:
            raise ConfigError(f"{source}: audio settings given twice (audio and preprocessing.audio) and they "
                              "differ; keep the top-level audio section only")
        raw["audio"] = pre["audio"]
        return raw

    @staticmethod
    def check_saved(raw: dict, source: str) -> None:
        """Refuse a saved config that today's defaults would silently reinterpret.

        Configs saved before ``model.encoder_position`` existed with ``use_alibi: true`` describe a
        text encoder whose only position signal was a symmetric ALiBi bias: it could not tell a
        sentence from its reverse, and no current setting reproduces it.
        """
        section = raw.get("model")
        # Saved configs hold every key; a hand-written partial dict (no use_alibi) is not one.
        if isinstance(section, dict) and section.get("use_alibi") is True and "encoder_position" not in section:
            raise ConfigError(
                f"{source}: model.encoder_position is missing: this model was trained with the symmetric-ALiBi "
                "text encoder of earlier versions, which cannot tell a sentence from its reverse, so it never "
                "learned to read text in order; no current setting reproduces it. Retrain it with this version "
                "(allowed model.encoder_position: directional, absolute, directional_absolute)."
            )

    def check(self) -> None:
        require(
            self.model.mel_channels == self.audio.n_mels,
            f"model.mel_channels ({self.model.mel_channels}) must equal audio.n_mels ({self.audio.n_mels})",
        )
