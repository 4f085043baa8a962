"""The registry of input sets by name: ``INPUT_SETS``, ``make_input_set`` and the
``name[:key=value...]`` parser the CLI's ``--input-sets`` goes through.

A new set subclasses ``analysis.inputs.base.InputSet`` and calls
``register_input_set(name, cls)``.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from analysis.inputs.base import InputSet
from analysis.inputs.inversion import InvertedInputs
from analysis.inputs.sets import (
    CleanInputs,
    OwnAdversarialInputs,
    SharedAdversarialInputs,
    TrainSplitInputs,
)
from trainables.errors import ConfigError

__all__ = ["INPUT_SETS", "register_input_set", "input_set_class", "input_set_options",
           "make_input_set", "parse_input_set"]

INPUT_SETS: dict[str, type[InputSet]] = {
    "clean": CleanInputs,
    "adv": OwnAdversarialInputs,
    "adv_shared": SharedAdversarialInputs,
    "inverted": InvertedInputs,
    "train_split": TrainSplitInputs,
}


def register_input_set(name: str, cls: type[InputSet]) -> None:
    """Register an input set class under ``name``."""
    INPUT_SETS[name] = cls


def input_set_class(name: str) -> type[InputSet]:
    """The class registered as ``name``; unknown names raise ``ConfigError`` listing the known."""
    if name not in INPUT_SETS:
        raise ConfigError(f"unknown input set {name!r}; known: {sorted(INPUT_SETS)}")
    return INPUT_SETS[name]


def input_set_options(name: str) -> list[str]:
    """The keyword options ``make_input_set(name, ...)`` accepts (constructor parameters)."""
    names: list[str] = []
    for klass in input_set_class(name).__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def make_input_set(name: str, **options: Any) -> InputSet:
    """Instantiate a registered input set by name.

    Raises:
        ConfigError: unknown name or option (each lists what is allowed), or a bad value.
    """
    cls = input_set_class(name)
    unknown = sorted(set(options) - set(input_set_options(name)))
    if unknown:
        raise ConfigError(f"input set {name!r}: unknown option(s) {unknown}; allowed: "
                          f"{input_set_options(name) or 'none'}")
    try:
        return cls(**options)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ConfigError(f"input set {name!r}: bad option value in {options}: {exc}") from None


def parse_input_set(text: str) -> InputSet:
    """``name[:key=value[:key=value...]]`` (values as JSON, else strings) -> an ``InputSet``.

    Raises:
        ConfigError: unknown set (lists the known ones), malformed or unknown option.
    """
    name, *parts = text.strip().split(":")
    options = {}
    for part in parts:
        key, eq, raw = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"input set spec {text!r}: {part!r} is not key=value")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw.strip()
    return make_input_set(name, **options)
