"""The spec's optional ``analysis:`` block: what ``python -m sweeps demo`` computes after training.

`parse_analysis` reads the block into an `AnalysisSpec` at load time (one-line errors naming the
field, like the rest of the spec), checking its shape only: the measure and input-set names are
checked against their registries by `check_analysis`, which imports the analysis (seconds), so
``demo`` calls it before it trains anything and a typo never costs a sweep. Without the block the
demo runs what it always did: the demo's measure set on the clean inputs, the reproduction's
default inversion. Field reference: docs/spec-reference.md, section ``analysis``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sweeps._fields import Section, as_int, as_list, check_unique, fail
from trainables.errors import UserError

__all__ = ["AnalysisSpec", "parse_analysis", "check_analysis", "repro_config"]

# ``name`` or ``name:key=value[:key=value...]``, as ``python -m analysis run`` takes them.
_ITEM = re.compile(r"^[a-z][a-z0-9_]*(:[A-Za-z_][A-Za-z0-9_]*=[^:]+)*$")


@dataclass(frozen=True)
class AnalysisSpec:
    """The demo's analysis of the sweep.

    Attributes:
        measures: measure specs (``knn_jaccard:k=10``); None: the demo's default set
            (``analysis.engine.DEMO_MEASURES``).
        input_sets: input-set specs (``clean``, ``inverted:iterations=200:num_targets=100``).
            The reproduction inverts with the ``inverted`` set's iterations and targets, so the
            inversions are computed once and shared.
        inversion_iterations_alt: iterations of the reproduction's inversion sensitivity run;
            0 skips it; None: the reproduction's default (SPEC §4: 2,000).
    """

    measures: tuple[str, ...] | None = None
    input_sets: tuple[str, ...] = ("clean",)
    inversion_iterations_alt: int | None = None


def _specs(value: Any, field: str) -> tuple[str, ...]:
    raw = as_list(value, field)
    for i, item in enumerate(raw):
        if not isinstance(item, str) or _ITEM.match(item.strip()) is None:
            raise fail(f"{field}[{i}]", item, "a name, optionally with options, such as "
                       "knn_jaccard:k=10 or inverted:iterations=200")
    out = tuple(item.strip() for item in raw)
    check_unique(out, field, raw)
    return out


def parse_analysis(sec: Section) -> AnalysisSpec:
    """Validate the ``analysis:`` block's shape (names are checked by `check_analysis`)."""
    measures = sec.get("measures", None)
    alt = sec.get("inversion_iterations_alt", None)
    spec = AnalysisSpec(
        measures=None if measures is None else _specs(measures, sec.field("measures")),
        input_sets=_specs(sec.get("input_sets", ["clean"]), sec.field("input_sets")),
        inversion_iterations_alt=None if alt is None else as_int(
            alt, sec.field("inversion_iterations_alt"), lo=0))
    sec.done()
    if "clean" not in {s.split(":")[0] for s in spec.input_sets}:
        raise fail(sec.field("input_sets"), list(spec.input_sets), "a list holding clean "
                   "(the report and the reproduction compare the clean inputs)",
                   problem="lacks clean")
    return spec


def check_analysis(spec: AnalysisSpec) -> None:
    """Check the names and options against the measure and input-set registries.

    Raises:
        ConfigError / MeasureInputError (both ``UserError``): ``analysis.measures[1]=...``
            naming the entry and what the registry says.
    """
    # the analysis (numpy, scipy, the measures): only for commands that will run it
    from analysis.engine import parse_measure
    from analysis.inputs import parse_input_set

    for field, items, parse in (("analysis.measures", spec.measures or (), parse_measure),
                                ("analysis.input_sets", spec.input_sets, parse_input_set)):
        for i, item in enumerate(items):
            try:
                parse(item)
            except UserError as exc:
                raise type(exc)(f"{field}[{i}]={item!r}: {exc}") from None


def repro_config(spec: AnalysisSpec):
    """The reproduction's ``ReproConfig``: its inversion is the ``inverted`` input set's
    (iterations, targets), so both share one cached inversion per model; None: the defaults."""
    # the reproduction (torch): only once the demo gets that far
    from analysis.inputs import parse_input_set
    from analysis.reproduction.study import ReproConfig

    inverted = [parse_input_set(s) for s in spec.input_sets if s.split(":")[0] == "inverted"]
    if not inverted and spec.inversion_iterations_alt is None:
        return None
    kwargs: dict[str, Any] = {}
    if inverted:
        params = inverted[0].params()
        kwargs.update(inversion_iterations=params["iterations"],
                      inversion_targets=params["num_targets"])
    if spec.inversion_iterations_alt is not None:
        kwargs["inversion_iterations_alt"] = spec.inversion_iterations_alt or None
    return ReproConfig(**kwargs)
