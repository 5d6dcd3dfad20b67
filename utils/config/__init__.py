"""One validated config object per YAML file, with one schema per file kind.

    from utils.config import load_config, load_configs, TrainConfig
    cfg = load_config("config/model.yaml", ["model.decoder.layer=8"])        # a model config
    train = load_config("config/train.yaml", schema=TrainConfig)              # the kind is said, not guessed
    model_cfg, train_cfg = load_configs("config/model.yaml", "config/train.yaml", ["training.max_steps=100"])

Kinds (:data:`KINDS`): ``model`` (:mod:`utils.config.model`), ``train`` (:mod:`utils.config.train`),
``preencoder`` (:mod:`utils.config.preencoder`), ``vocoder`` (:mod:`utils.config.vocoder`). All three
models keep their audio settings in a top-level ``audio`` section (:mod:`utils.config.audio`), and
every schema validates with :func:`utils.config.core.require`.
"""

from __future__ import annotations

from typing import Optional

from utils.config.audio import AudioConfig
from utils.config.core import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    require,
    require_positive,
    schema_has_key,
)
from utils.config.model import (
    Activation,
    DatasetConfig,
    DecoderConfig,
    EncoderConfig,
    EncoderPosition,
    GenerationConfig,
    ModelConfig,
    ModelSection,
    PreprocessingConfig,
    RefEncoderConfig,
)
from utils.config.preencoder import PreEncoderConfig
from utils.config.train import (
    AlignmentConfig,
    EarlyStoppingConfig,
    LossConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    TrainingSection,
    WandbConfig,
)
from utils.config.vocoder import VocoderConfig

KINDS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "preencoder": PreEncoderConfig,
                          "vocoder": VocoderConfig}

__all__ = [
    "KINDS", "Activation", "AlignmentConfig", "AudioConfig", "ConfigError", "DatasetConfig", "DecoderConfig",
    "EarlyStoppingConfig", "EncoderConfig", "EncoderPosition", "GenerationConfig", "LossConfig", "ModelConfig",
    "ModelSection", "OptimizerConfig", "PreEncoderConfig", "PreprocessingConfig", "RefEncoderConfig",
    "SchedulerConfig", "TrainConfig", "TrainingSection", "VocoderConfig", "WandbConfig", "apply_overrides",
    "config_from_dict", "config_to_dict", "load_config", "load_configs", "require", "require_positive",
    "schema_has_key",
]


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


