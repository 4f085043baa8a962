"""A sweep's progress, read from MLflow: each grid cell's state, epoch and last metrics, and an
estimate of the time left (``python -m sweeps status NAME``). Light: no Ray, no torch.

How the ETA is computed (`estimate`): one epoch's wall time is measured on this sweep's own
trial runs as the mean over their logged epochs of ``time/epoch_s`` (training) plus
``time/eval_s`` (the per-epoch evaluation; the last epoch's includes the final strong
evaluation). A cell's epoch time is the mean over the runs of its (arch, threat model, eps),
since the cost depends on the architecture and on whether PGD runs; without such a run yet, the
mean over the runs of its arch, then over all runs. The work left is the sum over unfinished
cells of (epochs left x the cell's epoch time); the ETA is that divided by the number of trials
that train at once: the runs RUNNING now, else the spec's ``max_concurrent``, else 1. Worker
start-up, MLflow logging and a tuning phase are not counted, so the estimate is a lower bound.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeps.cli_util import fmt
from sweeps.grid import ArchSpec, Cell
from sweeps.spec import SweepSpec, parse_spec
from trainables import tracking as tr

__all__ = ["SPEC_ARTIFACT", "CellState", "Estimate", "logged_spec", "cell_states", "estimate",
           "cell_rows", "describe_estimate", "format_duration"]

SPEC_ARTIFACT = "spec.yaml"  # the spec as run, an artifact of the sweep's parent run
_TIME_METRICS = (tr.METRIC_EPOCH_TIME, "time/eval_s")
# The state of a cell whose trial has no run yet; the order in which one run of a cell wins.
PENDING = "PENDING"
_RANK = {"FINISHED": 0, "RUNNING": 1, "FAILED": 2, "KILLED": 3}


def logged_spec(client: Any, run_id: str, *, check_paths: bool) -> SweepSpec:
    """The spec a sweep ran with, from its parent run's ``spec.yaml``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    with tempfile.TemporaryDirectory() as tmp:
        local = tr.with_retries(client.download_artifacts, run_id, SPEC_ARTIFACT, tmp)
        text = Path(local).read_text()
    return parse_spec(yaml.safe_load(text), check_paths=check_paths, source=text)


@dataclass(frozen=True)
class CellState:
    """One grid cell: its trial run (None: not started) and that run's progress."""

    cell: Cell
    state: str  # FINISHED | RUNNING | FAILED | KILLED | PENDING
    epoch: int  # epochs done
    epochs: int  # epochs to train
    metrics: Mapping[str, float]  # the run's latest values
    epoch_s: float | None  # mean measured wall time of one of its epochs (train + eval)

    @property
    def left(self) -> int:
        """Epochs still to train (0 once FINISHED)."""
        return 0 if self.state == "FINISHED" else max(self.epochs - self.epoch, 0)


def _cell_of(run: Any) -> Cell:
    tags = run.data.tags
    return Cell(ArchSpec(tags.get(tr.TAG_ARCH, "?"), float(tags.get(tr.TAG_WIDTH, 1.0))),
                tags.get(tr.TAG_THREAT_MODEL, "?"), float(tags.get(tr.TAG_EPS, "nan")),
                int(tags.get(tr.TAG_SEED, 0)))


def _epoch_s(client: Any, run_id: str) -> float | None:
    """Mean over a run's logged epochs of training + evaluation time (None: nothing logged)."""
    per_step: dict[int, float] = {}
    for key in _TIME_METRICS:
        for m in tr.with_retries(client.get_metric_history, run_id, key):
            per_step[m.step] = per_step.get(m.step, 0.0) + m.value
    return statistics.fmean(per_step.values()) if per_step else None


