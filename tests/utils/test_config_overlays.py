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

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script to write the snapshot
    sys.path.insert(0, str(ROOT))

from utils.config import (  # noqa: E402
    ModelConfig,
    PreEncoderConfig,
    TrainConfig,
    VocoderConfig,
    config_to_dict,
    load_config,
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


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {os.path.relpath(__file__)} --write")
    SNAPSHOT.write_text(json.dumps(load_shipped(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
