"""One config layer: nested dataclasses read from YAML, overridden with typed `key=value`, saved as YAML.

Every config of the package goes through it (the training `RunConfig`, the comparison `CompareConfig`):
`load(RunConfig, "ldpo_cpu.yaml", ["optim.lr=1e-5", "method=dpo"], validate=...)` reads the file, builds
the dataclasses (values coerced to each field's type), applies the dotted overrides and validates the
result. An unknown key raises `ConfigError` listing the valid ones; a bad value names its key; an error
while reading a file names the file.

Field types understood: `bool`, `int`, `float`, `str`, `str`-valued `Enum`s, `list[X]`, `dict[str, X]`,
`Any` (plain YAML), nested dataclasses (also `Dataclass | None`), `X | None`, and `str | list[str]`.
A `key=value` value is read as the field's type: `optim.lr=1e-5`, `loss.loss_type=[sigmoid,sft]`,
`model.lora.target_modules=q_proj,v_proj`, `eval.task=null`, `variants={sft: [method=sft]}`; a key below
a `dict[str, Any]` field sets that nested entry (`run.train.max_steps=10`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import types
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from localdpo.storage.fileio import atomic_write_text

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the key (and the file when there is one)."""


_NULLS = ("null", "none", "~", "")
_TRUES, _FALSES = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(tp) -> tuple[Any, bool]:
    """`(X, True)` for `X | None` (`(X | Y, True)` for `X | Y | None`), else `(tp, False)`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(tp) if a is not type(None))
        if len(args) < len(typing.get_args(tp)):
            return functools.reduce(operator.or_, args), True
    return tp, False


def _dataclass_type(tp) -> type | None:
    """The dataclass of a field typed `Dataclass` or `Dataclass | None`, else None."""
    inner, _ = _optional_inner(tp)
    return inner if isinstance(inner, type) and dataclasses.is_dataclass(inner) else None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _yaml_text(value: str, opener: str) -> Any:
    """A `key=value` string parsed as YAML when it opens with `opener` (`[`, `{`; `""`: always), else itself."""
    if value.strip().startswith(opener):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError from None
    return value


def valid_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of the config dataclass `cls` (leaves only; a `dict` field is one key)."""
    keys = []
    for f in dataclasses.fields(cls):
        nested = _dataclass_type(_hints(cls)[f.name])
        keys += valid_keys(nested, f"{prefix}{f.name}.") if nested else [prefix + f.name]
    return keys


def coerce(value: Any, tp, key: str) -> Any:
    """`value` (from YAML, or a `key=value` string) converted to the field type `tp`; `ConfigError` if it cannot be."""
    inner, optional = _optional_inner(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NULLS):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be null")
    origin = typing.get_origin(inner)
    try:
        if inner is Any:
            return _yaml_text(value, "[") if isinstance(value, str) else value
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            return from_dict(_yaml_text(value, "{") if isinstance(value, str) else value, inner, f"{key}.")
        if isinstance(inner, type) and issubclass(inner, Enum):
            try:
                return inner(value)
            except ValueError:
                choices = ", ".join(m.value for m in inner)
                raise ConfigError(f"{key}={value!r}: expected one of {choices}") from None
        if inner is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUES:
                return True
            if text in _FALSES:
                return False
            raise ConfigError(f"{key}={value!r}: expected true or false")
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if inner is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if inner is list or origin is list:
            (item_type,) = typing.get_args(inner) or (Any,)
            if isinstance(value, str):
                value = _yaml_text(value, "[")
                if isinstance(value, str):
                    value = [v for v in value.split(",") if v]
            if not isinstance(value, list):
                value = [value]  # a scalar is a one-item list (`loss_type: dpop`)
            return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        if inner is dict or origin is dict:
            _, item_type = typing.get_args(inner) or (str, Any)
            if isinstance(value, str):
                value = _yaml_text(value, "")
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
            return {str(k): coerce(v, item_type, f"{key}.{k}") for k, v in value.items()}
        if origin in (typing.Union, types.UnionType):  # `str | list[str]`: a list when given one
            args = typing.get_args(inner)
            as_list = next((a for a in args if typing.get_origin(a) is list), None)
            if as_list is not None and (
                isinstance(value, list) or (isinstance(value, str) and value.strip().startswith("["))
            ):
                return coerce(value, as_list, key)
            scalar = next((a for a in args if typing.get_origin(a) is not list), None)
            if scalar is not None:
                return coerce(value, scalar, key)
    except ConfigError:
        raise
    except (ValueError, TypeError):
        raise ConfigError(f"{key}={value!r}: expected {_type_name(inner)}") from None
    raise ConfigError(f"{key}: unsupported field type {tp}")


