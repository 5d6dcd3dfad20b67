"""Config files are validated once: unknown keys, wrong types and inconsistent settings are errors."""

import pytest
import yaml

from utils.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    load_configs,
)


def write(tmp_path, data, name="model.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_shipped_configs_load():
    cfg = load_config("config/model.yaml")
    assert isinstance(cfg, ModelConfig)
    assert cfg.model.codebook_size == 1000 and cfg.model.emotion_input_size == 768
    assert cfg.preprocessing.audio.hop_length == 256
    assert isinstance(load_config("config/model_tiny.yaml"), ModelConfig)


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config("config/model.yaml", ["model.decoder.layer=8", "model.use_alibi=false", "model.alibi_alpha=0.5"])
    assert cfg.model.decoder.layer == 8 and cfg.model.use_alibi is False and cfg.model.alibi_alpha == 0.5


def test_unknown_key_names_the_file_the_key_and_the_allowed_keys(tmp_path):
    path = write(tmp_path, {"model": {"decoder": {"layers": 3}}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "model.decoder.layers" in msg and "layer" in msg and "forward_expansion" in msg


def test_float_written_as_1e_minus_6_is_a_clear_type_error(tmp_path):
    path = write(tmp_path, "optimizer:\n  learning_rate: 1e-6\n", "train.yaml")
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate.*float.*1.0e-6"):
        load_config(path, schema=TrainConfig)
    ok = write(tmp_path, "optimizer:\n  learning_rate: 1.0e-6\n", "train2.yaml")
    assert load_config(ok, schema=TrainConfig).optimizer.learning_rate == 1e-6


def test_integer_is_accepted_where_a_float_is_expected_but_not_a_bool(tmp_path):
    assert load_config(write(tmp_path, {"model": {"alibi_alpha": 2}})).model.alibi_alpha == 2.0
    with pytest.raises(ConfigError, match="model.n_speaker"):
        load_config(write(tmp_path, {"model": {"n_speaker": True}}))


def test_choice_errors_list_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"'relu', 'gelu', 'swiglu', 'relu2'"):
        load_config(write(tmp_path, {"model": {"activation": "tanh"}}))


@pytest.mark.parametrize(
    "section, match",
    [
        ({"encoder": {"hidden": 250, "head": 4}}, r"hidden \(250\) must be divisible by head \(4\)"),
        ({"decoder_kv_heads": 3}, r"decoder_kv_heads \(3\) must divide decoder.head \(4\); allowed: 1, 2, 4"),
        ({"emotion_channels": 512}, r"emotion_channels \(512\) must be <= encoder.hidden \(256\)"),
        ({"vq_token_mode": True, "vq_vocab_size": 10}, r"vq_vocab_size"),
    ],
)
def test_inconsistent_settings_are_errors(tmp_path, section, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, {"model": section}))


def test_override_of_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="model.decoder.depth"):
        load_config("config/model.yaml", ["model.decoder.depth=3"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config("config/model.yaml", ["model.decoder.layer"])


def test_load_configs_routes_overrides_to_the_config_that_has_the_key(tmp_path):
    train = write(tmp_path, {"training": {"batch_size": 4}}, "train.yaml")
    m, t = load_configs("config/model.yaml", train, ["model.decoder.layer=2", "training.batch_size=8"])
    assert m.model.decoder.layer == 2 and t.training.batch_size == 8
    assert isinstance(t, TrainConfig)
    with pytest.raises(ConfigError, match="neither"):
        load_configs("config/model.yaml", train, ["foo.bar=1"])


def test_config_round_trips_through_a_plain_dict():
    cfg = load_config("config/model_tiny.yaml")
    again = config_from_dict(ModelConfig, config_to_dict(cfg))
    assert again == cfg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found.*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_the_schema_is_chosen_explicitly_and_a_wrong_kind_says_which_to_pass():
    # Before: the schema was guessed from two candidates, so these failed with misleading errors.
    from utils.config import KINDS, PreEncoderConfig, VocoderConfig

    assert isinstance(load_config("config/istftnet.yaml", schema=KINDS["vocoder"]), VocoderConfig)
    assert isinstance(load_config("config/preencoder.yaml", schema=KINDS["preencoder"]), PreEncoderConfig)
    with pytest.raises(ConfigError, match="vocoder config: pass schema=VocoderConfig"):
        load_config("config/istftnet.yaml")
    with pytest.raises(ConfigError, match="train config: pass schema=TrainConfig"):
        load_config("config/train.yaml")


def test_a_bad_set_value_is_blamed_on_the_override_not_the_file():
    # Before: "config/train.yaml: 'training.max_steps' must be ..." although the file was fine.
    with pytest.raises(ConfigError, match=r"^--set training.max_steps=abc: 'training.max_steps' must be"):
        load_configs("config/model.yaml", "config/train.yaml", ["training.max_steps=abc"])
    with pytest.raises(ConfigError, match=r"with --set training.max_steps=-5: 'training': max_steps must be >= 1"):
        load_configs("config/model.yaml", "config/train.yaml", ["training.max_steps=-5"])


def test_audio_settings_are_top_level_in_every_kind_and_the_old_place_still_reads(tmp_path):
    from utils.config import AudioConfig, PreEncoderConfig, VocoderConfig

    for path, schema in (("config/model.yaml", ModelConfig), ("config/preencoder.yaml", PreEncoderConfig),
                         ("config/istftnet.yaml", VocoderConfig)):
        assert load_config(path, schema=schema).audio == AudioConfig()
    cfg = load_config("config/model.yaml", ["audio.hop_length=128"])
    assert cfg.preprocessing.audio is cfg.audio and "audio" not in config_to_dict(cfg)["preprocessing"]
    old = write(tmp_path, {"model": {}, "preprocessing": {"audio": {"hop_length": 128}, "val_fraction": 0.1}})
    assert load_config(old).audio.hop_length == 128  # a file written for the earlier layout
    saved = config_to_dict(ModelConfig())
    saved["preprocessing"]["audio"] = saved.pop("audio")  # a checkpoint written by an earlier version
    assert config_from_dict(ModelConfig, saved) == ModelConfig()
    with pytest.raises(ConfigError, match="given twice"):
        load_config(write(tmp_path, {"audio": {"hop_length": 256}, "preprocessing": {"audio": {"hop_length": 128}}}))


@pytest.mark.parametrize("key, value, match", [
    ("pad_multiple", 0, r"pad_multiple must be > 0"),
    ("check_step", 0, r"check_step must be > 0"),
])
def test_training_speed_keys_are_validated(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, {"training": {key: value}}, "train.yaml"), schema=TrainConfig)


def test_optimizer_impl_lists_its_choices_and_the_speed_keys_have_defaults(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer.impl.*'auto', 'fused', 'foreach'"):
        load_config(write(tmp_path, {"optimizer": {"impl": "apex"}}, "train.yaml"), schema=TrainConfig)
    cfg = load_config(write(tmp_path, {"training": {"batch_size": 2}}, "train.yaml"), schema=TrainConfig)
    assert (cfg.optimizer.impl, cfg.training.pad_multiple, cfg.training.check_step) == ("auto", 16, 10)
