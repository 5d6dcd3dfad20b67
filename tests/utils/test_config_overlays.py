"""Config overlays: a top-level ``base:`` names a file loaded first, and this file's keys are merged
on top of it; the merged result is validated, overridden and saved exactly like a single file.

The shipped variants in config/ are overlays; ``shipped_configs.json`` holds every shipped file
fully loaded as it was before they were rewritten, so a value that drifts fails here. When a
shipped config is changed on purpose, write the snapshot again:

    python tests/utils/test_config_overlays.py --write
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script to write the snapshot
    sys.path.insert(0, str(ROOT))

from utils.config import (  # noqa: E402
    ConfigError,
    ModelConfig,
    PreEncoderConfig,
    TrainConfig,
    VocoderConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    load_configs,
)

SNAPSHOT = Path(__file__).with_name("shipped_configs.json")
PREFIXES = {"model": ModelConfig, "train": TrainConfig, "preencoder": PreEncoderConfig, "istftnet": VocoderConfig}


def schema_for(name: str) -> type:
    """The schema a shipped file is read with, from its name (``model_tiny.yaml`` -> ModelConfig)."""
    prefix = name.split("_")[0].removesuffix(".yaml")
    if prefix == "demo":
        from demo import DemoProfile

        return DemoProfile
    return PREFIXES[prefix]


def load_shipped() -> dict[str, dict]:
    """Every config/*.yaml fully loaded, as JSON-comparable plain values."""
    out = {}
    for path in sorted((ROOT / "config").glob("*.yaml")):
        cfg = load_config(path, schema=schema_for(path.name))
        out[path.name] = json.loads(json.dumps(config_to_dict(cfg)))
    return out


def test_every_shipped_overlay_loads_to_the_same_config_as_before():
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    loaded = load_shipped()
    assert sorted(loaded) == sorted(expected), "a shipped config was added or removed: write the snapshot again"
    for name, values in expected.items():
        assert loaded[name] == values, f"config/{name} no longer loads to the values it had"


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def full_dump(src: str, schema: type, dst: Path) -> Path:
    """A shipped config written out in full (every key), as a base that no other file depends on."""
    return write(dst, config_to_dict(load_config(ROOT / src, schema=schema)))


def test_an_overlay_merges_mappings_key_by_key_and_replaces_lists_and_scalars(tmp_path):
    write(tmp_path / "base.yaml", {"model": {"vocab_size": 90, "emotion_hidden_sizes": [64, 32], "decoder_kv_heads": 2,
                                             "decoder": {"hidden": 64, "head": 2, "layer": 3}},
                                   "dataset": {"max_text_len": 300}})
    over = write(tmp_path / "over.yaml", {"base": "base.yaml",
                                          "model": {"emotion_hidden_sizes": [16], "decoder": {"layer": 1}}})
    cfg = load_config(over)
    assert cfg.model.vocab_size == 90 and cfg.dataset.max_text_len == 300  # kept from the base
    assert cfg.model.emotion_hidden_sizes == [16]  # a list replaces, it is not appended to
    assert (cfg.model.decoder.hidden, cfg.model.decoder.head, cfg.model.decoder.layer) == (64, 2, 1)
    assert cfg.model.encoder == ModelConfig().model.encoder  # in neither file: the schema's default


def test_a_base_may_have_a_base_and_each_path_is_relative_to_the_file_that_names_it(tmp_path):
    write(tmp_path / "a" / "root.yaml", {"model": {"vocab_size": 90, "n_speaker": 2, "multi_speaker": True}})
    write(tmp_path / "b" / "middle.yaml", {"base": "../a/root.yaml", "model": {"n_speaker": 3}})
    top = write(tmp_path / "c" / "d" / "top.yaml", {"base": "../../b/middle.yaml", "model": {"vocab_size": 70}})
    cfg = load_config(top)
    assert (cfg.model.vocab_size, cfg.model.n_speaker, cfg.model.multi_speaker) == (70, 3, True)


def test_a_cycle_of_bases_is_an_error_naming_the_files(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle of bases") as e:
        load_config(tmp_path / "a.yaml")
    assert f"{tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'}" in str(e.value)
    write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle of bases"):
        load_config(tmp_path / "self.yaml")


def test_a_missing_base_names_the_file_that_asked_for_it(tmp_path):
    top = write(tmp_path / "top.yaml", {"base": "gone.yaml", "model": {"vocab_size": 70}})
    with pytest.raises(ConfigError) as e:
        load_config(top)
    assert str(e.value).startswith(f"{top}: base file not found: {tmp_path / 'gone.yaml'}")
    write(tmp_path / "bad.yaml", {"base": ["a.yaml"]})
    with pytest.raises(ConfigError, match="'base' must be the path of a YAML file"):
        load_config(tmp_path / "bad.yaml")


def test_an_unknown_key_or_bad_value_is_blamed_on_the_file_that_holds_it(tmp_path):
    base = write(tmp_path / "base.yaml", {"model": {"vocab_size": 90}})
    over = write(tmp_path / "over.yaml", {"base": "base.yaml", "model": {"decoder": {"layers": 2}}})
    with pytest.raises(ConfigError) as e:
        load_config(over)
    assert str(e.value).startswith(f"{over}: unknown key 'model.decoder.layers'")
    assert "allowed keys: hidden, head, layer" in str(e.value)

    write(base, {"model": {"vocab_size": 90, "colour": "red"}})
    write(over, {"base": "base.yaml", "model": {"vocab_size": 70}})
    with pytest.raises(ConfigError) as e:
        load_config(over)
    assert str(e.value).startswith(f"{base}: unknown key 'model.colour'")

    write(base, {"model": {"vocab_size": "many"}})
    write(over, {"base": "base.yaml", "dataset": {"max_text_len": 300}})
    with pytest.raises(ConfigError, match=r"base.yaml: 'model.vocab_size' must be an integer"):
        load_config(over)
    # The overlay's value replaces the base's bad one, so the base is not blamed for what it no longer gives.
    write(over, {"base": "base.yaml", "model": {"vocab_size": 70}})
    assert load_config(over).model.vocab_size == 70


def test_set_overrides_apply_on_top_of_the_merged_config(tmp_path):
    write(tmp_path / "base.yaml", {"model": {"vocab_size": 90, "decoder": {"layer": 3}}})
    over = write(tmp_path / "over.yaml", {"base": "base.yaml", "model": {"decoder": {"layer": 1}}})
    cfg = load_config(over, ["model.decoder.layer=5", "model.vocab_size=80"])
    assert (cfg.model.decoder.layer, cfg.model.vocab_size) == (5, 80)
    with pytest.raises(ConfigError, match="override 'base=x.yaml': 'base' is not a key"):
        load_config(over, ["base=x.yaml"])  # a base is chosen in the file, not by --set
    with pytest.raises(ConfigError, match=r"^--set model.vocab_size=big: 'model.vocab_size' must be an integer"):
        load_config(over, ["model.vocab_size=big"])


def test_every_schema_reads_overlays(tmp_path):
    cases = [("config/train_tiny.yaml", TrainConfig, {"training": {"max_steps": 7}}, lambda c: c.training.max_steps),
             ("config/preencoder_tiny.yaml", PreEncoderConfig, {"model": {"generator": {"hidden": 48}}},
              lambda c: c.model.generator.hidden),
             ("config/istftnet_tiny.yaml", VocoderConfig, {"generator": {"upsample_initial_channel": 96}},
              lambda c: c.generator.upsample_initial_channel)]
    for src, schema, change, read in cases:
        base = full_dump(src, schema, tmp_path / f"full_{schema.__name__}.yaml")
        over = write(tmp_path / f"over_{schema.__name__}.yaml", {"base": base.name, **change})
        got = load_config(over, schema=schema)
        assert read(got) in (7, 48, 96)
        expected = config_to_dict(load_config(base, schema=schema))
        assert {k: v for k, v in config_to_dict(got).items() if k not in change} == \
            {k: v for k, v in expected.items() if k not in change}
    from demo import DemoProfile, load_profile

    over = write(tmp_path / "demo.yaml", {"base": str(ROOT / "config/demo_tiny.yaml"), "device": "cuda"})
    profile, _ = load_profile(str(over))
    assert isinstance(profile, DemoProfile) and profile.device == "cuda"
    assert profile.echolancer == load_profile("tiny")[0].echolancer


def test_a_checkpoint_records_the_merged_config_and_loads_after_its_base_is_deleted(tmp_path, monkeypatch):
    from data.dummy import create_dummy_data_files
    from model.pretrained import load_echolancer
    from training.echolancer import RunPaths, Trainer
    from utils.checkpoint import load_checkpoint
    from utils.distributed import DistInfo

    monkeypatch.setenv("WANDB_MODE", "disabled")
    bases = [full_dump("config/model_tiny.yaml", ModelConfig, tmp_path / "cfg" / "model_base.yaml"),
             full_dump("config/train_tiny.yaml", TrainConfig, tmp_path / "cfg" / "train_base.yaml")]
    model_yaml = write(tmp_path / "cfg" / "model.yaml", {"base": "model_base.yaml",
                                                         "model": {"decoder": {"layer": 1}, "encoder": {"layer": 1}}})
    train_yaml = write(tmp_path / "cfg" / "train.yaml", {"base": "train_base.yaml",
                                                         "training": {"batch_size": 4, "max_steps": 2}})
    mcfg, tcfg = load_configs(model_yaml, train_yaml, ["training.val_step=2", "training.test_step=1000"])
    merged = config_to_dict(mcfg), config_to_dict(tcfg)
    assert mcfg.model.decoder.layer == 1 and mcfg.model.vocab_size == 64 and tcfg.training.max_steps == 2
    create_dummy_data_files(str(tmp_path / "train"), mcfg, n_files=8, max_text_len=12, seed=0)
    create_dummy_data_files(str(tmp_path / "val"), mcfg, n_files=2, max_text_len=12, seed=1)
    Trainer(mcfg, tcfg, RunPaths(str(tmp_path / "train"), str(tmp_path / "val"), str(tmp_path / "run")),
            DistInfo()).train()
    for path in bases:
        path.unlink()  # what was saved must not need the files it was built from

    ck = load_checkpoint(tmp_path / "run" / "ckpt")
    assert "base" not in ck["model_config"] and "base" not in ck["train_config"]
    assert (ck["model_config"], ck["train_config"]) == merged
    assert config_to_dict(config_from_dict(ModelConfig, ck["model_config"])) == merged[0]
    for source in (tmp_path / "run" / "ckpt", tmp_path / "run" / "export"):
        loaded = load_echolancer(source)
        assert config_to_dict(loaded.model_config) == merged[0]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {os.path.relpath(__file__)} --write")
    SNAPSHOT.write_text(json.dumps(load_shipped(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
