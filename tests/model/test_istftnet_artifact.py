"""model/istftnet_artifact.py: export then load gives the eager generator's magnitude and phase on a
probe mel; weights.pt is written only with a config and holds the live generator's tensors."""

import json
import os

import torch

from istftnetfe import ISTFTNetFE
from model.istftnet import ISTFT, ISTFTNetGenerator
from model.istftnet_artifact import EXPORT_FORMAT, export_istftnet, load_istftnet
from utils.config import AudioConfig, config_to_dict
from utils.config.vocoder import GeneratorConfig, VocoderConfig


def small_generator() -> ISTFTNetGenerator:
    torch.manual_seed(0)
    return ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=32), n_mels=80).eval()


def test_export_then_load_gives_the_eager_outputs(tmp_path):
    gen, stft, audio = small_generator(), ISTFT(16, 4), AudioConfig()
    written = export_istftnet(gen, stft, audio, tmp_path, devices=["cpu"])
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(tmp_path)) == ["config.json",
                                                                                            "istft_cpu.pt"]
    traced, loaded_stft, loaded_audio = load_istftnet(tmp_path, "cpu")
    assert isinstance(traced, torch.jit.ScriptModule) and loaded_audio == audio
    assert (loaded_stft.n_fft, loaded_stft.hop_length, loaded_stft.win_length) == (16, 4, 16)
    mel = torch.randn(2, 80, 13, generator=torch.Generator().manual_seed(1)) - 4
    with torch.no_grad():
        for a, b in zip(gen(mel), traced(mel)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ISTFTNetFE.load_ts(tmp_path, "cpu")(mel), ISTFTNetFE(gen, stft, audio)(mel),
                               atol=1e-5, rtol=1e-4)


def test_weights_pt_is_written_with_a_config(tmp_path):
    gen, cfg = small_generator(), VocoderConfig()
    written = export_istftnet(gen, ISTFT(16, 4), AudioConfig(), tmp_path, 22050, devices=["cpu"], cfg=cfg, step=7)
    assert os.path.join(str(tmp_path), "weights.pt") == written[-1]
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert list(state) == ["format", "format_version", "config", "step", "generator"]
    assert state["format"] == EXPORT_FORMAT and state["format_version"] == 1 and state["step"] == 7
    assert state["config"] == config_to_dict(cfg)
    live = gen.state_dict()
    assert state["generator"].keys() == live.keys()
    assert all(torch.equal(v, live[k]) for k, v in state["generator"].items())
    raw = json.load(open(tmp_path / "config.json"))
    assert raw["gen_istft_n_fft"] == 16 and raw["gen_istft_hop_size"] == 4 and raw["sampling_rate"] == 22050
