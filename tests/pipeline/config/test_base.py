"""The shared config loader: types, unknown keys, overrides, composition, validation order."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from pipeline.config.base import OWN_KEYS, ConfigError, apply_overrides, check, load_config, validate_tree


@dataclass
class Inner:
    size: int = 4
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5

    def validate(self):
        check(self.size > 0, "size", f"must be > 0, got {self.size}")   # named relative to this node


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: Optional[int] = None


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  size: 8\n")
    cfg = load_config(Outer, p, ["inner.mode=b", "inner.rate=1", "tags=[x, y]", "limit=3"])
    assert cfg.name == "run" and cfg.inner.size == 8 and cfg.inner.mode == "b"
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.tags == ["x", "y"] and cfg.limit == 3


def test_base_composition(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner: {size: 2, mode: b}\n")
    (tmp_path / "c.yaml").write_text("base: base.yaml\ninner: {size: 3}\n")
    cfg = load_config(Outer, tmp_path / "c.yaml")
    assert (cfg.name, cfg.inner.size, cfg.inner.mode) == ("base", 3, "b")


@pytest.mark.parametrize("override,needle", [
    ("inner.sise=3", "unknown key inner.sise"),
    ("inner.size=abc", "inner.size: expected an integer"),
    ("inner.mode=c", "inner.mode: 'c' is not allowed (allowed: 'a', 'b')"),
    ("inner.size=0", "inner.size: must be > 0"),
    ("inner.size=true", "inner.size: expected an integer"),
    ("name=3", "name: expected a string"),
    ("nokey", "must look like key.path=value"),
])
def test_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, data={}, overrides=[override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(Outer, tmp_path / "bad.yaml")


def test_exponent_floats_in_files_and_overrides(tmp_path):
    @dataclass
    class Opt:
        lr: float = 0.1
        eps: float = 0.1

    p = tmp_path / "o.yaml"
    p.write_text("lr: 1e-3\n")
    cfg = load_config(Opt, p, ["eps=5E-8"])
    assert cfg.lr == 1e-3 and cfg.eps == 5e-8


def test_validate_names_keys_relative_and_the_walker_adds_the_section():
    @dataclass
    class Leaf:
        n: int = 1

        def validate(self):
            check(self.n >= 1, "n", f"must be >= 1, got {self.n}")

    @dataclass
    class Mid:
        leaf: Leaf = field(default_factory=Leaf)
        own: Leaf = field(default_factory=Leaf, metadata=OWN_KEYS)

    @dataclass
    class Top:
        mid: Mid = field(default_factory=Mid)

    for override, message in [("mid.leaf.n=0", "mid.leaf.n: must be >= 1, got 0"),
                              ("mid.own.n=0", "mid.n: must be >= 1, got 0")]:   # OWN_KEYS: no "own."
        with pytest.raises(ConfigError) as e:
            load_config(Top, data={}, overrides=[override])
        assert str(e.value) == message
    with pytest.raises(ConfigError) as e:
        validate_tree(Leaf(n=0), "leaf")
    assert str(e.value) == "leaf.n: must be >= 1, got 0" and e.value.key == "leaf.n"


def test_validate_does_not_mutate_and_resolve_fills_derived_defaults():
    @dataclass
    class Sched:
        steps: int = 10
        decay: Optional[int] = None

        def resolve(self):
            if self.decay is None:
                self.decay = self.steps

        def validate(self):
            check(self.decay is None or self.decay >= 1, "decay", "must be >= 1")

    cfg = Sched()
    validate_tree(cfg)
    assert cfg.decay is None                       # validation only checks
    assert load_config(Sched, data={"steps": 7}).decay == 7


def test_override_hook_opens_a_non_mapping_section_in_order():
    opened = []

    def open_section(keys, value):
        opened.append((keys, value))
        return {"from": value} if keys == ("ref",) else value

    data = apply_overrides({}, ["ref=x.yaml", "ref.n=2", "a.b=3"], open_section=open_section)
    assert data == {"ref": {"from": "x.yaml", "n": 2}, "a": {"b": 3}} and opened == [(("ref",), "x.yaml")]
    with pytest.raises(ConfigError, match="override a.b.c: b is not a section"):
        apply_overrides({"a": {"b": 3}}, ["a.b.c=1"], open_section=open_section)
