"""The shared config loader: types, unknown keys, overrides, composition, validation order."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from pipeline.config.base import ConfigError, check, load_config


@dataclass
class Inner:
    size: int = 4
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5

    def validate(self):
        check(self.size > 0, "inner.size", f"must be > 0, got {self.size}")


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
