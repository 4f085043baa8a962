"""``run_report``: the report of an analysed sweep from its stored tables (``pairs.parquet``,
``models.parquet``, ``skipped.json``, the reproduction's JSON when it ran), checked to be of one
sweep before anything is written, logged to the sweep's analysis run, and named in the sweep's
MLflow description. The page itself is `analysis.report`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from analysis.engine import ResultStore
from analysis.pipeline import analysis_run, check_table_belongs, report_dir
from analysis.report import build_report
from trainables import tracking as tr
from trainables.errors import DataError, UserError

__all__ = ["run_report"]


def _check_report_inputs(out_dir: Path, sweep: str):
    """The files the report reads are there, readable and of one sweep (checked before the
    report writes anything); returns the result table."""
    pairs = ResultStore(out_dir / "pairs.parquet").load()
    models_path = out_dir / "models.parquet"
    if not models_path.is_file():
        raise UserError(f"{models_path} is missing (the analysis writes it next to "
                        f"pairs.parquet); run `python -m analysis run {sweep}` again to rewrite it")
    try:
        models = pd.read_parquet(models_path, columns=["run_id"])
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{models_path}: not a readable models table ({exc}); run "
                        f"`python -m analysis run {sweep}` again to rewrite it") from exc
    skipped_path = out_dir / "skipped.json"
    try:
        skipped = json.loads(skipped_path.read_text()) if skipped_path.exists() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{skipped_path}: not valid JSON ({exc}); run `python -m analysis run "
                        f"{sweep}` again to rewrite it") from exc
    check_table_belongs(pairs, out_dir / "pairs.parquet", sweep,
                        set(models["run_id"]) | set(skipped))
    return pairs


def run_report(sweep: str, *, home: str | os.PathLike | None = None,
               tracking_uri: str | None = None, log_mlflow: bool = True,
               seed: int = 0) -> Path:
    """Build the report of an analysed sweep from its table + run metadata; returns the HTML.

    Raises:
        UserError: the sweep has not been analysed yet (no ``pairs.parquet``), its files are
            missing or unreadable, or the table holds models of another sweep.
    """
    out_dir = report_dir(sweep, home)
    if not (out_dir / "pairs.parquet").exists():
        raise UserError(f"no analysis of sweep {sweep!r} at {out_dir}/pairs.parquet; "
                        f"run `python -m analysis run {sweep}` first")
    pairs = _check_report_inputs(out_dir, sweep)
    client = exp = None
    if log_mlflow:
        client = tr.make_client(tr.resolve_tracking_uri(tracking_uri, home))
        exp = tr.with_retries(client.get_experiment_by_name, sweep)
    if exp is not None:  # the table's models must be this sweep's trial runs in this store
        trials = tr.search_sweep_runs(client, exp.experiment_id, sweep=sweep, role="trial")
        check_table_belongs(pairs, out_dir / "pairs.parquet", sweep,
                            {r.info.run_id for r in trials})
    html = build_report(out_dir, sweep=sweep, seed=seed)
    if exp is not None:
        run_id = analysis_run(client, sweep, exp.experiment_id)
        for path in sorted(out_dir.glob("report/*")):
            tr.with_retries(client.log_artifact, run_id, str(path), "report")
        tr.with_retries(client.set_terminated, run_id, "FINISHED")
        _note_report(client, exp, sweep, html)
    return html


def _note_report(client, exp, sweep: str, html: Path) -> None:
    """Say in the sweep's description (experiment and parent run) where its report now is."""
    parent = tr.find_sweep_run(client, exp.experiment_id, sweep)
    note = (parent.data.tags if parent else exp.tags).get(tr.TAG_NOTE, "")
    line = (f"{tr.REPORT_MARK} `{html}` (built {time.strftime('%Y-%m-%d %H:%M')}); also the "
            f"artifact `report/index.html` of the run `{sweep}-analysis`.")
    tr.set_description(client, exp.experiment_id, parent.info.run_id if parent else None,
                       tr.with_report_line(note, line))
