"""The reproduction report's writer: ``reproduction.md`` (a header, the models table, a verdict
table, then one section per target with its figures) and ``reproduction.json`` (the same, as
data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from analysis.reproduction.study import TargetResult

__all__ = ["write_report"]


def _fmt(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v and "ci95" in v:
        if v["mean"] is None:
            return "n/a (fewer than two models)"
        ci = v["ci95"]
        ci_txt = f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else " (no interval: one seed/pair)"
        extra = ", ".join(f"{k}={v[k]}" for k in ("n_pairs", "n_models", "n_seeds") if k in v)
        return f"{v['mean']:.4f}{ci_txt}" + (f" ({extra})" if extra else "")
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and v and all(isinstance(x, float | int) for x in v):
        return "[" + ", ".join(_fmt(x) if isinstance(x, float) else str(x) for x in v) + "]"
    return str(v)


def _figure_lines(figs: Mapping[str, Any], depth: int = 0) -> list[str]:
    lines = []
    pad = "  " * depth
    for k, v in figs.items():
        if isinstance(v, dict) and not ("mean" in v and "ci95" in v) and v:
            lines.append(f"{pad}- {k}:")
            lines.extend(_figure_lines(v, depth + 1))
        elif isinstance(v, list) and v and isinstance(v[0], dict) and "mean" not in v[0]:
            lines.append(f"{pad}- {k}:")
            lines.extend(f"{pad}  - " + ", ".join(f"{a}={_fmt(b)}" for a, b in row.items())
                         for row in v)
        elif isinstance(v, list) and v and isinstance(v[0], dict | type(None)):
            lines.append(f"{pad}- {k}: " + "; ".join(_fmt(x) for x in v))
        else:
            lines.append(f"{pad}- {k}: {_fmt(v)}")
    return lines


def write_report(results: Sequence[TargetResult], directory: str | Path, *,
                 header: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``reproduction.md`` and ``reproduction.json`` into ``directory``.

    Args:
        results: the eight target results.
        directory: output folder (created).
        header: context shown first (sweep, dataset, models table rows, settings).

    Returns:
        ``(md_path, json_path)``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"header": dict(header), "targets": [asdict(r) for r in results]}
    json_path = out / "reproduction.json"
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default))
    lines = [f"# Reproduction report: sweep `{header.get('sweep', '?')}`", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in header.items() if k not in ("models", "sweep")]
    if header.get("models"):
        cols = list(header["models"][0])
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in header["models"]]
    lines += ["", "Statistics: means over model pairs; 95% intervals are percentile bootstraps "
              "that resample models (architecture x seed cells); group differences resample each "
              "group independently. A target holds only if its interval says so.", "",
              "| # | target | status |", "|---|---|---|"]
    lines += [f"| {r.number} | {r.title} | **{r.status}** |" for r in results]
    for r in results:
        lines += ["", f"## {r.number}. {r.title}: **{r.status}**", "", r.reason, ""]
        lines += _figure_lines(r.figures)
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
