"""Small pieces the sweep CLI shares: printing a line, the per-trial summary rows read from
MLflow, and text/CSV tables of them. Light: no Ray, no torch (``python -m sweeps list``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from trainables import tracking as tr

__all__ = ["Echo", "echo", "fmt", "format_table", "rows_to_csv", "summary_rows"]

Echo = Callable[[str], None]  # where progress lines go (`echo`, a logger, a test's list.append)


def echo(line: str) -> None:
    """Print one line to stdout at once (the CLI's progress output)."""
    print(line, flush=True)


def fmt(value: float | None, pattern: str) -> str:
    """``pattern.format(value)``, or ``-`` when the value is missing."""
    return "-" if value is None else pattern.format(value)


def format_table(rows: list[dict[str, str]]) -> str:
    """Fixed-width text table of string-valued rows (all rows share the first row's keys)."""
    if not rows:
        return "(no trials)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def rows_to_csv(rows: list[dict[str, str]]) -> str:
    """The same rows as CSV text (header from the first row)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def summary_rows(client: Any, experiment_id: str, sweep: str, *,
                 role: str = "trial") -> list[dict[str, str]]:
    """One row per trial run: arch, eps, seed, accuracies, training time, status."""
    rows = []
    for run in tr.search_sweep_runs(client, experiment_id, sweep=sweep, role=role):
        tags, m = run.data.tags, run.data.metrics
        clean = m.get(tr.METRIC_FINAL_CLEAN_ACC, m.get(tr.METRIC_CLEAN_ACC))
        robust = m.get(tr.METRIC_FINAL_ROBUST_ACC, m.get(tr.METRIC_ROBUST_ACC))
        rows.append({
            "arch": tr.arch_label(tags.get(tr.TAG_ARCH, "?"), tags.get(tr.TAG_WIDTH, "1.0")),
            "threat": tags.get(tr.TAG_THREAT_MODEL, "?"), "eps": tags.get(tr.TAG_EPS, "?"),
            "seed": tags.get(tr.TAG_SEED, "?"),
            "epoch": fmt(m.get(tr.METRIC_EPOCH), "{:.0f}"),
            "clean_acc": fmt(clean, "{:.4f}"), "robust_acc": fmt(robust, "{:.4f}"),
            "time_s": fmt(m.get(tr.METRIC_TOTAL_TIME), "{:.1f}"), "status": run.info.status,
            "run_id": run.info.run_id,
        })
    rows.sort(key=lambda r: (r["arch"], r["threat"], float(r["eps"]) if r["eps"] != "?" else 0.0,
                             r["seed"]))
    return rows
