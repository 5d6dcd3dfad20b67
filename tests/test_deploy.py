"""export_deploy.py and model/deploy.py: the TorchScript chain equals the eager one, or is refused."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import export_deploy
from model.deploy import DeployedChain
from model.deploy_export import DecodeStepModule
from model.echolancer import Echolancer
from model.pretrained import export_echolancer, load_echolancer
from pipeline import build_synthesizer
from tests.tiny_chain import TEXT, build_chain
from utils.char_tokenizer import CharTokenizer
from utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {"deploy.yaml", "encoder.pt", "decode_step.pt", "preencoder_decoder.pt", "vocoder.pt"}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """An Echolancer export (its EOS bias raised so greedy decoding stops once allowed) and the front ends."""
    root = tmp_path_factory.mktemp("deploy")
    model, _, _ = build_chain(root)
    with torch.no_grad():
        model.head.bias[model.eos_id] = 30.0
    export_echolancer(model, load_config("config/model_tiny.yaml"), CharTokenizer(), str(root / "echo"), 3)
    return {"root": root, "ckpt": str(root / "echo"), "pe": str(root / "pe"), "voc": str(root / "voc")}


def export(parts, out, *extra: str) -> int:
    return export_deploy.main(["--checkpoint", parts["ckpt"], "--pre_encoder_dir", parts["pe"],
                               "--istftnet_dir", parts["voc"], "--output_dir", str(out), "--max_length", "64", *extra])


@pytest.fixture(scope="module")
def deployed(parts):
    out = parts["root"] / "out"
    assert export(parts, out) == 0
    return out


def eager_synth(parts):
    loaded = load_echolancer(parts["ckpt"])
    return build_synthesizer(loaded.model, loaded.tokenizer, pre_encoder_dir=parts["pe"], istftnet_dir=parts["voc"])


def test_the_export_writes_the_modules_and_deploy_yaml(deployed):
    assert set(os.listdir(deployed)) == FILES
    cfg = yaml.safe_load((deployed / "deploy.yaml").read_text())
    assert cfg["format"] == "echolancer-deploy" and cfg["generation"]["max_length"] == 64
    assert "k_cache, v_cache (2, 1, 1, 64, 16)" in cfg["shapes"]["decode_step"]
    assert all(v <= 1e-5 for v in cfg["check"]["max_abs_diff"].values())
    assert cfg["stream"]["reach_left"] > 0 and cfg["audio"]["samples_per_token"] == 256
    assert not [p for p in os.listdir(deployed.parent) if p.startswith(".deploy-tmp-")]  # no leftovers


@pytest.mark.parametrize("gen", [{"temperature": 0.0, "min_length": 30},       # stops by EOS at 30
                                 {"temperature": 1.0, "top_k": 1, "min_length": 64}])  # cut at max_length
def test_the_deployed_chain_equals_the_eager_pipeline(parts, deployed, gen):
    chain = DeployedChain(deployed)
    (utt,) = eager_synth(parts).synthesize([TEXT], speakers=[1], max_length=64, **gen)
    out = chain.synthesize(TEXT, speaker=1, max_length=64, **gen)
    assert len(utt.tokens) == gen["min_length"] and out.hit_max_length == utt.hit_max_length
    assert torch.equal(out.tokens, utt.tokens)
    assert out.wav.shape == utt.wav.shape and np.abs(out.wav - utt.wav).max() < 1e-5
    streamed = np.concatenate(list(chain.stream(TEXT, chunk_tokens=8, speaker=1, max_length=64, **gen)))
    assert np.abs(streamed - out.wav).max() < 1e-5


def test_deployed_sampling_and_bad_requests(deployed):
    chain = DeployedChain(deployed)
    a = chain.synthesize(TEXT, temperature=1.0, top_k=50, seed=1, min_length=64, max_length=64)
    b = chain.synthesize(TEXT, temperature=1.0, top_k=50, seed=1, min_length=64, max_length=64)
    assert torch.equal(a.tokens, b.tokens) and np.isfinite(a.wav).all()
    with pytest.raises(ValueError, match="max_length must be in"):
        chain.synthesize(TEXT, max_length=65)
    with pytest.raises(ValueError, match="not a speaker"):
        chain.synthesize(TEXT, speaker=9)


def test_a_module_that_differs_from_eager_is_refused_and_nothing_is_removed(parts, tmp_path, monkeypatch, capsys):
    forward = DecodeStepModule.forward

    def off_by_a_little(self, *args):
        logits, stop, k, v = forward(self, *args)
        return logits + 1e-3, stop, k, v

    monkeypatch.setattr(DecodeStepModule, "forward", off_by_a_little)
    assert export(parts, tmp_path / "new") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export_deploy.py: error: decode_step.pt output 0")
    assert "refusing to write it" in err[0]
    assert not (tmp_path / "new").exists()
    # An earlier export the user has, with a file of their own: --overwrite with a bad module keeps both.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "encoder.pt").write_bytes(b"the user's old file")
    assert export(parts, mine, "--overwrite") == 1
    assert sorted(os.listdir(mine)) == ["encoder.pt", "notes.txt"]
    assert (mine / "encoder.pt").read_bytes() == b"the user's old file"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".deploy-tmp-")] == []


def test_an_output_dir_with_files_is_refused_without_overwrite(parts, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("keep me")
    assert export(parts, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export_deploy.py: error: --output_dir") and "--overwrite" in err
    assert os.listdir(tmp_path / "o") == ["notes.txt"]
    assert export(parts, tmp_path / "o", "--overwrite") == 0  # replaces only this format's files
    assert set(os.listdir(tmp_path / "o")) == FILES | {"notes.txt"}


def test_bad_values_are_one_line_errors(parts, tmp_path, capsys):
    assert export(parts, tmp_path / "o", "--max_length", "0") == 2
    assert capsys.readouterr().err.strip() == "export_deploy.py: error: --max_length must be >= 1, got 0"
    assert export_deploy.main(["--checkpoint", str(tmp_path / "nope"), "--pre_encoder_dir", parts["pe"],
                               "--istftnet_dir", parts["voc"], "--output_dir", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_the_deployed_chain_runs_without_the_model_code(deployed, tmp_path):
    """A fresh process: the exported files, torch and the tokenizer; no model class is ever imported."""
    script = (
        "import sys\n"
        "from model.deploy import DeployedChain\n"
        f"out = DeployedChain({str(deployed)!r}).synthesize({TEXT!r}, min_length=20, max_length=64)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('model.', 'pipeline', 'istftnetfe', 'scripted_')))\n"
        "assert loaded == ['model.deploy', 'model.stream_audio'], loaded\n"
        "print(len(out.tokens), out.wav.shape[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20", str(20 * 256)]


def test_a_model_whose_codes_share_digit_vectors_exports_equal_to_eager(tmp_path):
    """model.code_levels builds the embedding and head tables inside decode_step: the traced step
    must carry them (the export's own check compares it with the eager model)."""
    build_chain(tmp_path)  # the pre-encoder and vocoder exports
    cfg = load_config("config/model_tiny.yaml", ["model.code_levels=[8,5,5,5]"])
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg).eval()
    with torch.no_grad():
        model.code_factors.outputs.normal_()  # digit terms large enough to decide the argmax
        model.code_factors.inputs.normal_()
    export_echolancer(model, cfg, CharTokenizer(), str(tmp_path / "echo"), 3)
    paths = {"ckpt": str(tmp_path / "echo"), "pe": str(tmp_path / "pe"), "voc": str(tmp_path / "voc")}
    out = tmp_path / "out"
    assert export(paths, out) == 0
    check = yaml.safe_load((out / "deploy.yaml").read_text())["check"]["max_abs_diff"]
    assert check["decode_step"] <= 1e-5, check
    (utt,) = eager_synth(paths).synthesize([TEXT], speakers=[1], max_length=32, temperature=0.0)
    assert torch.equal(DeployedChain(out).synthesize(TEXT, speaker=1, max_length=32, temperature=0.0).tokens,
                       utt.tokens)
