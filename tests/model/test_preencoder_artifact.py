"""model/preencoder_artifact.py: an export loads back (TorchScript and weights.pt) and gives the eager
model's codes and mels on a probe batch; the directory holds exactly the documented files."""

import os

import pytest
import torch
import yaml

from model.preencoder import PreEncoder, lengths_to_mask
from model.preencoder_artifact import (
    EXPORT_FORMAT,
    PreEncoderDirError,
    export_preencoder,
    load_preencoder,
    model_from_checkpoint,
)
from scripted_preencoder import ScriptedPreEncoder
from utils.config import config_from_dict, config_to_dict
from utils.config.preencoder import PreEncoderConfig


def tiny(downsample: int) -> PreEncoderConfig:
    gen = {"hidden": 16, "encoder_blocks": 1, "decoder_blocks": 1, "kernel_size": 3, "downsample": downsample}
    return config_from_dict(PreEncoderConfig, {"model": {"generator": gen}})


@pytest.mark.parametrize("downsample", [1, 2])
def test_export_then_load_gives_the_eager_outputs(tmp_path, downsample):
    torch.manual_seed(0)
    cfg = tiny(downsample)
    eager = PreEncoder.from_config(cfg).eval()
    written = export_preencoder(eager, cfg, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(tmp_path))
    assert {"model_cpu.pt", "model_config.yaml", "weights.pt"} <= set(os.listdir(tmp_path))

    g = torch.Generator().manual_seed(1)
    mel = torch.randn(2, 23, eager.mel_channels, generator=g) * 2 - 5
    lengths = torch.tensor([23, 14])
    mask = lengths_to_mask(lengths, 23)
    with torch.no_grad():
        ref_idx = eager.encode(mel, mask)
        ref_mel = eager.decode(ref_idx, eager.token_mask(mask))

    loaded = load_preencoder(tmp_path, "cpu")
    assert loaded.device == torch.device("cpu") and loaded.path.endswith("model_cpu.pt")
    assert (loaded.mel_channels, loaded.fsq_levels, loaded.downsample) == (80, cfg.model.generator.fsq_levels,
                                                                           downsample)
    assert loaded.audio == cfg.audio
    with torch.no_grad():
        assert torch.equal(loaded.module.encode(mel, mask), ref_idx)
        torch.testing.assert_close(loaded.module.decode(ref_idx, eager.token_mask(mask)), ref_mel)

    # The front end over the same loader, with lengths instead of masks.
    pe = ScriptedPreEncoder(tmp_path)
    token_lengths = (lengths + downsample - 1) // downsample
    assert torch.equal(pe.encode(mel, lengths), ref_idx)
    torch.testing.assert_close(pe.decode(ref_idx, token_lengths), ref_mel)


def test_weights_pt_rebuilds_the_same_eager_model(tmp_path):
    torch.manual_seed(0)
    cfg = tiny(1)
    eager = PreEncoder.from_config(cfg).eval()
    export_preencoder(eager, cfg, str(tmp_path))
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert state["format"] == EXPORT_FORMAT and state["format_version"] == 1
    assert state["config"] == config_to_dict(cfg)
    rebuilt, rebuilt_cfg, step = model_from_checkpoint(str(tmp_path / "weights.pt"))
    assert rebuilt_cfg == cfg and step == 0
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in eager.state_dict().items())
    with open(tmp_path / "model_config.yaml", encoding="utf-8") as f:
        assert f.readline().startswith("# Exported FSQ pre-encoder")
        assert yaml.safe_load(f) == config_to_dict(cfg)


def test_loading_a_missing_directory_names_it(tmp_path):
    with pytest.raises(PreEncoderDirError, match="pre-encoder directory not found: .*nope"):
        load_preencoder(tmp_path / "nope")
