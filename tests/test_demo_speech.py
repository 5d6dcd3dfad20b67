"""The speech recipe's profiles (config/demo_speech_*.yaml) and the demo options they use.

The recipes themselves (about 90 minutes on 2 cores; a GPU for the other) are run by hand; these
checks keep their configs loadable and their stage plans right in a few seconds.
"""

import os

import pytest

import demo
from utils.config import load_config, load_configs
from utils.config.preencoder import PreEncoderConfig
from utils.config.vocoder import VocoderConfig

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
    assert train_cfg.alignment.forward_sum_weight > 0  # order at any pace
    # The planned steps fit the time cap with room for a machine at 60 % of the measured speed.
    steps_per_minute = {"speech_cpu": 1.6 * 60, "speech_gpu": None}[name]
    if steps_per_minute:
        assert train_cfg.training.max_steps / (0.6 * steps_per_minute) <= train_cfg.training.max_minutes


def test_speech_sentences_are_enough_and_held_out():
    p, _ = demo.load_profile("speech_cpu")
    train = [s for f in p.corpus.train_sentences for s in _sentences(f)]
    held = _sentences(p.corpus.eval_sentences)
    extra = {os.path.basename(f): _sentences(f) for f in p.corpus.extra_eval_sentences}
    assert len(set(train)) >= 4000 and len(held) >= 50
    words = [len(s.split()) for s in train]
    assert min(words) >= 3 and max(words) <= 30 and sum(w >= 20 for w in words) >= 100  # varied length
    assert sum(s.endswith("?") for s in train) >= 20 and sum(any(c.isdigit() for c in s) for s in train) >= 50
    for sentences in [held, *extra.values()]:
        assert not set(train) & set(sentences)
    # The long list is 1.5-2x the longest training sentence.
    long_words = [len(s.split()) for s in extra["long_eval.txt"]]
    assert len(long_words) >= 10 and 1.5 * max(words) <= min(long_words) and max(long_words) <= 2 * max(words)


def test_training_text_is_what_its_generator_makes():
    from scripts.sentences import wordnet

    if not os.path.isdir(wordnet.WORDNET_DIR):
        pytest.skip("WordNet is not installed (apt-get install wordnet-base)")
    assert wordnet.main(["--check"]) == 0


def test_extra_held_out_sets_are_rendered_and_scored_on_the_model_alone(tmp_path):
    p, _ = demo.load_profile("speech_cpu")
    steps = {s.stage: s for s in demo.plan(p, str(tmp_path), "disabled")}
    rendered = [c[c.index("--output_dir") + 1] for c in steps["corpus"].commands]
    assert rendered[2:] == [str(tmp_path / "corpus" / "eval_wordnet_eval"), str(tmp_path / "corpus" / "eval_long_eval")]
    ladder, *extra = steps["evaluate"].commands
    assert "--ladder" in ladder and ladder[ladder.index("--reference_dir") + 1] == str(tmp_path / "corpus" / "eval")
    for cmd, name in zip(extra, ("wordnet_eval", "long_eval")):
        assert "--ladder" not in cmd
        assert cmd[cmd.index("--reference_dir") + 1] == str(tmp_path / "corpus" / f"eval_{name}")
        assert cmd[cmd.index("--output_dir") + 1] == str(tmp_path / f"eval_{name}")
    assert str(tmp_path / "eval_long_eval" / "eval_report.json") in steps["evaluate"].outputs


def test_cpu_recipe_plan_has_no_vocoder_stage_and_evaluates_with_griffin_lim(tmp_path):
    p, _ = demo.load_profile("speech_cpu")
    steps = demo.plan(p, str(tmp_path), "disabled")
    assert [s.stage for s in steps] == [s for s in demo.STAGES if s != "vocoder"]
    ev = {s.stage: s.commands[0] for s in steps}["evaluate"]  # the ladder
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
