"""From estimates to a target's verdict (SPEC §10): one entry per (measure, pair kind) with its
own three-way verdict, the headline (the primary measure on cross-architecture pairs) that
decides the target, and the sentence that says why.

An entry is ``{"measure", "kind", "status", "estimate"}`` with ``estimate`` =
``Estimate.to_dict()``; ``reproduction.json`` carries them as a target's ``measures``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from analysis.reproduction.predictions import declared
from analysis.reproduction.stats import (FAILS, HOLDS, INCONCLUSIVE, Estimate, PairSet,
                                         Prediction, decide, estimate)
from analysis.reproduction.study import TITLES, TargetResult

__all__ = ["KINDS", "entry", "judge", "why", "key_of", "headline", "find", "untested"]

#: Pair kinds in words.
KINDS = {"cross": "cross-architecture pairs",
         "intra": "same architecture, different seeds"}

Entry = dict[str, Any]


def entry(measure: str, kind: str, est: Estimate, pred: Prediction) -> Entry:
    """One measure's estimate on one pair kind, with its verdict against ``pred``."""
    return {"measure": measure, "kind": kind, "status": decide(est, pred),
            "estimate": est.to_dict()}


def judge(pairs: PairSet, contrast: Mapping[Hashable, float], measure: str, pred: Prediction, *,
          level: float, kinds: Sequence[str] = ("cross", "intra")) -> list[Entry]:
    """The entries of ``contrast`` on ``pairs`` for each pair kind."""
    return [entry(measure, k, estimate(pairs, contrast, kind=k, level=level), pred)
            for k in kinds]


def why(status: str, est: Estimate, pred: Prediction) -> str:
    """Why an estimate got its verdict, in words."""
    side = "above" if pred.direction > 0 else "below"
    other = "below" if pred.direction > 0 else "above"
    lvl = f"{100 * est.level:.0f}%"
    if status == HOLDS:
        return f"the whole {lvl} interval lies {side} {pred.margin:g}, as predicted"
    if status == FAILS:
        return f"the whole {lvl} interval lies {other} {pred.margin:g}, against the prediction"
    if not est.has_interval:
        return "inconclusive: there is no interval, so the data cannot tell"
    return f"inconclusive: the {lvl} interval contains {pred.margin:g}, so the data cannot tell"


def key_of(e: Entry) -> dict[str, Any]:
    """The ``key`` of a result from an entry: the one number the verdict rests on."""
    return {"measure": e["measure"], "kind": e["kind"], **e["estimate"]}


def find(entries: Sequence[Entry], measure: str, kind: str = "cross") -> Entry | None:
    """The entry of ``measure`` on ``kind`` pairs, if any."""
    return next((e for e in entries if e["measure"] == measure and e["kind"] == kind), None)


def _said(e: Entry, pred: Prediction) -> str:
    est = Estimate.from_dict(e["estimate"])
    return f"{est.text()}: {why(e['status'], est, pred)}"


def headline(number: int, entries: list[Entry], figures: dict[str, Any], *,
             note: str = "", trend: list[dict[str, Any]] | None = None) -> TargetResult:
    """The target's result: the primary measure's cross-architecture verdict decides; its
    intra-architecture estimate and the other measures' verdicts are reported beside it."""
    d = declared(number)
    head = find(entries, d.primary)
    pred = d.prediction
    if head is None:  # a configuration without the primary measure
        return untested(number, INCONCLUSIVE, f"the primary measure {d.primary} was not "
                        "computed, so nothing decides this target", figures, entries)
    parts = [f"{d.primary} on {KINDS['cross']}: {_said(head, pred)}"]
    intra = find(entries, d.primary, "intra")
    if intra is not None and intra["estimate"]["value"] is not None:
        parts.append(f"beside it, not pooled, {KINDS['intra']}: "
                     f"{Estimate.from_dict(intra['estimate']).text()} ({intra['status']})")
    others = [e for e in entries if e["measure"] != d.primary and e["kind"] == "cross"]
    if others:
        parts.append("other measures (cross-architecture): " + ", ".join(
            f"{e['measure']} {e['status']}" for e in others))
    if note:
        parts.append(note)
    return TargetResult(number, TITLES[number], head["status"], ". ".join(parts) + ".",
                        prediction=d.to_dict(), key=key_of(head), measures=entries,
                        trend=trend or [], figures=figures)


def untested(number: int, status: str, reason: str, figures: dict[str, Any] | None = None,
             entries: list[Entry] | None = None) -> TargetResult:
    """A result without a decisive headline (cannot be tested, or inconclusive by design)."""
    return TargetResult(number, TITLES[number], status, reason, prediction=declared(number)
                        .to_dict(), measures=entries or [], figures=figures or {})
