"""Moved to :mod:`utils.config.preencoder` (the config package); kept so existing imports work."""

from utils.config.preencoder import *  # noqa: F403
from utils.config.preencoder import PreEncoderConfig, PreEncoderGeneratorConfig  # noqa: F401
