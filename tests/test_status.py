"""``python -m sweeps status``: every cell's state, epoch k/N and last metrics, and the ETA by the
rule of `sweeps.status` (per-epoch times measured on the sweep, cells left, trials at a time),
over a real sqlite store written by the sweep driver's own `open_sweep` plus trial runs logged
with a trial's tags and metrics."""

from __future__ import annotations

import time

import pytest
import yaml
from mlflow.entities import Metric, Param

from sweeps.__main__ import main
from sweeps.launch import open_sweep
from sweeps.spec import load_spec
from sweeps.status import format_duration
from trainables import tracking as tr

# cell -> (final status, epochs done, train s per epoch, eval s per epoch)
TRIALS = {("mlp", 0.0): ("FINISHED", 4, 1.0, 0.5), ("mlp", 0.1): ("RUNNING", 2, 3.0, 1.0),
          ("cnn", 0.0): ("FAILED", 1, 2.0, 0.0)}  # ("cnn", 0.1): not started


@pytest.fixture()
def sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "st.yaml"
    path.write_text(yaml.safe_dump({
        "name": "st", "dataset": {"name": "digits"}, "archs": ["mlp", "cnn"],
        "threat_model": "linf", "epsilons": [0, 0.1], "seeds": [0], "train": {"epochs": 4},
        "max_concurrent": 3}))
    spec = load_spec(path)
    handle = open_sweep(spec)
    client = handle.client
    for cell in spec.cells():
        if (cell.arch.name, cell.eps) not in TRIALS:
            continue
        status, done, train_s, eval_s = TRIALS[(cell.arch.name, cell.eps)]
        tags = {tr.TAG_SWEEP: "st", tr.TAG_ROLE: "trial", tr.TAG_CELL: cell.key,
                tr.TAG_TRIAL_ID: cell.key, tr.TAG_ARCH: cell.arch.name, tr.TAG_WIDTH: "1.0",
                tr.TAG_EPS: tr.format_eps(cell.eps), tr.TAG_SEED: "0",
                tr.TAG_THREAT_MODEL: "linf", tr.TAG_DATASET: "digits",
                tr.TAG_PARENT: handle.parent_run_id}
        run = client.create_run(handle.experiment_id, tags=tags, run_name=tr.trial_run_name(
            cell.arch.name, 1.0, "linf", cell.eps, 0))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, e) for e in range(1, done + 1) for k, v in (
            (tr.METRIC_EPOCH, e), (tr.METRIC_EPOCH_TIME, train_s), ("time/eval_s", eval_s),
            (tr.METRIC_TRAIN_LOSS, 1.0 / e), (tr.METRIC_CLEAN_ACC, 0.5 + 0.1 * e),
            (tr.METRIC_ROBUST_ACC, 0.1 * e))]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param("epochs", "4")])
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
    return handle


def test_status_lists_every_cell_with_epoch_metrics_and_the_eta(sweep, capsys):
    assert main(["status", "st"]) == 0
    out = capsys.readouterr().out
    assert "cells 4: 1 finished, 1 running, 1 failed, 0 killed, 1 not started" in out
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines()
            if " / seed 0" in line}
    assert rows["mlp / linf 0 / seed 0"][7:] == ["FINISHED", "4/4", "0.250", "0.9000", "0.4000",
                                                 "1.5"]
    assert rows["mlp / linf 0.1 / seed 0"][7:] == ["RUNNING", "2/4", "0.500", "0.7000",
                                                   "0.2000", "4.0"]
    assert rows["cnn / linf 0 / seed 0"][7:] == ["FAILED", "1/4", "1.000", "0.6000", "0.1000",
                                                 "2.0"]
    assert rows["cnn / linf 0.1 / seed 0"][7:] == ["PENDING", "0/4", "-", "-", "-", "-"]
    # Work left: mlp/0.1 2 x 4.0 s + cnn/0 3 x 2.0 s + cnn/0.1 (no run: cnn's mean) 4 x 2.0 s
    # = 22 s of training, over the 1 trial running now.
    eta = next(line for line in out.splitlines() if line.startswith("ETA"))
    assert eta == ("ETA: about 22 s (9 epochs left in 3 cells, 22 s of training at the epoch "
                   "times measured on this sweep, over 1 trial(s) at a time, running now)")


def test_a_sweep_that_stopped_says_what_a_resume_has_left(sweep, capsys):
    client = sweep.client
    for run in tr.search_sweep_runs(client, sweep.experiment_id, sweep="st", role="trial"):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
    client.set_terminated(sweep.parent_run_id, "KILLED")
    assert main(["status", "st"]) == 0
    eta = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ETA"))
    # No trial runs now: the spec's max_concurrent (3) trials at a time.
    assert eta == ("ETA: the sweep is KILLED, not running; `python -m sweeps resume st` has 9 "
                   "epochs left in 3 cells, 22 s of training at the epoch times measured on this "
                   "sweep (over 3 trial(s) at a time: 7 s)")


def test_durations_read_naturally():
    assert [format_duration(s) for s in (4.4, 200, 7500)] == ["4 s", "3 min 20 s", "2 h 05 min"]
