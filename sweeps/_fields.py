"""Field readers for sweep specs: each checks one YAML value and raises a one-line `ConfigError`.

The error names the dotted field, the value and what is allowed, e.g. ``train.epochs=0 is not
allowed; allowed: an integer >= 1``. `Section` hands out the keys of one YAML mapping and refuses
keys nobody asked for. Numbers may be written as fractions (``"8/255"``), parsed by a regular
expression, never ``eval``. Used by `sweeps.spec` and `sweeps.hpo`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

__all__ = ["fail", "parse_number", "as_float", "as_int", "as_choice", "as_name", "as_list",
           "as_location", "check_unique", "Section"]

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
        lo_s, hi_s = ("-inf" if lo is None else f"{lo:g}"), ("inf" if hi is None else f"{hi:g}")
        raise fail(field, value, f"a number in {'(' if lo_open else '['}{lo_s}, {hi_s}"
                                 f"{')' if hi_open else ']'}")
    return out


def as_int(value: Any, field: str, *, lo: int | None = None) -> int:
    """An integer ``>= lo``; floats such as ``3.0`` and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo):
        raise fail(field, value, "an integer" + (f" >= {lo}" if lo is not None else ""))
    return value


def as_choice(value: Any, field: str, allowed: Sequence[str]) -> str:
    """One of ``allowed``, with a did-you-mean hint for near misses."""
    if not isinstance(value, str) or value not in allowed:
        close = difflib.get_close_matches(value, list(allowed), n=1) if isinstance(value, str) else []
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
