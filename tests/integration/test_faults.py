"""Fault injection on the real 2-node cluster: each test breaks one thing mid-run and then checks
that nothing was lost or duplicated (one FINISHED MLflow run per grid cell, complete metric
histories, complete pair tables). docs/reliability.md lists these faults and the outcomes.

The local-cluster variants (the trial's own fault switch, `ray.kill` of a pair actor) live in
helpers' unit tests; these inject the faults from outside, as an operator or the OS would:
SIGKILL of processes found by pid, a node's processes all at once, the tracking server.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from .harness import kill_pids, wait_for
from .raycluster import TERMINAL_JOB_STATES
from .workload import (
    PY, assert_one_finished_run_per_cell, epoch_history, spec_cells, tiny_spec,
    trial_config_for, trial_runs,
)

pytestmark = pytest.mark.integration

RECOVERED = "restarting from its last checkpoint"  # sweeps' progress line on a trial retry


def _submit_sweep(live, home: Path, name: str, **spec_kw) -> tuple[Path, str]:
    spec = tiny_spec(home / "spec.yaml", name=name, tracking_uri=live.mlflow.url,
                     storage=home / "ray_results", **spec_kw)
    job = live.cluster.submit([PY, "-m", "sweeps", "run", str(spec)],
                              env_vars={"UNISWEEP_HOME": str(home)})
    return spec, job


def _before_job_ends(live, job: str, check, *, what: str, timeout_s: float = 300,
                     interval_s: float = 0.2):
    """Poll ``check()`` until truthy; fail at once if the job ends first (fault not injected)."""
    def probe():
        value = check()
        if value:
            return value
        status = live.cluster.job_info(job)["status"]
        if status in TERMINAL_JOB_STATES:
            raise AssertionError(f"job {job} ended ({status}) before {what}; fault not injected:"
                                 f"\n{live.cluster.job_logs(job)[-3000:]}")
        return None

    return wait_for(probe, timeout_s=timeout_s, what=what, interval_s=interval_s)


def _finish(live, job: str, *, timeout_s: float = 420) -> str:
    info = live.cluster.wait_job(job, timeout_s=timeout_s)
    logs = live.cluster.job_logs(job)
    assert info["status"] == "SUCCEEDED", logs[-5000:]
    return logs


def _latest_checkpoints(storage: Path, name: str) -> dict[str, int]:
    """Tune trial dir -> index of the newest checkpoint Tune has persisted (0 = after epoch 1)."""
    root = storage / name
    out = {}
    for trial in (root.iterdir() if root.is_dir() else []):
        found = [int(c.name.rsplit("_", 1)[1]) for c in trial.glob("checkpoint_*")]
        if found:
            out[trial.name] = max(found)
    return out


def _reference_finals(run) -> dict[str, float]:
    """Final metrics of the same cell trained uninterrupted, in this process (no Ray)."""
    from trainables.config import TrainConfig
    from trainables.train import train_model

    finals: dict[str, float] = {}

    def keep(metrics: dict, _ckpt: Path) -> None:
        finals.update({k: float(v) for k, v in metrics.items() if k.startswith("final/")})

    train_model(TrainConfig.from_dict(trial_config_for(run)), report=keep)
    return finals


def test_trial_worker_killed_mid_epoch_resumes_from_checkpoint(live, home):
    client, name = live.client(), "it-killworker"
    spec, job = _submit_sweep(live, home, name, epochs=2, archs=("cnn",), epsilons=(0.1, 0.2),
                              attack_steps=20)
    # Once Tune has persisted a trial's epoch-1 checkpoint (and epoch 2, ~3 s, is under way),
    # SIGKILL every live trial worker process: an OS-level crash, no finally, no end_run.
    _before_job_ends(live, job, lambda: 0 in _latest_checkpoints(home / "ray_results", name)
                     .values(), what="a trial's first checkpoint", interval_s=0.1)
    time.sleep(0.5)
    killed = [live.cluster.kill_actor_process(a) for a in live.cluster.actors("ImplicitFunc")]
    assert killed
    logs = _finish(live, job)
    assert RECOVERED in logs

    runs = assert_one_finished_run_per_cell(client, name, spec_cells(spec))
    for cell, run in runs.items():
        # Resumed from epoch 1's checkpoint: every epoch logged exactly once, none repeated.
        assert sorted(epoch_history(client, run.info.run_id)) == [1, 2], cell
        reference = _reference_finals(run)
        assert reference, cell
        for key, value in reference.items():
            assert run.data.metrics[key] == pytest.approx(value, abs=1e-9), (cell, key)


def test_worker_node_killed_mid_sweep_trials_finish_on_the_other_node(live, home):
    client, name = live.client(), "it-killnode"
    node = live.cluster.workers[-1]
    spec, job = _submit_sweep(live, home, name, epochs=2, archs=("mlp", "cnn"),
                              epsilons=(0.1, 0.2), attack_steps=10)
    _before_job_ends(live, job, lambda: [a for a in live.cluster.actors("ImplicitFunc")
                                         if a["node_ip"] == node.ip]
                     and any(r.info.status == "RUNNING" for r in trial_runs(client, name)),
                     what=f"a trial running on {node.ip}")
    time.sleep(1.0)
    pids = node.kill()
    assert pids
    wait_for(lambda: node.ip not in live.cluster.alive_node_ips(), timeout_s=60,
             what=f"the GCS to mark {node.ip} dead")
    logs = _finish(live, job)
    assert RECOVERED in logs
    assert_one_finished_run_per_cell(client, name, spec_cells(spec))


def test_driver_killed_then_sweeps_resume_finishes_only_the_rest(live, home):
    client, name = live.client(), "it-killdriver"
    spec, job = _submit_sweep(live, home, name, epochs=1, archs=("mlp", "cnn"))
    cells = spec_cells(spec)

    def some_finished():
        done = [r for r in trial_runs(client, name) if r.info.status == "FINISHED"]
        return done if 0 < len(done) < len(cells) else None

    _before_job_ends(live, job, some_finished, what="the first finished trial")
    drivers = live.cluster.job_driver_pids(job)
    assert drivers, live.cluster.job_info(job)
    kill_pids(drivers)
    info = live.cluster.wait_job(job, timeout_s=120)
    assert info["status"] in ("FAILED", "STOPPED"), info
    before = {r.data.tags["unisweep.cell"]: (r.info.run_id, r.info.end_time)
              for r in trial_runs(client, name) if r.info.status == "FINISHED"}
    assert 0 < len(before) < len(cells)

    job = live.cluster.submit([PY, "-m", "sweeps", "resume", str(spec)],
                              env_vars={"UNISWEEP_HOME": str(home)})
    _finish(live, job)
    runs = assert_one_finished_run_per_cell(client, name, cells)
    for cell, (run_id, end_time) in before.items():
        assert (runs[cell].info.run_id, runs[cell].info.end_time) == (run_id, end_time), \
            f"{cell} was trained again after resume"


def test_mlflow_server_restarted_mid_sweep_loses_no_metric(live, home):
    client, name = live.client(), "it-mlflowdown"
    spec, job = _submit_sweep(live, home, name, epochs=2, archs=("cnn",), epsilons=(0.1, 0.2),
                              attack_steps=20)
    running = _before_job_ends(
        live, job, lambda: {r.info.run_id: int(r.data.metrics["epoch"])
                            for r in trial_runs(client, name)
                            if r.info.status == "RUNNING" and r.data.metrics.get("epoch", 2) < 2},
        what="a trial past epoch 1 in MLflow")
    down_ms = int(time.time() * 1000)
    live.mlflow.restart(down_s=2.0)  # SIGKILL, ~2 s down, then the ~6 s start-up
    assert live.cluster.job_info(job)["status"] == "RUNNING"  # the outage hit a live sweep
    _finish(live, job)

    runs = assert_one_finished_run_per_cell(client, name, spec_cells(spec))
    for cell, run in runs.items():
        assert sorted(epoch_history(client, run.info.run_id)) == [1, 2], cell
        for key in ("train/loss", "eval/clean_acc", "eval/robust_acc"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == [1, 2], (cell, key, steps)
        assert {"final/clean_acc", "final/robust_acc"} <= set(run.data.metrics), cell
    # The trials that were mid-run during the outage logged their later epochs afterwards
    # (the MLflow client's bounded backoff retries held the calls until the server was back).
    for run_id, seen in running.items():
        later = [m for m in client.get_metric_history(run_id, "epoch") if m.value > seen]
        assert later and max(m.timestamp for m in later) >= down_ms, (run_id, seen)


def _local_path(artifact_uri: str) -> Path:
    parsed = urlparse(artifact_uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else Path("/nonexistent")


def test_analysis_survives_a_killed_actor_and_skips_a_corrupt_checkpoint(live, trained_sweep,
                                                                         tmp_path):
    from analysis.pipeline import run_analysis

    client, name = live.client(), trained_sweep.name
    runs = assert_one_finished_run_per_cell(client, name, spec_cells(trained_sweep.spec))
    victim = runs[sorted(runs)[0]]
    weights = _local_path(victim.info.artifact_uri) / "checkpoint" / "model.safetensors"
    assert weights.is_file(), weights
    original = weights.read_bytes()
    home = trained_sweep.home.parent / "analysis-faults"
    try:
        weights.write_bytes(original[: len(original) // 3])  # truncated upload / bad disk

        job = live.cluster.submit([PY, "-m", "analysis", "run", name, "--actors", "2",
                                   "--tracking-uri", live.mlflow.url, "--no-report"],
                                  env_vars={"UNISWEEP_HOME": str(home)})
        actor = _before_job_ends(live, job, lambda: live.cluster.actors("_PairWorker"),
                                 what="a pair actor", interval_s=0.1)[0]
        killed = live.cluster.kill_actor_process(actor)
        assert killed
        logs = _finish(live, job, timeout_s=300)
        assert "skipped" in logs and "model.safetensors" in logs, logs[-3000:]

        out = home / "reports" / name
        skipped = json.loads((out / "skipped.json").read_text())
        assert victim.info.run_id in skipped and "model.safetensors" in skipped[victim.info.run_id]
        table = pd.read_parquet(out / "pairs.parquet")
        assert (table["status"] == "ok").all(), table[table["status"] != "ok"]
        others = {r.info.run_id for r in runs.values()} - {victim.info.run_id}
        assert set(table["model_a"]) | set(table["model_b"]) == others

        serial = run_analysis(name, tracking_uri=live.mlflow.url, home=tmp_path, actors=0,
                              log_mlflow=False)
        assert victim.info.run_id in serial.skipped
        expected = pd.read_parquet(serial.pairs_path)
    finally:
        weights.write_bytes(original)
        shutil.rmtree(home, ignore_errors=True)
    key = ["model_a", "model_b", "input_set", "measure", "params_hash"]
    got = table.set_index(key)["value"].sort_index()
    want = expected.set_index(key)["value"].sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-9)
