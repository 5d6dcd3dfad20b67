"""One validated config object per YAML file.

Every YAML file is read into a tree of dataclasses (the *schema*). Reading checks, once:
unknown keys, value types (YAML reads ``1e-6`` as a string, so a float field that receives a
string is an error with a hint), allowed values, and cross-field consistency. Errors name the
file, the dotted key, and what is allowed.

    cfg = load_config("config/model.yaml", ["model.decoder.layer=8"])
    cfg.model.decoder.layer  # -> 8
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


# --------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a float", bool: "true/false", str: "a string"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (int -> float, dict -> dataclass)."""

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{source}: '{key}' must be {_type_name(tp)}, got {value!r} "
            f"({type(value).__name__}){extra}"
        )

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError:
                continue  # try the next member; the error below names the whole union
        raise fail()
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail()
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise fail()
        return [_convert(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise fail()
        return _build(tp, value, key, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                hint = " (YAML reads 1e-6 as a string: write 1.0e-6)"
            raise fail(hint)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise TypeError(f"unsupported schema type {tp!r} for {key}")


def _build(schema: type, raw: dict, prefix: str, source: str):
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"{source}: unknown key '{_join(prefix, unknown[0])}' in {where}; "
            f"allowed keys: {', '.join(names)}"
        )
    kwargs = {k: _convert(v, hints[k], _join(prefix, k), source) for k, v in raw.items()}
    obj = schema(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            where = f"'{prefix}'" if prefix else "top level"
            raise ConfigError(f"{source}: {where}: {e}") from None
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def schema_has_key(schema: type, dotted: str) -> bool:
    """True if ``dotted`` (e.g. ``"model.decoder.layer"``) names a field of ``schema``."""
    tp: Any = schema
    for part in dotted.split("."):
        while typing.get_origin(tp) in (Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return True


def apply_overrides(raw: dict, overrides: list[str], schema: type, source: str) -> dict:
    """Apply ``"dotted.key=value"`` strings to a raw YAML dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like dotted.key=value")
        dotted, text = item.split("=", 1)
        dotted = dotted.strip()
        if not schema_has_key(schema, dotted):
            raise ConfigError(f"override '{item}': '{dotted}' is not a key of {source}")
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(text)
    return raw


def config_from_dict(schema: type, raw: dict, source: str = "<dict>"):
    """Build and validate a config from a plain dict (e.g. one stored in a checkpoint)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    check_saved = getattr(schema, "check_saved", None)
    if check_saved is not None:  # what an older version saved may mean something else today
        check_saved(raw, source)
    return _build(schema, raw, "", source)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _read_yaml(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path, overrides: Optional[list[str]] = None, schema: Optional[type] = None):
    """Read a YAML file into its validated config object.

    Args:
        path: the YAML file.
        overrides: ``"dotted.key=value"`` strings applied before validation.
        schema: the dataclass to build; by default chosen from the file's top-level keys
            (``model`` -> :class:`ModelConfig`, ``training``/``optimizer`` -> :class:`TrainConfig`).
    """
    raw = _read_yaml(path)
    if schema is None:
        schema = _guess_schema(raw, str(path))
    apply_overrides(raw, list(overrides or []), schema, str(path))
    return _build(schema, raw, "", str(path))


def load_configs(
    model_path, train_path, overrides: Optional[list[str]] = None
) -> tuple[ModelConfig, TrainConfig]:
    """Load the model and training configs, routing each override to the config that has its key."""
    model_over, train_over = [], []
    for item in overrides or []:
        dotted = item.split("=", 1)[0].strip()
        if schema_has_key(ModelConfig, dotted):
            model_over.append(item)
        elif schema_has_key(TrainConfig, dotted):
            train_over.append(item)
        else:
            raise ConfigError(
                f"override '{item}': '{dotted}' is a key of neither {model_path} nor {train_path}"
            )
    return (
        load_config(model_path, model_over, ModelConfig),
        load_config(train_path, train_over, TrainConfig),
    )


def _guess_schema(raw: dict, source: str) -> type:
    if "model" in raw:
        return ModelConfig
    if "training" in raw or "optimizer" in raw:
        return TrainConfig
    raise ConfigError(
        f"{source}: cannot tell which config this is; expected a 'model' section (model config) "
        f"or 'training'/'optimizer' sections (training config)"
    )


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# --------------------------------------------------------------------------------------------
# Model config (config/model.yaml)
# --------------------------------------------------------------------------------------------

Activation = Literal["relu", "gelu", "swiglu", "relu2"]
# How the text encoder knows direction and place on top of ALiBi (see model/layers.py). A symmetric
# |i-j| bias alone makes the encoder mirror-blind, so there is deliberately no "symmetric" choice.
EncoderPosition = Literal["directional", "absolute", "directional_absolute"]


@dataclass
class EncoderConfig:
    hidden: int = 256
    head: int = 4
    layer: int = 4
    dropout: float = 0.1
    forward_expansion: int = 4

    def check(self) -> None:
        _require(self.hidden > 0 and self.head > 0 and self.layer > 0, "hidden, head and layer must be positive")
        _require(
            self.hidden % self.head == 0,
            f"hidden ({self.hidden}) must be divisible by head ({self.head})",
        )
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _require(self.forward_expansion > 0, "forward_expansion must be positive")


@dataclass
class DecoderConfig(EncoderConfig):
    layer: int = 4


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
            _require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _require(self.speaker_channels >= 0, "speaker_channels must be >= 0")
        _require(all(h > 0 for h in self.emotion_hidden_sizes), "emotion_hidden_sizes must be positive")
        _require(
            self.emotion_channels <= self.encoder.hidden,
            f"emotion_channels ({self.emotion_channels}) must be <= encoder.hidden ({self.encoder.hidden})",
        )
        _require(self.alibi_alpha > 0, f"alibi_alpha must be > 0, got {self.alibi_alpha}")
        if self.use_alibi and self.encoder_position.startswith("directional"):
            stacks = [("encoder.head", self.encoder.head)]
            if self.vq_token_mode:
                stacks.append(("ref_encoder.head", self.ref_encoder.head))
            for name, heads in stacks:
                _require(heads >= 2, f"{name} must be >= 2 for encoder_position '{self.encoder_position}' "
                         "(one head looks left, one right); or use encoder_position: absolute")
        for part, kv in (("encoder", self.encoder_kv_heads), ("decoder", self.decoder_kv_heads)):
            heads = getattr(self, part).head
            _require(
                kv > 0 and heads % kv == 0,
                f"{part}_kv_heads ({kv}) must divide {part}.head ({heads}); allowed: "
                + ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0),
            )
        if self.multi_speaker:
            _require(self.speaker_channels > 0, "multi_speaker needs speaker_channels > 0")
        if self.vq_token_mode:
            _require(self.speaker_channels > 0, "vq_token_mode needs speaker_channels > 0")
            _require(
                self.vq_vocab_size >= self.codebook_size,
                f"vq_vocab_size ({self.vq_vocab_size}) must be >= codebook_size ({self.codebook_size}):"
                " reference utterances are codec tokens",
            )


@dataclass
class AudioConfig:
    """The one shared audio definition (DESIGN.md): HiFi-GAN-style log-mel."""

    sampling_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0

    def check(self) -> None:
        _require(self.win_length <= self.n_fft, "win_length must be <= n_fft")
        _require(self.hop_length > 0 and self.n_mels > 0, "hop_length and n_mels must be positive")
        _require(
            0 <= self.fmin < self.fmax <= self.sampling_rate / 2,
            f"need 0 <= fmin < fmax <= sampling_rate/2, got fmin={self.fmin}, fmax={self.fmax}",
        )


@dataclass
class PreprocessingConfig:
    audio: AudioConfig = field(default_factory=AudioConfig)
    trim_silence: bool = False
    val_fraction: float = 0.02

    def check(self) -> None:
        _require(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")


@dataclass
class DatasetConfig:
    max_text_len: int = 400  # longer utterances are left out of training, with a count
    max_audio_len: int = 1500  # codec tokens (~17 s at 86 tokens/s)
    skip_invalid_files: bool = False  # false: a bad file is an error; true: skipped and counted

    def check(self) -> None:
        _require(self.max_text_len > 0 and self.max_audio_len > 0, "max lengths must be positive")


@dataclass
class GenerationConfig:
    """Length bounds of generation, in audio tokens per text token.

    ``null`` takes the bound from the training data's statistics, which training saves in the
    checkpoint (the smallest and largest ratio seen, widened by ``length_margin``).
    """

    min_tokens_per_text_token: Optional[float] = None
    max_tokens_per_text_token: Optional[float] = None
    length_margin: float = 1.5  # data-derived bounds: min / margin and max x margin

    def check(self) -> None:
        _require(self.length_margin >= 1.0, f"length_margin must be >= 1, got {self.length_margin}")
        lo, hi = self.min_tokens_per_text_token, self.max_tokens_per_text_token
        _require(lo is None or lo >= 0, f"min_tokens_per_text_token must be >= 0 or null, got {lo}")
        _require(hi is None or hi > 0, f"max_tokens_per_text_token must be > 0 or null, got {hi}")
        _require(lo is None or hi is None or lo < hi,
                 f"min_tokens_per_text_token ({lo}) must be < max_tokens_per_text_token ({hi})")


@dataclass
class ModelConfig:
    model: ModelSection = field(default_factory=ModelSection)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

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
        _require(
            self.model.mel_channels == self.preprocessing.audio.n_mels,
            f"model.mel_channels ({self.model.mel_channels}) must equal preprocessing.audio.n_mels "
            f"({self.preprocessing.audio.n_mels})",
        )


# --------------------------------------------------------------------------------------------
# Training config (config/train.yaml)
# --------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    type: Literal["adamw", "adam"] = "adamw"
    learning_rate: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1.0e-8
    weight_decay: float = 0.01

    def check(self) -> None:
        _require(self.learning_rate > 0, "learning_rate must be > 0")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two values in [0, 1)")


@dataclass
class SchedulerConfig:
    type: Literal["warmup_cosine", "warmup_linear", "constant_with_warmup", "noam"] = "warmup_cosine"
    warmup_steps: int = 1000
    total_steps: Optional[int] = None  # defaults to training.max_steps, else epochs x steps/epoch
    min_lr_ratio: float = 0.0  # floor of cosine/linear decay, as a fraction of learning_rate

    def check(self) -> None:
        _require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")


@dataclass
class LossConfig:
    pos_weight: float = 5.0  # weight of the positive (stop) class in the stop-head BCE
    stop_weight: float = 1.0  # weight of the stop-head term in the total


@dataclass
class AlignmentConfig:
    """Alignment aid: a beta-binomial prior on the decoder's cross-attention scores.

    The prior (as in RAD-TTS) says audio step t of T attends near text position t/T of S. Its log
    is added to every cross-attention score with weight 1 for ``prior_hold_steps`` optimizer steps,
    then the weight falls linearly to 0 over ``prior_anneal_steps``; after that training (and
    always inference) runs without it.
    """

    prior: bool = True
    prior_scale: float = 1.0  # beta-binomial concentration per audio step; smaller = wider prior
    prior_hold_steps: int = 1000
    prior_anneal_steps: int = 1000

    def check(self) -> None:
        _require(self.prior_scale > 0, f"prior_scale must be > 0, got {self.prior_scale}")
        _require(self.prior_hold_steps >= 0 and self.prior_anneal_steps >= 0,
                 "prior_hold_steps and prior_anneal_steps must be >= 0")


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    patience: int = 10  # validations without improvement before stopping
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class WandbConfig:
    project: str = "echolancer"
    entity: Optional[str] = None
    run_name: Optional[str] = None
    mode: Literal["online", "offline", "disabled"] = "offline"
    log_checkpoints: bool = True


@dataclass
class TrainingSection:
    batch_size: int = 16
    max_tokens: Optional[int] = None  # audio-token budget per batch (bucketed sampler)
    epochs: int = 100
    max_steps: Optional[int] = None
    grad_acc_step: int = 1
    grad_clip_thresh: float = 1.0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    compile: bool = False
    num_workers: int = 2
    seed: int = 1234
    log_step: int = 10
    val_step: int = 1000
    save_step: int = 1000
    test_step: int = 2000
    eval_step: Optional[int] = None
    keep_last: int = 3
    max_nonfinite_steps: int = 5
    test_sentences: list[str] = field(default_factory=list)
    test_speakers: list[int] = field(default_factory=lambda: [0])
    test_max_length: int = 1000  # codec tokens per test utterance (bounds generation time)
    test_temperature: float = 1.0  # 0 = greedy

    def check(self) -> None:
        _require(self.batch_size > 0, "batch_size must be > 0")
        _require(self.grad_acc_step >= 1, "grad_acc_step must be >= 1")
        _require(self.epochs >= 1, "epochs must be >= 1")
        _require(self.test_temperature >= 0.0, "test_temperature must be >= 0")
        _require(self.eval_step is None or self.eval_step > 0, "eval_step must be > 0 or null")
        for name in ("log_step", "val_step", "save_step", "test_step", "keep_last", "test_max_length",
                     "max_nonfinite_steps"):
            _require(getattr(self, name) > 0, f"{name} must be > 0")


@dataclass
class TrainConfig:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    training: TrainingSection = field(default_factory=TrainingSection)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
