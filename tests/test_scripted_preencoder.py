"""ScriptedPreEncoder: loads contract directories (original-style too) and rejects malformed ones."""

import os
import shutil

import pytest
import torch
import yaml

from model.preencoder import PreEncoder
from model.preencoder_artifact import PreEncoderDirError, export_preencoder
from scripted_preencoder import ScriptedPreEncoder
from utils.config import ConfigError, config_from_dict
from utils.config.preencoder import PreEncoderConfig
from utils.device import CudaUnavailableError

TINY = {"model": {"generator": {"hidden": 16, "encoder_blocks": 1, "decoder_blocks": 1, "kernel_size": 3}}}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = config_from_dict(PreEncoderConfig, TINY)
    out = tmp_path_factory.mktemp("pe_export")
    export_preencoder(PreEncoder.from_config(cfg), cfg, str(out))
    return out


def copy_export(src, dst):
    shutil.copytree(src, dst)
    return dst


def write_config(folder, raw) -> None:
    with open(os.path.join(folder, "model_config.yaml"), "w") as f:
        yaml.safe_dump(raw, f)


def test_loads_and_exposes_contract_attributes(export_dir):
    pe = ScriptedPreEncoder(export_dir)
    assert pe.mel_channels == 80 and pe.fsq_levels == [8, 5, 5, 5] and pe.codebook_size == 1000
    assert pe.audio.sampling_rate == 22050 and pe.downsample == 1
    idx = pe.encode(torch.randn(2, 9, 80) - 5, torch.tensor([9, 4]))
    assert idx.dtype == torch.long and idx.shape == (2, 9) and bool((idx[1, 4:] == 0).all())
    assert pe.decode(idx, torch.tensor([9, 4])).shape == (2, 9, 80)


def test_lengths_make_batched_equal_alone(export_dir):
    pe = ScriptedPreEncoder(export_dir)
    a, b = torch.randn(1, 15, 80) - 5, torch.randn(1, 6, 80) - 5
    batch = torch.cat([a, torch.nn.functional.pad(b, (0, 0, 0, 9), value=3.0)])
    idx = pe.encode(batch, torch.tensor([15, 6]))
    assert torch.equal(idx[0], pe.encode(a)[0]) and torch.equal(idx[1, :6], pe.encode(b)[0])
    mel = pe.decode(idx, torch.tensor([15, 6]))
    torch.testing.assert_close(mel[1, :6], pe.decode(idx[1:, :6])[0])


def test_original_style_config_loads_with_a_warning(export_dir, tmp_path):
    d = copy_export(export_dir, tmp_path / "orig")
    # What the original exports carry: mel_channels, fsq_levels and training settings only.
    write_config(d, {"model": {"mel_channels": 80, "generator": {"fsq_levels": [8, 5, 5, 5]}},
                     "training": {"batch_size": 32, "learning_rate": 0.0002}})
    with pytest.warns(UserWarning, match="no audio settings"):
        pe = ScriptedPreEncoder(d)
    assert pe.audio.hop_length == 256 and pe.audio.n_mels == 80 and pe.downsample == 1


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: shutil.rmtree(d), "not found"),
        (lambda d: os.remove(d / "model_config.yaml"), "no model_config.yaml"),
        (lambda d: os.remove(d / "model_cpu.pt"), "missing model_cpu.pt"),
        (lambda d: write_config(d, {"model": {"mel_channels": 80}}), "model.generator.fsq_levels"),
        (lambda d: write_config(d, {"model": {"generator": {"fsq_levels": [8, 5, 5, 5]}}}), "model.mel_channels"),
        (lambda d: write_config(d, {"model": {"mel_channels": 80, "generator": {"fsq_levels": [8, 5, 5]}}}),
         "exported with"),
        (lambda d: write_config(d, {"model": {"mel_channels": 80, "generator": {"fsq_levels": [8, 5, 5, 5]}},
                                    "audio": {"hop_length": 256, "sampling_rate": "22k"}}), "sampling_rate"),
        (lambda d: (d / "model_cpu.pt").write_bytes(b"not a zip"), "not a loadable TorchScript"),
        (lambda d: (d / "model_config.yaml").write_text("model: [unclosed"), "not valid YAML"),
    ],
    ids=["no-dir", "no-config", "no-cpu-file", "no-levels", "no-mel-channels", "levels-mismatch",
         "bad-audio", "corrupt-module", "bad-yaml"],
)
def test_malformed_directories_are_rejected_clearly(export_dir, tmp_path, mutate, match):
    d = copy_export(export_dir, tmp_path / "bad")
    mutate(d)
    with pytest.raises(PreEncoderDirError, match=match):
        ScriptedPreEncoder(d)


def test_wrong_rank_and_out_of_codebook_ids_are_errors(export_dir):
    pe = ScriptedPreEncoder(export_dir)
    with pytest.raises(ValueError, match=r"\(B, T, 80\)"):
        pe.encode(torch.randn(9, 80))
    with pytest.raises(ValueError, match=r"\(B, T, 80\)"):
        pe.encode(torch.randn(1, 9, 40))
    with pytest.raises(ValueError, match=r"\(B, T'\)"):
        pe.decode(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1000\).*1001"):
        pe.decode(torch.tensor([[3, 1001, 4]]))
    # Ids after a row's length (e.g. the decoder's PAD) are ignored, not rejected.
    assert pe.decode(torch.tensor([[3, 4, 1002]]), torch.tensor([2])).shape == (1, 3, 80)


def test_cuda_request_without_cuda_is_an_error_not_a_cpu_run(export_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CudaUnavailableError, match="ScriptedPreEncoder device cuda was requested.*--device cpu"):
        ScriptedPreEncoder(export_dir, device="cuda")
    with pytest.raises(ConfigError, match="'gpu': not a device"):
        ScriptedPreEncoder(export_dir, device="gpu")
