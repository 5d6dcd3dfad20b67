"""A random tiny chain for the streaming and deployment tests: nothing trained, nothing downloaded."""

import torch

from istftnetfe import ISTFTNetFE
from model.echolancer import Echolancer
from model.istftnet import ISTFT, ISTFTNetGenerator
from model.istftnet_artifact import export_istftnet
from model.preencoder import PreEncoder
from model.preencoder_artifact import export_preencoder
from scripted_preencoder import ScriptedPreEncoder
from utils.config import AudioConfig, load_config
from utils.config.preencoder import PreEncoderConfig
from utils.config.vocoder import GeneratorConfig

TEXT = "Hello there, how are you?"


def build_chain(root, downsample: int = 1, seed: int = 0):
    """Random tiny Echolancer, pre-encoder (exported, loaded back) and ISTFTNet (traced, loaded back)."""
    torch.manual_seed(seed)
    pe_cfg = load_config("config/preencoder_tiny.yaml", [f"model.generator.downsample={downsample}",
                                                         "model.generator.decoder_blocks=2"], schema=PreEncoderConfig)
    export_preencoder(PreEncoder.from_config(pe_cfg).eval(), pe_cfg, str(root / "pe"))
    gen = ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=16), n_mels=80).eval()
    export_istftnet(gen, ISTFT(16, 4), AudioConfig(), str(root / "voc"), 22050, devices=["cpu"])
    model = Echolancer.from_config(load_config("config/model_tiny.yaml")).eval()
    pre = ScriptedPreEncoder(str(root / "pe"))
    return model, pre, ISTFTNetFE.load_ts(str(root / "voc"), "cpu")
