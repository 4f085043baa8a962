"""The reproduction report's writer: ``reproduction.md`` and ``reproduction.json``.

``reproduction.md`` opens with the verdict table of every (dataset, threat model) group (target,
verdict, the one number it rests on, its interval, architectures x seeds and the interval
method), readable without scrolling; then the declared predictions; then, per group, the data
and settings, the models, and one section per target with its measures, variants, trend and
figures. ``reproduction.json`` holds the same as data:
``{"predictions": {...}, "groups": [{"dataset", "threat_model", "header", "targets": [...]}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from analysis.reproduction.predictions import PREDICTIONS
from analysis.reproduction.stats import LEVEL, Estimate
from analysis.reproduction.study import TargetResult

__all__ = ["write_report", "key_cells", "Group"]

#: One group of the report: its header (dataset, threat model, settings, models) and results.
Group = tuple[Mapping[str, Any], Sequence[TargetResult]]

STATISTICS = (
    "How to read it (SPEC §10). Every figure is a mean over *architecture pairs* of the mean over "
    "their model pairs; the headline uses pairs of different architectures, and pairs of the "
    "same architecture across seeds are reported beside it, never pooled into it. Intervals: "
    "leave-one-architecture-out jackknife with Student-t quantiles on A - 1 degrees of freedom "
    "(the estimand is the mean over architectures as a population; calibrated by simulation, "
    "docs/reproduction.md); with exactly 2 architectures a delete-one-cell jackknife conditional "
    "on these two; with fewer, no interval. A difference between eps groups is paired: the same "
    "cells in both groups, resampled together. A target **holds** only when the whole interval "
    "lies on the predicted side of its declared boundary, **does not hold** when it lies wholly "
    "on the other side, and is **inconclusive** when the interval contains the boundary. With 3 "
    "architectures an interval rests on 2 degrees of freedom and is wide: that is what the grid "
    "can say, not a fault of the method.")


def _est(d: Mapping[str, Any] | None) -> Estimate | None:
    return Estimate.from_dict(d) if d and "method" in d and "n_pairs" in d else None


def key_cells(r: TargetResult) -> tuple[str, str, str]:
    """(the number, its interval, archs x seeds (method)) of a result's verdict-table row."""
    if r.number == 8 and r.figures.get("variants_run") is not None:
        more = "; some could not run (see target 8)" if r.figures.get("not_run") else ""
        return (f"{r.figures['flips']} flip(s) in the {r.figures['variants_run']} variants that "
                f"ran{more}", "-", "-")
    est = _est(r.key)
    if est is None or est.value is None:
        return ("-", "-", "-")
    ci = (f"[{est.lo:+.4f}, {est.hi:+.4f}]" if est.has_interval else "no interval")
    size = (f"{est.n_archs} x {est.n_seeds} ({est.method}, {est.n_pairs} pairs)"
            if r.key.get("kind") != "seeds" else f"1 arch x {est.n_seeds} seeds ({est.method})")
    kind = r.key.get("kind", "")
    return (f"{r.key['measure']} ({kind}): {est.value:+.4f}", ci, size)


def _verdict_table(header: Mapping[str, Any], results: Sequence[TargetResult]) -> list[str]:
    level = f"{100 * LEVEL:.0f}% CI"
    lines = [f"## Verdicts: {header.get('dataset', '?')}, {header.get('threat_model', '?')}", "",
             f"| # | target | verdict | the number it rests on | {level} | archs x seeds "
             "(method, pairs) |", "|---|---|---|---|---|---|"]
    for r in results:
        num, ci, size = key_cells(r)
        lines.append(f"| {r.number} | {r.title} | **{r.status}** | {num} | {ci} | {size} |")
    return lines + [""]


def _predictions_table() -> list[str]:
    lines = ["## Declared predictions", "",
             "| # | SPEC §8 | quantity | primary | predicted | verdict rule |",
             "|---|---|---|---|---|---|"]
    for n, d in PREDICTIONS.items():
        pred = "; ".join(f"{m} {'>' if p.direction > 0 else '<'} {p.margin:g}"
                         for m, p in d.predictions.items()) or "-"
        lines.append(f"| {n} | {d.spec} | {d.quantity} | {d.primary} | {pred} | {d.rule} |")
    return lines + [""]