def from_dict(data: dict[str, Any], cls: type[C], prefix: str = "") -> C:
    """A config dataclass from a nested dict; unknown keys raise `ConfigError` listing the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; valid keys: {', '.join(valid_keys(cls, prefix))}"
            )
        tp = hints[key]
        nested = _dataclass_type(tp)
        if nested is not None and not (value is None and nested is not tp):
            kwargs[key] = from_dict(value or {}, nested, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, tp, prefix + key)
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (enums as their values): what YAML and W&B get."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def enum_fields(config: Any, prefix: str = "") -> Any:
    """`config` with every enum field set from code as a plain string made its member (`ConfigError` if none)."""
    for f in dataclasses.fields(config):
        tp, value = _hints(type(config))[f.name], getattr(config, f.name)
        inner, _ = _optional_inner(tp)
        if dataclasses.is_dataclass(value):
            enum_fields(value, f"{prefix}{f.name}.")
        elif isinstance(inner, type) and issubclass(inner, Enum) and value is not None and not isinstance(value, inner):
            setattr(config, f.name, coerce(value, tp, prefix + f.name))
    return config


def get_value(config: Any, key: str) -> Any:
    """The value of a dotted key (`optim.lr`) of a config."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def apply_override(config: Any, item: str) -> None:
    """Set one `dotted.key=value` on the config dataclass `config` in place, parsed to the field's type."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-5)")
    key, value = item.split("=", 1)
    set_value(config, key.strip(), value, text=True)


def set_value(config: Any, key: str, value: Any, *, text: bool = False) -> None:
    """Set one dotted `key` (`optim.lr`) of the config dataclass `config` in place to `value` converted to the
    field's type (`coerce`): a typed value (from YAML or code), or with `text` the text of a `key=value`."""
    parts = key.split(".")
    node, root = config, type(config)
    for depth, part in enumerate(parts):
        cls = type(node)
        hints = _hints(cls)
        if part not in hints or part not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(valid_keys(root))}")
        tp, rest = hints[part], parts[depth + 1 :]
        nested = _dataclass_type(tp)
        if rest and nested is not None:
            if getattr(node, part) is None:  # `select.validation_prompts=3` on an unset `select`
                setattr(node, part, nested())
            node = getattr(node, part)
            continue
        if rest:
            inner, _ = _optional_inner(tp)
            if not (inner is dict or typing.get_origin(inner) is dict):
                raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(valid_keys(root))}")
            _set_entry(node, part, inner, rest, value, key, text)
        else:
            setattr(node, part, coerce(value, tp, key))
        return


def _set_entry(node: Any, name: str, tp, path: list[str], value: Any, key: str, text: bool) -> None:
    """Set `path` inside the dict field `name` of `node`: the value typed by the dict's value type."""
    _, item_type = typing.get_args(tp) or (str, Any)
    mapping = dict(getattr(node, name) or {})
    setattr(node, name, mapping)
    if len(path) == 1:
        mapping[path[0]] = coerce(value, item_type, key)
        return
    if item_type is not Any:
        raise ConfigError(f"{key}: {'.'.join(path[:1])} holds {_type_name(item_type)}, not a mapping")
    leaf = mapping
    for part in path[:-1]:  # untyped YAML below (`run:` is checked when its `RunConfig` is built)
        child = leaf.get(part)
        leaf[part] = child = dict(child) if isinstance(child, dict) else {}
        leaf = child
    leaf[path[-1]] = yaml.safe_load(value) if text else value


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """The mapping in a YAML file; `ConfigError` naming the file when it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(error).split())}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data or {}


def build(
    cls: type[C],
    data: dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    validate: Callable[[C], C] | None = None,
    source: str | os.PathLike | None = None,
) -> C:
    """The validated `cls` from a nested dict plus `key=value` overrides; errors name `source` when given."""
    try:
        config = from_dict(data, cls)
        for item in overrides:
            apply_override(config, item)
        return validate(config) if validate is not None else config
    except ConfigError as error:
        if source is not None:
            raise ConfigError(f"{source}: {error}") from None
        raise


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically (`localdpo.storage.fileio`); returns the path."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
