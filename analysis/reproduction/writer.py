"""The reproduction report's writer: ``reproduction.md`` and ``reproduction.json``, and the same
report as HTML for the report page (one source, two renderings).

``reproduction.md`` opens with the verdict table of every (dataset, threat model) group (target,
verdict, the one number it rests on, its interval, architectures x seeds and the interval
method), readable without scrolling; then the declared predictions; then, per group, the data
and settings, the models, and one section per target with its measures, variants, trend and
figures. ``reproduction.json`` holds the same as data:
``{"predictions": {...}, "groups": [{"dataset", "threat_model", "header", "targets": [...]}]}``.

Both renderings come from that data: ``document(payload)`` turns it into blocks
(``analysis.reproduction.document``) and ``render(payload, fmt)`` writes them as Markdown or HTML;
``write_report`` renders the Markdown from the JSON-normalised payload, and the report page
(``analysis.report``) renders the HTML from ``reproduction.json`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from analysis.reproduction.document import Block, Bullets, Heading, Para, Table, to_html, to_markdown
from analysis.reproduction.predictions import PREDICTIONS
from analysis.reproduction.stats import LEVEL, Estimate
from analysis.reproduction.study import TargetResult

__all__ = ["write_report", "payload", "document", "render", "verdict_table", "key_cells",
           "VERDICT_CLASS", "Group"]

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


#: CSS class of a verdict in the HTML rendering (the report colours the verdict table by it).
VERDICT_CLASS = {"holds": "v-holds", "does not hold": "v-fails", "inconclusive": "v-inconclusive",
                 "cannot be tested on this data": "v-untestable", "partially tested": "v-partial"}


def _est(d: Mapping[str, Any] | None) -> Estimate | None:
    return Estimate.from_dict(d) if d and "method" in d and "n_pairs" in d else None


def key_cells(t: Mapping[str, Any]) -> tuple[str, str, str]:
    """(the number, its interval, archs x seeds (method)) of a target's verdict-table row.

    Args:
        t: one target of ``reproduction.json`` (``dataclasses.asdict`` of a ``TargetResult``).
    """
    figs, key = t.get("figures") or {}, t.get("key")
    if t["number"] == 8 and figs.get("variants_run") is not None:
        more = "; some could not run (see target 8)" if figs.get("not_run") else ""
        return (f"{figs['flips']} flip(s) in the {figs['variants_run']} variants that "
                f"ran{more}", "-", "-")
    est = _est(key)
    if est is None or est.value is None:
        return ("-", "-", "-")
    ci = (f"[{est.lo:+.4f}, {est.hi:+.4f}]" if est.has_interval else "no interval")
    size = (f"{est.n_archs} x {est.n_seeds} ({est.method}, {est.n_pairs} pairs)"
            if key.get("kind") != "seeds" else f"1 arch x {est.n_seeds} seeds ({est.method})")
    return (f"{key['measure']} ({key.get('kind', '')}): {est.value:+.4f}", ci, size)


def verdict_table(group: Mapping[str, Any]) -> list[Block]:
    """The verdict table of one (dataset, threat model) group: its heading and the table."""
    level = f"{100 * LEVEL:.0f}% CI"
    rows, classes = [], []
    for t in group["targets"]:
        rows.append((str(t["number"]), t["title"], f"**{t['status']}**", *key_cells(t)))
        classes.append(VERDICT_CLASS.get(t["status"], ""))
    return [Heading(2, f"Verdicts: {group.get('dataset') or '?'}, "
                       f"{group.get('threat_model') or '?'}"),
            Table(("#", "target", "verdict", "the number it rests on", level,
                   "archs x seeds (method, pairs)"), tuple(rows), tuple(classes))]


def _predictions_table(predictions: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    rows = []
    for n, d in predictions.items():
        pred = "; ".join(f"{m} {'>' if p['direction'] > 0 else '<'} {p['margin']:g}"
                         for m, p in d["measures"].items()) or "-"
        rows.append((str(n), d["spec"], d["quantity"], d["primary"], pred, d["rule"]))
    return [Heading(2, "Declared predictions"),
            Table(("#", "SPEC §8", "quantity", "primary", "predicted", "verdict rule"),
                  tuple(rows))]


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


def _figure_items(figs: Mapping[str, Any], depth: int = 0) -> list[tuple[int, str]]:
    items: list[tuple[int, str]] = []
    for k, v in figs.items():
        if isinstance(v, dict) and v and _est(v) is None and not all(
                isinstance(x, float | int) for x in v.values()):
            items.append((depth, f"{k}:"))
            items.extend(_figure_items(v, depth + 1))
        elif isinstance(v, list) and v and isinstance(v[0], dict) and _est(v[0]) is None:
            items.append((depth, f"{k}:"))
            items.extend((depth + 1, ", ".join(f"{a}={_fmt(b)}" for a, b in row.items()))
                         for row in v)
        elif isinstance(v, list) and v and isinstance(v[0], str):
            items.append((depth, f"{k}:"))
            items.extend((depth + 1, x) for x in v)
        else:
            items.append((depth, f"{k}: {_fmt(v)}"))
    return items


def _target_blocks(t: Mapping[str, Any]) -> list[Block]:
    out: list[Block] = [Heading(2, f"{t['number']}. {t['title']}: **{t['status']}**"),
                        Para(t["reason"])]
    if t.get("prediction"):
        p = t["prediction"]
        out.append(Para(f"Predicted (declared): {p['quantity']}; {p['rule']}."))
    if t.get("measures"):
        out.append(Table(("measure", "pairs", "verdict", "estimate"), tuple(
            (e["measure"], e["kind"], e["status"], _fmt(e["estimate"])) for e in t["measures"])))
    if t.get("variants"):
        out.append(Table(
            ("variant", "target", "measure", "verdict", "main verdict", "flip", "estimate"),
            tuple((v["name"], str(v["target"]), v["measure"], v["status"], str(v["main"]),
                   "**yes**" if v["flip"] else "no", _fmt(v["estimate"]))
                  for v in t["variants"])))
    if t.get("trend"):
        out += [Para("Trend (agreement at every eps):"),
                Table(("eps", "pairs", "estimate"), tuple(
                    (f"{x['eps']:g}", x["kind"], _fmt(x["estimate"])) for x in t["trend"]))]
    if t.get("figures"):
        out.append(Bullets(tuple(_figure_items(t["figures"]))))
    return out


def _group_blocks(group: Mapping[str, Any]) -> list[Block]:
    header = group["header"]
    items = [(0, f"{k}: {_fmt(v)}") for k, v in header.items()
             if k not in ("models", "sweep", "settings")]
    items += [(0, f"settings: {k} = {_fmt(v)}") for k, v in header.get("settings", {}).items()]
    out: list[Block] = [Heading(1, f"{header.get('dataset', '?')}, "
                                   f"{header.get('threat_model', '?')}: details")]
    if items:
        out.append(Bullets(tuple(items)))
    if header.get("models"):
        cols = tuple(header["models"][0])
        out.append(Table(cols, tuple(tuple(_fmt(r[c]) for c in cols) for r in header["models"])))
    for t in group["targets"]:
        out += _target_blocks(t)
    return out


def document(data: Mapping[str, Any], *, verdicts: bool = True) -> list[Block]:
    """The reproduction report as blocks, from ``reproduction.json``'s data.

    Args:
        data: ``{"sweep", "predictions", "groups"}`` as ``payload`` makes it (or as read back).
        verdicts: include the title and the verdict tables (the report page shows those on its
            first screen and the rest further down).
    """
    out: list[Block] = []
    if verdicts:
        out.append(Heading(1, f"Reproduction report: sweep `{data['sweep']}`"))
        for group in data["groups"]:
            out += verdict_table(group)
    out += [Para(STATISTICS), *_predictions_table(data["predictions"])]
    for group in data["groups"]:
        out += _group_blocks(group)
    return out


def render(data: Mapping[str, Any], fmt: Literal["md", "html"], *, verdicts: bool = True,
           shift: int = 0) -> str:
    """``document(data)`` as Markdown (``reproduction.md``) or as an HTML fragment (the report
    page; headings ``shift`` levels deeper)."""
    blocks = document(data, verdicts=verdicts)
    if fmt == "md":
        return to_markdown(blocks)
    if fmt == "html":
        return to_html(blocks, shift=shift)
    raise ValueError(f"fmt must be 'md' or 'html', got fmt={fmt!r}")


def payload(groups: Sequence[Group], *, sweep: str) -> dict[str, Any]:
    """``reproduction.json``'s data, JSON-normalised (numpy scalars as numbers, tuples as lists),
    so the Markdown written now and the HTML rendered later from the file are the same."""
    data = {"sweep": sweep,
            "predictions": {n: d.to_dict() for n, d in PREDICTIONS.items()},
            "groups": [{"dataset": h.get("dataset"), "threat_model": h.get("threat_model"),
                        "header": dict(h), "targets": [asdict(r) for r in rs]}
                       for h, rs in groups]}
    return json.loads(json.dumps(data, default=_json_default))


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
    data = payload(groups, sweep=sweep)
    json_path = out / "reproduction.json"
    json_path.write_text(json.dumps(data, indent=2))
    md_path = out / "reproduction.md"
    md_path.write_text(render(data, "md"))
    return md_path, json_path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