def _fmt(v: Any) -> str:
    est = _est(v) if isinstance(v, dict) else None
    if est is not None:
        return est.text()
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and v and all(isinstance(x, float | int) for x in v):
        return "[" + ", ".join(_fmt(x) if isinstance(x, float) else str(x) for x in v) + "]"
    if isinstance(v, dict) and v and all(isinstance(x, float | int) for x in v.values()):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _figure_lines(figs: Mapping[str, Any], depth: int = 0) -> list[str]:
    lines = []
    pad = "  " * depth
    for k, v in figs.items():
        if isinstance(v, dict) and v and _est(v) is None and not all(
                isinstance(x, float | int) for x in v.values()):
            lines.append(f"{pad}- {k}:")
            lines.extend(_figure_lines(v, depth + 1))
        elif isinstance(v, list) and v and isinstance(v[0], dict) and _est(v[0]) is None:
            lines.append(f"{pad}- {k}:")
            lines.extend(f"{pad}  - " + ", ".join(f"{a}={_fmt(b)}" for a, b in row.items())
                         for row in v)
        elif isinstance(v, list) and v and isinstance(v[0], str):
            lines.append(f"{pad}- {k}:")
            lines.extend(f"{pad}  - {x}" for x in v)
        else:
            lines.append(f"{pad}- {k}: {_fmt(v)}")
    return lines


def _target_lines(r: TargetResult) -> list[str]:
    lines = ["", f"## {r.number}. {r.title}: **{r.status}**", "", r.reason, ""]
    if r.prediction:
        lines.append(f"Predicted (declared): {r.prediction['quantity']}; {r.prediction['rule']}.")
        lines.append("")
    if r.measures:
        lines += ["| measure | pairs | verdict | estimate |", "|---|---|---|---|"]
        lines += [f"| {e['measure']} | {e['kind']} | {e['status']} | {_fmt(e['estimate'])} |"
                  for e in r.measures]
        lines.append("")
    if r.variants:
        lines += ["| variant | target | measure | verdict | main verdict | flip | estimate |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {v['name']} | {v['target']} | {v['measure']} | {v['status']} | "
                  f"{v['main']} | {'**yes**' if v['flip'] else 'no'} | {_fmt(v['estimate'])} |"
                  for v in r.variants]
        lines.append("")
    if r.trend:
        lines += ["Trend (agreement at every eps):", "", "| eps | pairs | estimate |",
                  "|---|---|---|"]
        lines += [f"| {t['eps']:g} | {t['kind']} | {_fmt(t['estimate'])} |" for t in r.trend]
        lines.append("")
    return lines + _figure_lines(r.figures)


def _group_lines(header: Mapping[str, Any], results: Sequence[TargetResult]) -> list[str]:
    lines = ["", f"# {header.get('dataset', '?')}, {header.get('threat_model', '?')}: details",
             ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in header.items()
              if k not in ("models", "sweep", "settings")]
    lines += [f"- settings: {k} = {_fmt(v)}" for k, v in header.get("settings", {}).items()]
    if header.get("models"):
        cols = list(header["models"][0])
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in header["models"]]
    for r in results:
        lines += _target_lines(r)
    return lines


def write_report(groups: Sequence[Group], directory: str | Path, *,
                 sweep: str) -> tuple[Path, Path]:
    """Write ``reproduction.md`` and ``reproduction.json`` into ``directory``.

    Args:
        groups: one ``(header, results)`` per (dataset, threat model) group of the sweep; the
            header holds ``dataset``, ``threat_model``, the settings and the models table rows.
        directory: output folder (created).
        sweep: the sweep's name.

    Returns:
        ``(md_path, json_path)``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"sweep": sweep,
               "predictions": {n: d.to_dict() for n, d in PREDICTIONS.items()},
               "groups": [{"dataset": h.get("dataset"), "threat_model": h.get("threat_model"),
                           "header": dict(h), "targets": [asdict(r) for r in rs]}
                          for h, rs in groups]}
    json_path = out / "reproduction.json"
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default))
    lines = [f"# Reproduction report: sweep `{sweep}`", ""]
    for header, results in groups:
        lines += _verdict_table(header, results)
    lines += [STATISTICS, ""] + _predictions_table()
    for header, results in groups:
        lines += _group_lines(header, results)
    md_path = out / "reproduction.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
