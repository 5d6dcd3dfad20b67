"""The machinery shared by every config kind: reading, overrides, type checks, validators.

Every YAML file is read into a tree of dataclasses (the *schema*). Reading checks, once:
unknown keys, value types (YAML reads ``1e-6`` as a string, so a float field that receives a
string is an error with a hint), allowed values, and cross-field consistency. Errors name the
file (or the ``--set`` override that gave the value), the dotted key, and what is allowed.

A file may start from another: a top-level ``base: other.yaml`` (relative to the file that names
it) is read first, and this file's keys are merged on top (mappings key by key; lists and scalars
replace). Bases may have bases; a cycle is an error. Only the merged result is validated and built,
so the config object (and every checkpoint or export written from it) holds no trace of ``base``.

The schema is always chosen by the caller (``schema=``; :data:`utils.config.KINDS` lists them),
never guessed from the file's contents; without one, ``load_config`` reads a model config.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


# --------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a float", bool: "true/false", str: "a string"}.get(
        tp, str(tp)
    )


# Dotted keys whose values came from ``--set`` overrides while a file is being built: their type
# errors name the override, not the file (the file does not contain the bad value).
_OVERRIDDEN: dict[str, str] = {}
# Dotted keys whose values came from a base file (``base:``) while an overlay is being built: their
# errors name the base, the file that holds the bad key or value.
_FROM_BASE: dict[str, str] = {}


def _origin(key: str, source: str) -> str:
    key = key.split("[")[0]
    item = _OVERRIDDEN.get(key)
    if item is not None:
        return f"--set {item}"
    return _FROM_BASE.get(key, source)


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (int -> float, dict -> dataclass)."""

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{_origin(key, source)}: '{key}' must be {_type_name(tp)}, got {value!r} "
            f"({type(value).__name__}){extra}"
        )

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError:
                continue  # try the next member; the error below names the whole union
        raise fail()
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail()
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise fail()
        return [_convert(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise fail()
        return _build(tp, value, key, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                hint = " (YAML reads 1e-6 as a string: write 1.0e-6)"
            raise fail(hint)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise TypeError(f"unsupported schema type {tp!r} for {key}")


def _build(schema: type, raw: dict, prefix: str, source: str):
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"{_origin(_join(prefix, unknown[0]), source)}: unknown key '{_join(prefix, unknown[0])}' in {where}; "
            f"allowed keys: {', '.join(names)}"
        )
    kwargs = {k: _convert(v, hints[k], _join(prefix, k), source) for k, v in raw.items()}
    obj = schema(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            where = f"'{prefix}'" if prefix else "top level"
            given = [item for key, item in _OVERRIDDEN.items() if key.startswith(prefix)] if prefix else []
            origin = f"{source} with --set {', '.join(given)}" if given else source
            raise ConfigError(f"{origin}: {where}: {e}") from None
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def schema_has_key(schema: type, dotted: str) -> bool:
    """True if ``dotted`` (e.g. ``"model.decoder.layer"``) names a field of ``schema``."""
    tp: Any = schema
    for part in dotted.split("."):
        while typing.get_origin(tp) in (Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return True


def apply_overrides(raw: dict, overrides: list[str], schema: type, source: str) -> dict:
    """Apply ``"dotted.key=value"`` strings to a raw YAML dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like dotted.key=value")
        dotted, text = item.split("=", 1)
        dotted = dotted.strip()
        if not schema_has_key(schema, dotted):
            raise ConfigError(f"override '{item}': '{dotted}' is not a key of {source}")
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(text)
        _OVERRIDDEN[dotted] = item.strip()
    return raw


def config_from_dict(schema: type, raw: dict, source: str = "<dict>"):
    """Build and validate a config from a plain dict (e.g. one stored in a checkpoint)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    upgrade = getattr(schema, "upgrade", None)
    if upgrade is not None:  # keys an older version wrote elsewhere
        raw = upgrade(raw, source)
    check_saved = getattr(schema, "check_saved", None)
    if check_saved is not None:  # what an older version saved may mean something else today
        check_saved(raw, source)
    return _build(schema, raw, "", source)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _read_yaml(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path, overrides: Optional[list[str]] = None, schema: Optional[type] = None):
    """Read a YAML file (with its ``base:`` files, if any) into its validated config object.

    Args:
        path: the YAML file. A top-level ``base: other.yaml`` (relative to this file) is loaded
            first and this file's keys are merged on top of it; see :func:`_read_layers`.
        overrides: ``"dotted.key=value"`` strings applied before validation.
        schema: the dataclass of this file's kind (:data:`utils.config.KINDS`); default
            :class:`~utils.config.model.ModelConfig`. It is never guessed from the contents: a file
            of another kind fails on its first unknown section, with a hint naming the right schema.
    """
    if schema is None:
        from utils.config.model import ModelConfig

        schema = ModelConfig
    raw, origins = _read_layers(os.fspath(path), schema, [])
    _OVERRIDDEN.clear()
    _FROM_BASE.clear()
    _FROM_BASE.update({k: f for k, f in origins.items() if f != os.fspath(path)})
    try:
        apply_overrides(raw, list(overrides or []), schema, str(path))
        return _build(schema, raw, "", str(path))
    except ConfigError as e:
        hint = _kind_hint(raw, schema)
        if hint:
            raise ConfigError(f"{e}{hint}") from None
        raise
    finally:
        _OVERRIDDEN.clear()
        _FROM_BASE.clear()


BASE_KEY = "base"


def _read_layers(path: str, schema: type, chain: list[str]) -> tuple[dict, dict[str, str]]:
    """``path`` read with its bases: ``(merged raw dict, {dotted key: the file that gave it})``.

    A top-level ``base:`` names another YAML file, relative to the file that names it; it is read
    first (with its own base, if any) and this file's keys are merged on top (:func:`merge_raw`).
    Each file is upgraded on its own, so a base in an older layout still merges key by key.
    """
    raw = _read_yaml(path)
    upgrade = getattr(schema, "upgrade", None)
    base = raw.pop(BASE_KEY, None)
    if upgrade is not None:
        raw = upgrade(raw, path)
    origins = {key: path for key in _dotted_keys(raw)}
    if base is None:
        return raw, origins
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: '{BASE_KEY}' must be the path of a YAML file (relative to this file), "
                          f"got {base!r}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
    seen = [os.path.realpath(p) for p in (*chain, path)]
    if os.path.realpath(base_path) in seen:
        loop = " -> ".join([*chain, path, base_path])
        raise ConfigError(f"{path}: '{BASE_KEY}: {base}' makes a cycle of bases: {loop}")
    if not os.path.isfile(base_path):
        raise ConfigError(f"{path}: base file not found: {base_path} (from '{BASE_KEY}: {base}')")
    under, under_origins = _read_layers(base_path, schema, [*chain, path])
    return merge_raw(under, raw), {**under_origins, **origins}


def merge_raw(base: dict, overlay: dict) -> dict:
    """``overlay`` on top of ``base``: mappings merge key by key, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_raw(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _dotted_keys(raw: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in raw.items():
        dotted = _join(prefix, str(key))
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, dotted))
    return keys


def _kind_hint(raw: dict, schema: type) -> str:
    """When the file's top-level sections are not ``schema``'s but fit another kind, say which."""
    from utils.config import KINDS

    names = {f.name for f in dataclasses.fields(schema)}
    if set(raw) <= names:
        return ""
    fits = [(kind, cls) for kind, cls in KINDS.items()
            if cls is not schema and set(raw) <= {f.name for f in dataclasses.fields(cls)}]
    if not fits:
        return ""
    return "; " + " or ".join(f"this looks like a {kind} config: pass schema={cls.__name__}" for kind, cls in fits)


def require(cond: bool, message: str) -> None:
    """The validator every schema's ``check()`` uses: a ConfigError with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def require_positive(obj: Any, names: tuple[str, ...] | list[str], strict: bool = True) -> None:
    """``require(getattr(obj, n) > 0)`` (``>= 0`` when not ``strict``) for each name, naming the value."""
    for n in names:
        v = getattr(obj, n)
        require(v > 0 if strict else v >= 0, f"{n} must be {'>' if strict else '>='} 0, got {v}")
