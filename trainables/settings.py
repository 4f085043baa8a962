"""How a setting is declared: its default, what it allows, one line of docs, where a spec sets it.

`trainables.config.TrainConfig` declares each of its fields with `setting(...)`; everything else
reads that one declaration: the config's own validation (`check`), the sweep spec's readers
(`sweeps._fields.read_section`), the flags of ``python -m trainables.train`` (`add_arguments`)
and the tables of docs/spec-reference.md (`markdown_table`). Torch-free, so that the spec layer
can import it without paying for torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainables.errors import ConfigError

__all__ = ["Rule", "Setting", "integer", "number", "numbers", "choice", "path", "setting",
           "settings_of", "describe_range", "check", "add_arguments", "markdown_table"]

_KEY = "unisweep.setting"  # the dataclass field metadata key holding a field's `Setting`


def describe_range(*, integer: bool, lo: float | None = None, hi: float | None = None,
                   lo_open: bool = False, hi_open: bool = False) -> str:
    """What a numeric range allows, as every message and the docs write it: ``an integer >= 1``,
    ``an integer in [0, 9]``, ``a number in (0, inf]``."""
    if integer and hi is None:
        return "an integer" + (f" >= {lo}" if lo is not None else "")
    fmt = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")  # 1000000, not 1e+06
    lo_s, hi_s = ("-inf" if lo is None else fmt(lo)), ("inf" if hi is None else fmt(hi))
    kind = "an integer" if integer else "a number"
    return f"{kind} in {'(' if lo_open else '['}{lo_s}, {hi_s}{')' if hi_open else ']'}"


@dataclass(frozen=True)
class Rule:
    """What one setting allows.

    ``kind`` is ``int``, ``float`` (bounds ``lo``/``hi``, ``lo`` open when ``lo_open``),
    ``floats`` (a list of such numbers), ``choice`` (``choices``: names, or a function returning
    them when the names live in a registry that is costly to import) or ``path`` (a string).
    ``optional``: None is allowed too.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] | Callable[[], Sequence[str]] = ()
    optional: bool = False

    def values(self) -> tuple[str, ...]:
        """The allowed names of a ``choice``."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def item(self) -> Rule:
        """The rule of one element of a ``floats`` list."""
        return dataclasses.replace(self, kind="float", optional=False)

    def describe(self) -> str:
        """What is allowed, as the error messages say it (``sgd, adam``, ``an integer >= 1``)."""
        if self.kind == "choice":
            return ", ".join(self.values())
        if self.kind == "path":
            return "a path or a URI"
        if self.kind == "floats":  # "a list of distinct numbers in [0, inf] (may be empty)"
            return ("a list of distinct numbers" + self.item().describe().removeprefix("a number")
                    + " (may be empty)")
        return describe_range(integer=self.kind == "int", lo=self.lo, hi=self.hi,
                              lo_open=self.lo_open)


def integer(lo: int, hi: int | None = None, *, optional: bool = False) -> Rule:
    return Rule("int", lo=lo, hi=hi, optional=optional)


def number(lo: float, hi: float | None = None, *, lo_open: bool = False,
           optional: bool = False) -> Rule:
    return Rule("float", lo=lo, hi=hi, lo_open=lo_open, optional=optional)


def numbers(lo: float, hi: float | None = None) -> Rule:
    return Rule("floats", lo=lo, hi=hi)


def choice(values: Sequence[str] | Callable[[], Sequence[str]]) -> Rule:
    return Rule("choice", choices=values if callable(values) else tuple(values))


def path() -> Rule:
    return Rule("path", optional=True)


@dataclass(frozen=True)
class Setting:
    """One declared setting.

    Attributes:
        default: the value when nobody sets it (also the spec's default).
        rule: what is allowed.
        doc: one line for the docs and ``--help`` (Markdown backticks allowed).
        spec: where a sweep spec sets it, ``"<section>.<key>"`` (e.g. ``"train.lr"``); None when
            the grid or the runner sets it (arch, eps, seed, threads, device).
        required: the spec must give it (no default there).
        tunable: the spec's ``hpo`` block may search over it.
        changes_weights: False for settings that cannot change the trained weights (evaluation,
            threads, paths); only those may differ when a run resumes from its checkpoint.
    """

    default: Any
    rule: Rule
    doc: str
    spec: str | None = None
    required: bool = False
    tunable: bool = False
    changes_weights: bool = True


def setting(default: Any, rule: Rule, doc: str, **declared: Any) -> Any:
    """A dataclass field that carries its `Setting` (keyword arguments: see `Setting`)."""
    return dataclasses.field(default=default,
                             metadata={_KEY: Setting(default, rule, doc, **declared)})


def settings_of(cls: type) -> dict[str, Setting]:
    """Field name -> `Setting` of a dataclass declared with `setting`, in declaration order."""
    return {f.name: f.metadata[_KEY] for f in dataclasses.fields(cls)}


def check(name: str, value: Any, rule: Rule) -> Any:
    """``value`` if ``rule`` allows it, normalised (numbers -> float, lists -> tuples).

    Strict: no strings for numbers, no floats for integers, no booleans for either.

    Raises:
        ConfigError: ``<name> must be <allowed>, got <name>=<value>``.
    """
    if value is None and rule.optional:
        return None
    if rule.kind == "choice":
        allowed = rule.values()
        if not isinstance(value, str) or value not in allowed:
            raise ConfigError(f"{name} must be one of {list(allowed)}, got {name}={value!r}")
        return value
    if rule.kind == "path":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a path string or null, got {name}={value!r}")
        return value
    if rule.kind == "floats":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list of numbers, got {name}={value!r}")
        return tuple(check(f"{name}[{i}]", v, rule.item()) for i, v in enumerate(value))
    is_int = rule.kind == "int"
    ok = not isinstance(value, bool) and isinstance(value, int if is_int else (int, float))
    ok = ok and math.isfinite(value) and (rule.lo is None or (
        value > rule.lo if rule.lo_open else value >= rule.lo)) and (
        rule.hi is None or value <= rule.hi)
    if not ok:
        raise ConfigError(f"{name} must be {rule.describe()}{' or null' if rule.optional else ''}"
                          f", got {name}={value!r}")
    return value if is_int else float(value)


def add_arguments(parser: argparse.ArgumentParser, settings: Mapping[str, Setting]) -> None:
    """One ``--flag-name`` per setting, with its default and its doc as help."""
    for name, s in settings.items():
        kind = s.rule.kind
        kwargs: dict[str, Any] = {
            "default": list(s.default) if kind == "floats" else s.default,
            "help": f"{s.doc} ({s.rule.describe()})".replace("`", "").replace("%", "%%")}
        if kind == "int":
            kwargs["type"] = int
        elif kind in ("float", "floats"):
            kwargs["type"] = float
        if kind == "floats":
            kwargs["nargs"] = "*"
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def _markdown_value(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, tuple):
        return f"`{list(value)}`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def markdown_table(settings: Mapping[str, Setting]) -> str:
    """A docs table ``| field | default | allowed |``: one row per setting, keyed as given."""
    rows = ["| field | default | allowed |", "|---|---|---|"]
    for key, s in settings.items():
        allowed = (", ".join(f"`{v}`" for v in s.rule.values()) if s.rule.kind == "choice"
                   else s.rule.describe())
        default = "required" if s.required else _markdown_value(s.default)
        rows.append(f"| `{key}` | {default} | {allowed}; {s.doc} |")
    return "\n".join(rows)
