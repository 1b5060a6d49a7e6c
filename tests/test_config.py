"""The one config layer (`localdpo.config`) on every field type the package's configs use."""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest

from localdpo.config import (
    ConfigError,
    apply_override,
    build,
    enum_fields,
    from_dict,
    save_config,
    set_value,
    to_dict,
)


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Inner:
    n: int = 1
    """A number."""


@dataclass
class Outer:
    name: str | list[str] = "a"
    color: Color = Color.RED
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: dict[str, list[str]] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    nested: dict[str, dict[str, list]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None


def test_every_field_type_from_key_value_overrides():
    config = build(
        Outer,
        {},
        [
            "name=[x, y]",
            "color=blue",
            "seeds=[1,2]",
            "variants={a: [method=sft], b: [method=dpo, loss.beta=0.5]}",
            "grid={optim.lr: [1.0e-3, 1.0e-5]}",
            "nested={b: {loss.beta: [0.1]}}",
            "run.train.max_steps=10",
            "run.train.seed=3",
            "inner.n=5",
            "maybe.n=7",
        ],
    )
    assert config.name == ["x", "y"]
    assert config.color is Color.BLUE
    assert config.seeds == [1, 2]
    assert config.variants == {"a": ["method=sft"], "b": ["method=dpo", "loss.beta=0.5"]}
    assert config.grid == {"optim.lr": [0.001, 1e-05]}
    assert config.nested == {"b": {"loss.beta": [0.1]}}
    assert config.run == {"train": {"max_steps": 10, "seed": 3}}
    assert config.inner.n == 5 and config.maybe == Inner(n=7)
    assert build(Outer, {"name": "single"}).name == "single"
    assert build(Outer, {}, ["variants.a=[method=ldpo]"]).variants == {"a": ["method=ldpo"]}


def test_unknown_keys_list_the_valid_ones_and_bad_values_name_their_key():
    valid = "valid keys: name, color, seeds, variants, grid, nested, run, inner.n, maybe.n"
    with pytest.raises(ConfigError, match=rf"unknown config key 'colour'; {valid}$"):
        build(Outer, {}, ["colour=red"])
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.m'; valid keys: inner.n$"):
        from_dict({"inner": {"m": 1}}, Outer)
    with pytest.raises(ConfigError, match=r"unknown config key 'maybe.m'"):
        build(Outer, {}, ["maybe={m: 1}"])
    with pytest.raises(ConfigError, match=r"color='green': expected one of red, blue"):
        build(Outer, {"color": "green"})
    with pytest.raises(ConfigError, match=r"seeds\[1\]='b': expected int"):
        build(Outer, {}, ["seeds=[1,b]"])
    with pytest.raises(ConfigError, match=r"variants: expected a mapping, got list"):
        build(Outer, {}, ["variants=[a]"])
    with pytest.raises(ConfigError, match=r"variants.a\[0\]=\{'x': 1\}: expected str"):
        build(Outer, {"variants": {"a": [{"x": 1}]}})
    with pytest.raises(ConfigError, match=r"^cfg.yaml: unknown config key"):
        build(Outer, {"x": 1}, source="cfg.yaml")


def test_an_enum_set_from_code_as_a_string_becomes_its_member_or_an_error():
    config = Outer()
    config.color = "blue"
    assert enum_fields(config).color is Color.BLUE
    config.color = "green"
    with pytest.raises(ConfigError, match=r"color='green': expected one of red, blue"):
        enum_fields(config)


def test_saved_yaml_round_trips(tmp_path):
    config = build(Outer, {}, ["color=blue", "maybe.n=2", "name=[p, q]", "run.eval.every=3"])
    path = save_config(config, tmp_path / "c.yaml")
    assert "color: blue" in path.read_text()
    assert build(Outer, __import__("yaml").safe_load(path.read_text())) == config
    assert to_dict(config)["maybe"] == {"n": 2}


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match=r"override 'seeds': expected key=value"):
        apply_override(Outer(), "seeds")


def test_set_value_sets_a_typed_value_as_its_key_value_text_would():
    """A value from YAML or code (a grid point's) converts to the field's type like the same `key=value` text,
    with no round trip through a string: `inner.n` 5.0 -> 5, a typed list stays a list, `run.a.b` keeps 0.5."""
    typed, text = Outer(), Outer()
    for key, value, item in [
        ("inner.n", 5.0, "inner.n=5"),
        ("color", "blue", "color=blue"),
        ("seeds", [1, 2], "seeds=[1,2]"),
        ("maybe.n", 7, "maybe.n=7"),
        ("run.train.lr", 0.5, "run.train.lr=0.5"),
    ]:
        set_value(typed, key, value)
        apply_override(text, item)
    assert typed == text
    assert typed.inner.n == 5 and typed.color is Color.BLUE and typed.run == {"train": {"lr": 0.5}}
    with pytest.raises(ConfigError, match=r"inner.n='x': expected int"):
        set_value(typed, "inner.n", "x")
    with pytest.raises(ConfigError, match="unknown config key 'inner.m'"):
        set_value(typed, "inner.m", 1)
