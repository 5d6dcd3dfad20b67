"""ISTFTNetFE: waveform and int16 inference, TorchScript export/load, original and malformed dirs."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from istftnetfe import ISTFTNetFE, check_vocoder_audio
from model.istftnet import ISTFT, ISTFTNetGenerator
from model.istftnet_artifact import ISTFTNetDirError, export_istftnet
from utils.config import AudioConfig, ConfigError
from utils.config.vocoder import GeneratorConfig
from utils.device import CudaUnavailableError

ORIGINAL_KEYS = ("gen_istft_n_fft", "gen_istft_hop_size", "sampling_rate")


@pytest.fixture(scope="module")
def fe() -> ISTFTNetFE:
    torch.manual_seed(0)
    gen = ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=32), n_mels=80).eval()
    return ISTFTNetFE(gen, ISTFT(16, 4), AudioConfig())


@pytest.fixture(scope="module")
def export_dir(fe, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("istft_export"))
    export_istftnet(fe.gen, fe.stft, fe.audio, out, 22050, devices=["cpu"])
    return out


def copy_dir(src: str, dst) -> str:
    dst = str(dst)
    shutil.copytree(src, dst)
    return dst


def test_forward_gives_t_times_hop_samples_and_infer_gives_int16(fe):
    mel = torch.randn(2, 80, 11)
    wav = fe(mel)
    assert wav.shape == (2, 11 * 256) and wav.dtype == torch.float32
    pcm = fe.infer(mel[:1])
    assert pcm.dtype == np.int16 and pcm.shape == (11 * 256,)
    expected = (wav[0].clamp(-1, 1) * 32767).round().numpy().astype(np.int16)
    np.testing.assert_array_equal(pcm, expected)
    np.testing.assert_array_equal(fe.infer_cpuistft(mel[:1]), pcm)


def test_int16_conversion_clips_instead_of_wrapping_around():
    pcm = ISTFTNetFE._to_int16(torch.tensor([[1.0, 1.5, -2.0, 0.5]]))
    assert pcm.tolist() == [32767, 32767, -32767, 16384]  # 1.0 * 32768 would wrap to -32768


def test_mel_in_the_pre_encoder_layout_is_rejected_with_a_hint(fe):
    with pytest.raises(ValueError, match="transposed"):
        fe(torch.randn(1, 30, 80))  # (B, T, C) instead of (B, C, T)
    with pytest.raises(ValueError, match=r"\(B, n_mels, T\)"):
        fe(torch.randn(80, 30))


def test_exported_directory_loads_back_and_equals_eager(fe, export_dir):
    assert sorted(os.listdir(export_dir)) == ["config.json", "istft_cpu.pt"]
    cfg = json.load(open(os.path.join(export_dir, "config.json")))
    assert {k: cfg[k] for k in ORIGINAL_KEYS} == {"gen_istft_n_fft": 16, "gen_istft_hop_size": 4, "sampling_rate": 22050}
    assert cfg["num_mels"] == 80 and cfg["hop_size"] == 256 and cfg["fmax"] == 8000.0
    loaded = ISTFTNetFE.load_ts(export_dir, "cpu")
    assert isinstance(loaded.gen, torch.jit.ScriptModule)
    assert loaded.audio == AudioConfig() and loaded.sampling_rate == 22050
    mel = torch.randn(2, 80, 21)  # another batch size and length than the tracing example
    assert torch.allclose(loaded(mel), fe(mel), atol=1e-5)


def test_seed_style_instance_load_fills_the_instance(export_dir):
    fe = ISTFTNetFE(None, None)
    with pytest.raises(RuntimeError, match="load_ts"):
        fe(torch.randn(1, 80, 4))
    assert fe.load_ts(export_dir, "cpu") is fe
    assert fe(torch.randn(1, 80, 4)).shape == (1, 1024)


def test_original_export_without_mel_settings_loads_with_a_warning(fe, export_dir, tmp_path):
    d = copy_dir(export_dir, tmp_path / "orig")
    cfg = json.load(open(os.path.join(d, "config.json")))
    json.dump({k: cfg[k] for k in ORIGINAL_KEYS}, open(os.path.join(d, "config.json"), "w"))
    with pytest.warns(UserWarning, match="original iSTFTNet export"):
        loaded = ISTFTNetFE.load_ts(d, "cpu")
    assert loaded.audio == AudioConfig()
    mel = torch.randn(1, 80, 9)
    assert torch.allclose(loaded(mel), fe(mel), atol=1e-5)


def test_cuda_request_without_cuda_is_an_error_not_a_cpu_run(export_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CudaUnavailableError, match="ISTFTNetFE device cuda:0 was requested.*--device cpu"):
        ISTFTNetFE.load_ts(export_dir, "cuda:0")
    with pytest.raises(ConfigError, match="'gpu': not a device; use auto, cpu, cuda or cuda:N"):
        ISTFTNetFE.load_ts(export_dir, "gpu")


def test_missing_directory_and_files_are_named(export_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="ISTFTNet directory not found"):
        ISTFTNetFE.load_ts(str(tmp_path / "nope"), "cpu")
    d = copy_dir(export_dir, tmp_path / "no_cfg")
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        ISTFTNetFE.load_ts(d, "cpu")
    d = copy_dir(export_dir, tmp_path / "no_model")
    os.remove(os.path.join(d, "istft_cpu.pt"))
    with pytest.raises(FileNotFoundError, match=r"istft_cpu\.pt"):
        ISTFTNetFE.load_ts(d, "cpu")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("gen_istft_hop_size"), "missing key 'gen_istft_hop_size'"),
        (lambda c: c.update(sampling_rate="22050"), "'sampling_rate' must be a positive integer"),
        (lambda c: c.update(num_mels=64), "traced generator takes 80 mel channels"),
        (lambda c: c.update(gen_istft_hop_size=2), "hop settings do not match"),
        (lambda c: c.update(fmax=20000.0), "fmax"),
    ],
)
def test_malformed_config_is_a_clear_error(export_dir, tmp_path, edit, message):
    d = copy_dir(export_dir, tmp_path / "bad")
    path = os.path.join(d, "config.json")
    cfg = json.load(open(path))
    edit(cfg)
    json.dump(cfg, open(path, "w"))
    with pytest.raises(ISTFTNetDirError, match=message):
        ISTFTNetFE.load_ts(d, "cpu")


def test_unreadable_json_and_wrong_model_files_are_clear_errors(export_dir, tmp_path):
    d = copy_dir(export_dir, tmp_path / "json")
    open(os.path.join(d, "config.json"), "w").write("{not json")
    with pytest.raises(ISTFTNetDirError, match="not valid JSON"):
        ISTFTNetFE.load_ts(d, "cpu")

    d = copy_dir(export_dir, tmp_path / "garbage")
    open(os.path.join(d, "istft_cpu.pt"), "wb").write(b"not a torchscript archive")
    with pytest.raises(ISTFTNetDirError, match="not a TorchScript file"):
        ISTFTNetFE.load_ts(d, "cpu")

    # A valid TorchScript file that is not a generator (e.g. a pre-encoder put in the wrong folder).
    d = copy_dir(export_dir, tmp_path / "wrong")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(torch.nn.Conv1d(80, 4, 1), torch.randn(1, 80, 3)), os.path.join(d, "istft_cpu.pt"))
    with pytest.raises(ISTFTNetDirError, match=r"expected \(magnitude, phase\)"):
        ISTFTNetFE.load_ts(d, "cpu")


def test_audio_settings_mismatch_with_the_rest_of_the_pipeline_is_an_error(fe):
    check_vocoder_audio(fe, AudioConfig())
    with pytest.raises(ValueError, match="fmax: 8000.0 vs 7600.0|fmax: 7600.0 vs 8000.0"):
        check_vocoder_audio(fe, AudioConfig(fmax=7600.0))


def test_export_leaves_the_live_generator_trainable(fe, export_dir):
    # Folding weight norm must happen on a separate copy: the eager generator keeps its
    # parametrization (and so stays trainable) after an export.
    assert hasattr(fe.gen.conv_pre, "parametrizations")
    assert fe(torch.randn(1, 80, 3)).shape == (1, 768)
