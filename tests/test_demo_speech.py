"""The speech recipe's profiles (config/demo_speech_*.yaml) and the demo options they use.

The recipes themselves (about 90 minutes on 2 cores; a GPU for the other) are run by hand; these
checks keep their configs loadable and their stage plans right in a few seconds.
"""

import os

import pytest

import demo
from utils.config import load_config, load_configs
from utils.preencoder_config import PreEncoderConfig
from utils.vocoder_config import VocoderConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sentences(path: str) -> list[str]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ["speech_cpu", "speech_gpu"])
def test_speech_profiles_load_with_every_stage_config(name):
    p, path = demo.load_profile(name)
    assert path == os.path.join(ROOT, "config", f"demo_{name}.yaml")
    pre = load_config(os.path.join(ROOT, p.preencoder.config), p.preencoder.overrides, schema=PreEncoderConfig)
    load_config(os.path.join(ROOT, p.vocoder.config), p.vocoder.overrides, schema=VocoderConfig)
    over = p.echolancer.overrides + [f"model.text_frontend={p.echolancer.text_frontend}"]
    model_cfg, train_cfg = load_configs(os.path.join(ROOT, p.echolancer.model_config),
                                        os.path.join(ROOT, p.echolancer.train_config), over)
    assert model_cfg.model.emotion_input_size == 384  # the packaged MiniLM
    assert model_cfg.model.vocab_size >= 128  # room for the phoneme table as well as characters
    assert train_cfg.alignment.prior  # the alignment aid stays on
    # The prior must be gone before training ends: inference never uses it.
    assert train_cfg.alignment.prior_hold_steps + train_cfg.alignment.prior_anneal_steps < train_cfg.training.max_steps
    assert pre.model.generator.downsample == 2


def test_speech_sentences_are_enough_and_held_out():
    p, _ = demo.load_profile("speech_cpu")
    train = [s for f in p.corpus.train_sentences for s in _sentences(f)]
    held = _sentences(p.corpus.eval_sentences)
    assert len(train) >= 1500 and len(held) >= 50
    assert not set(train) & set(held)


def test_cpu_recipe_plan_has_no_vocoder_stage_and_evaluates_with_griffin_lim(tmp_path):
    p, _ = demo.load_profile("speech_cpu")
    steps = demo.plan(p, str(tmp_path), "disabled")
    assert [s.stage for s in steps] == [s for s in demo.STAGES if s != "vocoder"]
    ev = {s.stage: s.commands[-1] for s in steps}["evaluate"]
    assert "--istftnet_dir" not in ev and "--ladder" in ev


def test_text_frontend_reaches_preprocess_and_training(tmp_path):
    p, _ = demo.load_profile("speech_cpu")
    p.echolancer.text_frontend = "phonemes"
    cmd = {s.stage: s.commands[-1] for s in demo.plan(p, str(tmp_path), "disabled")}
    assert cmd["preprocess"][cmd["preprocess"].index("--text_frontend") + 1] == "phonemes"
    assert "model.text_frontend=phonemes" in cmd["echolancer"]
    p.echolancer.text_frontend = None  # the model config decides
    cmd = {s.stage: s.commands[-1] for s in demo.plan(p, str(tmp_path), "disabled")}
    assert "--text_frontend" not in cmd["preprocess"]
    assert not any(a.startswith("model.text_frontend") for a in cmd["echolancer"])


def test_gpu_recipe_keeps_the_vocoder_stage(tmp_path):
    p, _ = demo.load_profile("speech_gpu")
    cmd = {s.stage: s.commands[-1] for s in demo.plan(p, str(tmp_path), "disabled")}
    assert "vocoder" in cmd and "--istftnet_dir" in cmd["evaluate"]
