"""Moved to :mod:`utils.config.vocoder` (the config package); kept so existing imports work."""

from utils.config.vocoder import *  # noqa: F403
from utils.config.vocoder import DiscriminatorConfig, GeneratorConfig, VocoderConfig  # noqa: F401
