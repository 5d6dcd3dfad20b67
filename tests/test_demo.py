"""demo.py: profiles that the real scripts accept, the stage plan, skipping and failure reports.

The full tiny run (`python demo.py --profile tiny`, ~3 minutes on 2 cores) is CI's smoke test,
run outside pytest; these tests keep its pieces honest in a few seconds.
"""

import os

import pytest
import yaml

import demo
from utils.config import ConfigError, load_config, load_configs
from utils.config.preencoder import PreEncoderConfig
from utils.config.vocoder import VocoderConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["tiny", "gpu"])
def test_profiles_name_existing_files_and_overrides_the_scripts_accept(name):
    p, path = demo.load_profile(name)
    assert path == os.path.join(ROOT, "config", f"demo_{name}.yaml")
    for f in [*p.corpus.train_sentences, p.corpus.eval_sentences]:
        assert os.path.isfile(os.path.join(ROOT, f)), f
    # Loading each stage's config with the profile's overrides validates every key and type, so a
    # typo in the (unmeasured) GPU profile fails here instead of an hour into a run.
    load_config(os.path.join(ROOT, p.preencoder.config), p.preencoder.overrides, schema=PreEncoderConfig)
    load_config(os.path.join(ROOT, p.vocoder.config), p.vocoder.overrides, schema=VocoderConfig)
    model_cfg, _ = load_configs(os.path.join(ROOT, p.echolancer.model_config),
                                os.path.join(ROOT, p.echolancer.train_config), p.echolancer.overrides)
    # Every voice becomes a speaker; the model must have room for them, and BERT must fit its width.
    assert len(p.corpus.voices) <= model_cfg.model.n_speaker
    if len(p.corpus.voices) > 1:
        assert model_cfg.model.multi_speaker
    if p.preprocess.bert_model == "minilm":
        assert model_cfg.model.emotion_input_size == 384


def test_unknown_profile_keys_are_errors_naming_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"corpus": {"voice": ["joe"]}}))
    with pytest.raises(ConfigError, match=r"p\.yaml.*corpus\.voice"):
        demo.load_profile(str(bad))
    with pytest.raises(ConfigError, match="profiles: .*gpu.*tiny"):
        demo.load_profile("nope")


def test_plan_chains_each_stage_to_the_previous_ones_outputs(tmp_path):
    p, _ = demo.load_profile("tiny")
    steps = demo.plan(p, str(tmp_path), "disabled")
    assert [s.stage for s in steps] == list(demo.STAGES)
    cmd = {s.stage: s.commands[-1] for s in steps}

    def arg(stage, flag):
        return cmd[stage][cmd[stage].index(flag) + 1]

    assert os.path.basename(cmd["preprocess"][1]) == "preprocess.py"
    assert arg("preencoder", "--data_dir") == arg("corpus", "--output_dir").replace("eval", "train")
    assert arg("preprocess", "--pre_encoder_dir") == os.path.join(arg("preencoder", "--output_dir"), "export")
    assert arg("echolancer", "--train_data_dir") == os.path.join(arg("preprocess", "--output_dir"), "train")
    assert arg("evaluate", "--istftnet_dir") == os.path.join(arg("vocoder", "--output_dir"), "export")
    assert arg("evaluate", "--reference_dir") == arg("corpus", "--output_dir")  # the held-out sentences
    assert "--ladder" in cmd["evaluate"]
    assert "wandb.mode=disabled" in cmd["echolancer"]


def test_finished_stages_are_skipped(tmp_path, capsys):
    p, _ = demo.load_profile("tiny")
    os.makedirs(tmp_path / ".done")
    for stage in demo.STAGES:
        (tmp_path / ".done" / stage).touch()
    summary = demo.run_demo(p, str(tmp_path), list(demo.STAGES), "disabled")
    assert summary["stage_seconds"] == {}
    assert capsys.readouterr().out.count("already done, skipped") == len(demo.STAGES)


def test_a_failing_stage_stops_the_demo_and_shows_its_command_and_log(tmp_path, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"corpus": {"train_sentences": [str(tmp_path / "missing.txt")]}}))
    rc = demo.main(["--profile", str(profile), "--work_dir", str(tmp_path / "w"), "--stages", "corpus"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "stage 'corpus' failed" in err and "make_corpus.py" in err
    assert "missing.txt" in err  # the script's own error, from the log's last lines
    assert not (tmp_path / "w" / ".done" / "corpus").exists()


def test_preprocess_gets_the_model_overrides_training_gets(tmp_path):
    # Before: the GPU profile set model.emotion_input_size=384 for training only, and preprocess.py
    # refused MiniLM's 384-wide vectors against config/model.yaml's 768.
    p, _ = demo.load_profile("gpu")
    cmd = {s.stage: s.commands[-1] for s in demo.plan(p, str(tmp_path), "disabled")}
    prep = [cmd["preprocess"][i + 1] for i, a in enumerate(cmd["preprocess"]) if a == "--set"]
    assert "model.emotion_input_size=384" in prep
    assert not [o for o in prep if o.split(".")[0] not in demo.MODEL_CONFIG_SECTIONS]  # no training keys
    cfg = load_config(os.path.join(ROOT, p.echolancer.model_config), prep)
    assert cfg.model.emotion_input_size == 384
