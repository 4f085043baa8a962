"""Small pieces the sweep CLI shares: a progress line per trial-epoch, the per-trial summary
rows read from MLflow, text/CSV tables, and the user-error boundary (one line on stderr, exit
2, no traceback)."""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

from trainables import tracking as tr

__all__ = ["ProgressCallback", "echo", "fmt", "format_table", "rows_to_csv", "summary_rows",
           "user_errors"]

Echo = Callable[[str], None]


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


class ProgressCallback(Callback):
    """One concise line per trial-epoch, plus a line when a trial fails, retries or ends.

    Runs on the driver; picklable (Tune stores it with the experiment for `Tuner.restore`).
    """

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.start = time.monotonic()

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self.start = time.monotonic()  # also after Tuner.restore unpickles this callback

    def _prefix(self, trials: list[Any]) -> str:
        done = sum(t.status == "TERMINATED" for t in trials)
        elapsed = time.monotonic() - self.start
        return f"[{elapsed:6.0f}s {done}/{len(trials)} done]"

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict,
                        **info: Any) -> None:
        epochs = trial.config.get("train", {}).get("epochs", "?")
        parts = [f"{self._prefix(trials)} {trial}",
                 f"epoch {fmt(result.get(tr.METRIC_EPOCH), '{:.0f}')}/{epochs}",
                 f"loss {fmt(result.get(tr.METRIC_TRAIN_LOSS), '{:.3f}')}",
                 f"clean {fmt(result.get(tr.METRIC_CLEAN_ACC), '{:.3f}')}",
                 f"robust {fmt(result.get(tr.METRIC_ROBUST_ACC), '{:.3f}')}",
                 f"{fmt(result.get(tr.METRIC_EPOCH_TIME), '{:.1f}')}s"]
        self.echo("  ".join(parts))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.echo(f"{self._prefix(trials)} {trial} FAILED for good after {trial.num_failures} "
                  f"failure(s): {_last_error_line(trial)} (details: {trial.error_file})")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self.echo(f"{self._prefix(trials)} {trial} failed ({_last_error_line(trial)}); "
                  f"restarting from its last checkpoint (failure {trial.num_failures})")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self.echo(f"{self._prefix(trials)} {trial} finished")


def _last_error_line(trial: Any) -> str:
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - best effort, for a progress line only
        return "error"
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "error"


def summary_rows(client: Any, experiment_id: str, sweep: str, *,
                 role: str = "trial") -> list[dict[str, str]]:
    """One row per trial run: arch, eps, seed, accuracies, training time, status."""
    rows = []
    for run in tr.search_sweep_runs(client, experiment_id, sweep=sweep, role=role):
        tags, m = run.data.tags, run.data.metrics
        clean = m.get(tr.METRIC_FINAL_CLEAN_ACC, m.get(tr.METRIC_CLEAN_ACC))
        robust = m.get(tr.METRIC_FINAL_ROBUST_ACC, m.get(tr.METRIC_ROBUST_ACC))
        rows.append({
            "arch": tags.get(tr.TAG_ARCH, "?") + ("" if tags.get(tr.TAG_WIDTH, "1.0") == "1.0"
                                                  else f"-w{float(tags[tr.TAG_WIDTH]):g}"),
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


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn user errors into one line on stderr and exit code 2 (no traceback)."""
    from trainables.errors import UserError

    try:
        yield
    except UserError as exc:
        message = " ".join(str(exc).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
