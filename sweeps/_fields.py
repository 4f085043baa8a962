"""Field readers for sweep specs: each checks one YAML value and raises a one-line `ConfigError`.

The error names the dotted field, the value and what is allowed, e.g. ``train.epochs=0 is not
allowed; allowed: an integer >= 1``. `Section` hands out the keys of one YAML mapping and refuses
keys nobody asked for. Numbers may be written as fractions (``"8/255"``), parsed by a regular
expression, never ``eval``. `read_section` reads a section whose keys are declared settings
(`trainables.config`: ``dataset``, ``train``, ``eval``) and `section_class` makes the frozen
dataclass that holds it. Used by `sweeps.spec` and `sweeps.spec_hpo`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from trainables.settings import Rule, Setting, describe_range

__all__ = ["fail", "parse_number", "as_float", "as_int", "as_choice", "as_name", "as_list",
           "as_location", "check_unique", "Section", "read_value", "read_section",
           "section_class"]

_REQUIRED = object()
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_OR_FRACTION = re.compile(rf"^\s*({_NUMBER})\s*(?:/\s*({_NUMBER}))?\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def fail(field: str, value: Any, allowed: str, *, problem: str | None = None) -> ConfigError:
    """The one-line error: ``field=value is not allowed (or: problem); allowed: ...``."""
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ConfigError(f"{field}={shown} {problem or 'is not allowed'}; allowed: {allowed}")


def parse_number(value: Any, field: str) -> float:
    """A finite float from a YAML number or a string like ``"8/255"`` or ``"5e-4"``."""
    allowed = "a number such as 0.5, 5e-4 or a fraction such as 8/255"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise fail(field, value, allowed)
    if isinstance(value, str):
        match = _NUMBER_OR_FRACTION.match(value)
        if match is None:
            raise fail(field, value, allowed)
        num, den = float(match.group(1)), match.group(2)
        if den is not None and float(den) == 0.0:
            raise fail(field, value, allowed, problem="divides by zero")
        value = num / float(den) if den is not None else num
    out = float(value)
    if not math.isfinite(out):
        raise fail(field, value, "a finite number")
    return out


def as_float(value: Any, field: str, *, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False, hi_open: bool = False) -> float:
    """A float in ``[lo, hi]`` (either end open when asked)."""
    out = parse_number(value, field)
    if (lo is not None and (out <= lo if lo_open else out < lo)) or \
            (hi is not None and (out >= hi if hi_open else out > hi)):
        raise fail(field, value, describe_range(integer=False, lo=lo, hi=hi, lo_open=lo_open,
                                                hi_open=hi_open))
    return out


def as_int(value: Any, field: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer in ``[lo, hi]``; floats such as ``3.0`` and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        raise fail(field, value, describe_range(integer=True, lo=lo, hi=hi))
    return value


def as_choice(value: Any, field: str, allowed: Sequence[str]) -> str:
    """One of ``allowed``, with a did-you-mean hint for near misses."""
    if not isinstance(value, str) or value not in allowed:
        close = (difflib.get_close_matches(value, list(allowed), n=1)
                 if isinstance(value, str) else [])
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise fail(field, value, ", ".join(allowed) + hint)
    return value


def as_name(value: Any, field: str) -> str:
    """A name safe for directories and MLflow: letters, digits, ``_ . -``, at most 100 chars."""
    if not isinstance(value, str) or _NAME.match(value) is None:
        raise fail(field, value, "letters, digits, '_', '.', '-' (starting with a letter or digit,"
                                 " at most 100 characters)")
    return value


def as_list(value: Any, field: str, *, allow_scalar: bool = False) -> list[Any]:
    """A non-empty list (one scalar becomes a one-item list when ``allow_scalar``)."""
    if allow_scalar and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise fail(field, value, "a list" + (" or a single value" if allow_scalar else ""))
    if not value:
        raise fail(field, value, "a non-empty list", problem="is an empty grid axis")
    return list(value)


def check_unique(values: Sequence[Any], field: str, raw: Sequence[Any]) -> None:
    """Refuse duplicate grid values: each cell must run exactly once."""
    first: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value in first:
            raise fail(f"{field}[{i}]", raw[i], "distinct values",
                       problem=f"duplicates {field}[{first[value]}]")
        first[value] = i


class Section:
    """One mapping of the YAML tree: hands out values by key and refuses unread keys."""

    def __init__(self, raw: Any, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise fail(path or "spec", raw, "a mapping of keys to values")
        self.raw, self.path, self._read = dict(raw), path, []

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        """The raw value of ``key``; ``default`` when absent or null; error when required."""
        self._read.append(key)
        value = self.raw.get(key)
        if value is None and default is _REQUIRED:
            raise fail(self.field(key), None, "a value", problem="is missing (required)")
        return default if value is None else value

    def done(self) -> None:
        """Raise on the first key no reader asked for, suggesting the closest known key."""
        known = sorted(set(self._read))
        for key in self.raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f"in '{self.path}'" if self.path else "at the top level"
                raise ConfigError(f"{self.field(str(key))}: unknown key {where}{hint}; "
                                  f"allowed: {', '.join(known)}")


def as_location(value: Any, field: str, *, home: Path) -> str:
    """A URI (``s3://...``) unchanged, or a local path made absolute against UNISWEEP_HOME."""
    if not isinstance(value, str) or not value.strip():
        raise fail(field, value, "a path or a URI such as s3://bucket/prefix")
    value = os.path.expandvars(value.strip())
    if ("://" in value and not value.startswith("file://")) or "$" in value:
        return value  # a URI, or a path naming a variable unset here (set on the cluster)
    local = Path(value.removeprefix("file://")).expanduser()
    return str(local if local.is_absolute() else (home / local).resolve())


def read_value(value: Any, field: str, rule: Rule, *, home: Path | None = None) -> Any:
    """One spec value checked against a declared `Rule` (numbers may be fractions, a near-miss
    name gets a did-you-mean hint, a path is made absolute against ``home``)."""
    if rule.kind == "choice":
        return as_choice(value, field, rule.values())
    if rule.kind == "int":
        return as_int(value, field, lo=rule.lo, hi=rule.hi)
    if rule.kind == "float":
        return as_float(value, field, lo=rule.lo, hi=rule.hi, lo_open=rule.lo_open)
    if rule.kind == "path":
        if home is None:
            raise ValueError(f"{field}: a path needs the home directory to resolve against")
        return as_location(value, field, home=home)
    if rule.kind == "floats":
        raw = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) \
            else value
        if not isinstance(raw, (list, tuple)):
            raise fail(field, raw, rule.describe())
        out = tuple(read_value(v, f"{field}[{i}]", rule.item()) for i, v in enumerate(raw))
        check_unique(out, field, raw)
        return out
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def read_section(sec: Section, settings: Mapping[str, Setting], *,
                 home: Path | None = None) -> dict[str, Any]:
    """Every declared key of one spec section: its checked value, or the declared default when
    it is absent or null. Unknown keys are errors (with a did-you-mean hint)."""
    out = {}
    for key, s in settings.items():
        value = sec.get(key) if s.required else sec.get(key, s.default)
        out[key] = None if value is None else read_value(value, sec.field(key), s.rule, home=home)
    sec.done()
    return out


def section_class(name: str, settings: Mapping[str, Setting], *, module: str) -> type:
    """A frozen dataclass with one attribute per key of a spec section, in declaration order
    (required keys first), defaulting to the declared defaults."""
    keys = sorted(settings, key=lambda k: not settings[k].required)  # stable: order kept
    fields = [(k, Any) if settings[k].required else
              (k, Any, dataclasses.field(default=settings[k].default)) for k in keys]
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = module
    cls.__doc__ = (f"The spec's validated section of keys {', '.join(keys)} "
                   "(declared in trainables.config).")
    return cls
