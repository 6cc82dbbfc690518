"""Typed configs from plain YAML: a mapping is turned into a dataclass, checked field by
field, and every error is a :class:`ConfigError` that names the dotted key.

Generic (nothing here knows the project's configs): :mod:`interformer_rec.config`
defines the dataclasses and loads them with these functions.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Literal, Sequence, Tuple

import yaml


class ConfigError(ValueError):
    """A config (file, mapping or dataclass) that cannot be turned into a valid one."""


MAX_CONFIG_BYTES = 1 << 20
MAX_EXCERPT = 120


def excerpt(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_EXCERPT` characters for error messages."""
    text = repr(value)
    return text if len(text) <= MAX_EXCERPT else f"{text[:MAX_EXCERPT]}... ({len(text):,} characters)"


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={excerpt(value)}: {rule}")


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a config needs none, and a
    few hundred bytes of nested aliases expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{event.anchor}: YAML aliases are not accepted in configs", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml_text(text: str) -> Any:
    """One YAML document, plain data only, without aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: v >= 1, "must be >= 1"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "layers": (lambda v: all(n >= 1 for n in v), "layer sizes must be >= 1"),
    "hidden": (lambda v: bool(v) and all(n >= 1 for n in v), "needs at least one hidden layer, sizes >= 1"),
    "rate": (lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)"),
}


class Checked:
    """A model section whose construction checks its fields: ``_checks`` maps a rule of
    ``_RULES`` to field names, and every ``Literal`` field must hold one of its choices
    (a config built in code skips the loader's type checks). Errors name ``_key.field``."""

    _key: ClassVar[str] = ""
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the key of the first field out of range."""
        for rule, names in self._checks.items():
            ok, message = _RULES[rule]
            for name in names:
                require(ok(getattr(self, name)), f"{self._key}.{name}", getattr(self, name), message)
        for name, tp in typing.get_type_hints(type(self)).items():
            if typing.get_origin(tp) is Literal:
                choices = list(typing.get_args(tp))
                require(getattr(self, name) in choices, f"{self._key}.{name}", getattr(self, name), f"use {choices}")


def build(tp: Any, value: Any, where: str) -> Any:
    """Turn plain YAML ``value`` into an instance of type ``tp``, checking as it goes."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return build(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - fields
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
        # a partial mapping for a nested dataclass completes that field's own default
        # (e.g. train.embedding_optimizer: {lr: 0.02} keeps the default name adagrad)
        defaults = {
            f.name: dataclasses.asdict(f.default_factory())
            for f in dataclasses.fields(tp)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(hints[f.name])
        }
        value = {
            k: merge(defaults[k], v) if k in defaults and isinstance(v, dict) else v
            for k, v in value.items()
        }
        kwargs = {k: build(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{where or 'config'}: {e}") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {excerpt(value)}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    """Read a YAML config; a top-level ``base: other.yaml`` (relative to this file) is
    read first and this file's keys are deep-merged over it."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        if not path.is_file():
            raise ConfigError(f"config {path}: not a file" if path.exists() else f"config file not found: {path}")
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path}: larger than {MAX_CONFIG_BYTES:,} bytes; not a config")
        raw = load_yaml_text(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config {path}: unreadable ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base={excerpt(base)}: expected the path of another config file")
    return merge(read_yaml(path.parent / base, (*seen, path.resolve())), raw)


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Set ``dotted.key=value`` strings (value parsed as YAML) in the mapping ``raw``."""
    for item in overrides:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        node = raw
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        try:
            node[parts[-1]] = load_yaml_text(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: {key}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return raw