def cell_states(client: Any, runs: Iterable[Any], *, cells: list[Cell] | None,
                epochs: int) -> list[CellState]:
    """Every cell's state: the grid's ``cells`` (from the spec; None: the cells that have runs),
    each with its best run (FINISHED over RUNNING over FAILED over KILLED, newest first)."""
    best: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: -(r.info.start_time or 0)):
        key = run.data.tags.get(tr.TAG_CELL) or _cell_of(run).key
        rank = _RANK.get(run.info.status, len(_RANK))
        if key not in best or rank < _RANK.get(best[key].info.status, len(_RANK)):
            best[key] = run
    if cells is None:
        cells = [_cell_of(r) for r in best.values()]
    out = []
    for cell in cells:
        run = best.get(cell.key)
        if run is None:
            out.append(CellState(cell, PENDING, 0, epochs, {}, None))
            continue
        m = run.data.metrics
        total = int(float(run.data.params.get("epochs", epochs)))
        out.append(CellState(cell, run.info.status, int(m.get(tr.METRIC_EPOCH, 0)), total,
                             dict(m), _epoch_s(client, run.info.run_id)))
    return out


@dataclass(frozen=True)
class Estimate:
    """The work left and the time it should take (see the module docstring)."""

    epochs_left: int
    cells_left: int
    work_s: float | None  # summed epoch times of the epochs left (None: nothing measured yet)
    parallel: int
    parallel_from: str  # "running now", "max_concurrent", "default"
    seconds: float | None


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


# Which measured runs stand for a cell's epoch time, most alike first (the module docstring).
_ALIKE = (lambda c: (c.arch, c.threat_model, c.eps), lambda c: c.arch, lambda c: None)


def _epoch_time(cell: Cell, states: list[CellState]) -> float | None:
    for alike in _ALIKE:
        t = _mean(s.epoch_s for s in states if alike(s.cell) == alike(cell))
        if t is not None:
            return t
    return None


def estimate(states: list[CellState], *, max_concurrent: int | None) -> Estimate:
    """The ETA of the cells left (see the module docstring for the rule)."""
    todo = [s for s in states if s.left > 0]
    times = [_epoch_time(s.cell, states) for s in todo]
    work = None if None in times else sum(s.left * t for s, t in zip(todo, times, strict=True))
    running = sum(s.state == "RUNNING" for s in states)
    parallel, source = ((running, "running now") if running else
                        (max_concurrent, "max_concurrent") if max_concurrent else (1, "default"))
    seconds = None if work is None else work / parallel
    return Estimate(sum(s.left for s in todo), len(todo), work, parallel, source, seconds)


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def describe_estimate(est: Estimate, *, sweep_status: str, name: str) -> str:
    """One line: the ETA and how it was reached."""
    if est.cells_left == 0:
        return "ETA: nothing left to train (every cell finished)"
    if est.seconds is None:
        return (f"ETA: unknown until a trial has logged an epoch ({est.epochs_left} epochs left "
                f"in {est.cells_left} cells)")
    how = (f"{est.epochs_left} epochs left in {est.cells_left} cells, "
           f"{format_duration(est.work_s)} of training at the epoch times measured on this sweep")
    if sweep_status != "RUNNING":
        return (f"ETA: the sweep is {sweep_status}, not running; `python -m sweeps resume {name}` "
                f"has {how} (over {est.parallel} trial(s) at a time: "
                f"{format_duration(est.seconds)})")
    return (f"ETA: about {format_duration(est.seconds)} ({how}, over {est.parallel} trial(s) at "
            f"a time, {est.parallel_from})")


def cell_rows(states: list[CellState]) -> list[dict[str, str]]:
    """The status table: one row per cell."""
    rows = []
    for s in states:
        m = s.metrics
        clean = m.get(tr.METRIC_FINAL_CLEAN_ACC, m.get(tr.METRIC_CLEAN_ACC))
        robust = m.get(tr.METRIC_FINAL_ROBUST_ACC, m.get(tr.METRIC_ROBUST_ACC))
        rows.append({
            "cell": tr.trial_run_name(s.cell.arch.name, s.cell.arch.width, s.cell.threat_model,
                                      s.cell.eps, s.cell.seed),
            "state": s.state, "epoch": f"{s.epoch}/{s.epochs}",
            "loss": fmt(m.get(tr.METRIC_TRAIN_LOSS), "{:.3f}"), "clean": fmt(clean, "{:.4f}"),
            "robust": fmt(robust, "{:.4f}"), "s/epoch": fmt(s.epoch_s, "{:.1f}")})
    return rows
