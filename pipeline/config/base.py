"""Typed dataclass configs: YAML in, dotted overrides, strict up-front validation.

Every config in the project is a dataclass tree. `load_config` reads YAML, applies `a.b.c=value`
overrides, converts to the dataclasses with type checks, fills derived defaults (each node's `resolve()`),
then checks every node (`validate()`, bottom-up), so a bad value fails with one line naming the dotted key
before any process-group work starts.

A node's `validate()` only checks (it never changes a value) and names its fields relative to itself
(`check(cond, "max_steps", msg)`); `validate_tree` adds the section path, so the user reads
`train.max_steps: must be >= 1, got 0`. Derived defaults belong in `resolve()`, which the loader calls
before validation.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin, get_type_hints

import re

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice. Plain YAML loaders keep the last value silently, so a config
    edited by adding `lr: ...` below an old `lr:` would quietly use whichever comes last."""

    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r} (first on line {first_line}); YAML would keep only the last "
                         "value: remove one")
        self.key, self.line, self.first_line = key, line, first_line


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` / `5E+4` as floats (PyYAML follows YAML 1.1, which needs `1.0e-3`)
    and refuses a mapping that repeats a key (DuplicateKeyError, with the line numbers)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False):
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *anchor` keys may be overridden by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = first_line.get(key)
            except TypeError:                               # unhashable: SafeLoader reports it itself
                continue
            if first is not None:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1, first)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A one-line, user-facing configuration error naming the offending key.

    `ConfigError.at(key, detail)` (what `check` raises) also carries the key, relative to the node that
    raised it; `validate_tree` re-raises it under each enclosing section's name (`within`).
    """

    key: str | None = None
    detail: str | None = None

    @classmethod
    def at(cls, key: str, detail: str) -> "ConfigError":
        err = cls(f"{key}: {detail}")
        err.key, err.detail = key, detail
        return err

    def within(self, section: str) -> "ConfigError":
        """The same error with its key under `section` (itself when it carries no key or section is "")."""
        if self.key is None or not section:
            return self
        return ConfigError.at(f"{section}.{self.key}", self.detail)


# Field metadata (`field(metadata=OWN_KEYS)`) of a nested config whose error keys do not get the field's name:
# validate_tree walks into it without adding that section to its keys (the node names its keys itself).
_OWN_KEYS_FLAG = "config_own_keys"
OWN_KEYS = types.MappingProxyType({_OWN_KEYS_FLAG: True})


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed (allowed: {', '.join(map(repr, allowed))})")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (inner, *_) = get_args(tp) or (Any,)
        out = [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        _, vt = get_args(tp) or (Any, Any)
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            # YAML reads 12.8e6 as a float; accept integral floats for sizes like m.
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]} (allowed under {prefix or 'top level'}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_override_value(text: str, key: str = "") -> Any:
    """A command-line value, parsed like a YAML scalar (with `1e-3` read as a number); "" stays ""."""
    if text == "":
        return ""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}={text}: invalid YAML value ({str(e).splitlines()[0]})") from None


def apply_overrides(data: dict, overrides: list[str],
                    open_section: Callable[[tuple[str, ...], Any], Any] | None = None) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place, in order.

    Missing sections are created. `open_section(keys, value)`, when given, is called before an override
    descends into an existing value that is not a mapping (`keys`: that section's path) and returns what to
    use instead: a run config reads its `model: file.yaml` reference this way before `model.x=...`.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        node = data
        for i, k in enumerate(keys[:-1]):
            if open_section is not None and node.get(k) is not None and not isinstance(node[k], dict):
                node[k] = open_section(tuple(keys[: i + 1]), node[k])
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(f"override {path}: {k} is not a section")
            node = node[k]
        node[keys[-1]] = parse_override_value(raw, path.strip())
    return data


def _children(cfg: Any):
    """(field, value) of every nested dataclass node of `cfg`, in field order."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            yield f, v


def resolve_tree(cfg: Any) -> None:
    """Fill derived defaults: call resolve() on every dataclass node that has one, children first."""
    for _, v in _children(cfg):
        resolve_tree(v)
    if hasattr(cfg, "resolve"):
        cfg.resolve()


def validate_tree(cfg: Any, section: str = "") -> None:
    """Call validate() on every dataclass node, children first; keys of errors get their section path.

    `section` names `cfg` itself (e.g. "parallel" to check a ParallelConfig on its own as the run's
    `parallel:` section); "" for a root.
    """
    try:
        for f, v in _children(cfg):
            validate_tree(v, "" if f.metadata.get(_OWN_KEYS_FLAG) else f.name)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ConfigError as e:
        if e.key is None or not section:
            raise
        raise e.within(section) from None


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = parse_yaml(p.read_text()) or {}
    except DuplicateKeyError as e:
        raise ConfigError(f"{p}:{e.line}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    # `base: other.yaml` composes configs (paths relative to this file); keys here win.
    base = data.pop("base", None)
    if base is not None:
        merged = read_yaml(p.parent / base)
        _deep_merge(merged, data)
        data = merged
    return data


def _deep_merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Any:
    """YAML file (or dict) + dotted overrides -> resolved, validated dataclass tree of type `cls`."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    apply_overrides(raw, list(overrides or []))
    return build_config(cls, raw)


def build_config(cls: type, raw: dict) -> Any:
    """Mapping -> dataclass tree of type `cls`: converted (type checks), resolved, then validated."""
    cfg = from_dict(cls, raw)
    resolve_tree(cfg)
    validate_tree(cfg)
    return cfg


def check(cond: bool, key: str, msg: str) -> None:
    """Validation helper: raise ConfigError('key: msg') unless cond; `key` is relative to the node whose
    validate() calls it (validate_tree adds the section path)."""
    if not cond:
        raise ConfigError.at(key, msg)
