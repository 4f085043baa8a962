"""Fault injection on the real 2-node cluster, on the Ray side: a trial worker, a worker node,
the sweep driver and the Ray head, each killed from outside mid-run (SIGKILL by pid, as the OS or
an operator would), and a trial dying between MLflow and Tune. Each test then checks that
nothing was lost or duplicated: one FINISHED MLflow run per grid cell with its checkpoint, every
per-epoch metric logged exactly once (histories compared as lists with their steps), and where
an uninterrupted reference exists, bit-identical weights and equal metric values.

The tracking-side faults (MLflow server, PostgreSQL, artifact uploads) are in
test_faults_tracking.py, the analysis-side ones in test_faults_analysis.py; docs/reliability.md
lists them all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as parse_safetensors

from trainables import tracking as tr

from .harness import kill_pids, wait_for
from .workload import (
    PY, assert_each_epoch_logged_once, assert_one_finished_run_per_cell, before_job_ends,
    epoch_history, fault_env, finish, spec_cells, submit_sweep, trial_config_for, trial_runs,
)

pytestmark = pytest.mark.integration

RECOVERED = "restarting from its last checkpoint"  # sweeps' progress line on a trial retry


def _persisted(storage: Path, name: str) -> dict[str, int]:
    """Tune trial dir -> index of the newest checkpoint Tune has persisted (0 = after epoch 1)."""
    root = storage / name
    out = {}
    for trial in (root.iterdir() if root.is_dir() else []):
        found = [int(c.name.rsplit("_", 1)[1]) for c in trial.glob("checkpoint_*")]
        if found:
            out[trial.name] = max(found)
    return out


def _reference(run) -> dict:
    """The same cell trained uninterrupted in this process (no Ray, no MLflow): its final
    weights, its per-epoch metrics as (step, value) lists, and its batches per epoch."""
    from trainables.config import TrainConfig
    from trainables.train import train_model

    out = {"history": {}, "batches": {}, "weights": None}

    def keep(metrics: dict, ckpt: Path) -> None:
        epoch = int(metrics[tr.METRIC_EPOCH])
        for key, value in metrics.items():
            out["history"].setdefault(key, []).append((epoch, float(value)))
        out["weights"] = parse_safetensors((Path(ckpt) / "model.safetensors").read_bytes())

    def count(epoch: int, batch: int) -> None:
        out["batches"][epoch] = batch

    train_model(TrainConfig.from_dict(trial_config_for(run)), report=keep, on_batch=count)
    return out


def _logged_weights(client, run) -> dict[str, torch.Tensor]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run.info.run_id,
                                          f"{tr.ARTIFACT_CHECKPOINT}/model.safetensors", tmp)
        return parse_safetensors(Path(local).read_bytes())


def test_trial_worker_killed_inside_an_epoch_resumes_bit_identically(live, home):
    client, name = live.client(), "it-killworker"
    watch = home / "watch"
    spec, job = submit_sweep(live, home, name, epochs=2, archs=("cnn",), epsilons=(0.1, 0.2),
                             attack_steps=20, env_vars=fault_env(watch))

    def inside_epoch_2():
        """A trial Tune holds an epoch-1 checkpoint of, now a few batches into epoch 2."""
        persisted = _persisted(home / "ray_results", name)
        for f in watch.glob("progress-*.json"):
            trial_id = f.stem.removeprefix("progress-")
            try:
                at = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if at["epoch"] == 2 and at["batch"] >= 3 and any(
                    trial_id in d and i >= 0 for d, i in persisted.items()):
                return trial_id, at
        return None

    trial_id, seen = before_job_ends(live.cluster, job, inside_epoch_2,
                                     what="a trial inside epoch 2", interval_s=0.05)
    live.cluster.kill_actor_process({"pid": seen["pid"]})  # SIGKILL, checked to be ours
    reached = json.loads((watch / f"progress-{trial_id}.json").read_text())
    victim = tr.find_trial_run(client, client.get_experiment_by_name(name).experiment_id,
                               sweep=name, trial_id=trial_id)
    at_kill = epoch_history(client, victim.info.run_id)
    logs = finish(live.cluster, job)
    assert RECOVERED in logs
    # The kill landed inside epoch 2: the killed process had trained some of its batches and
    # logged nothing of it.
    assert reached["pid"] == seen["pid"] and reached["epoch"] == 2, reached
    assert at_kill == [1], at_kill

    runs = assert_one_finished_run_per_cell(client, name, spec_cells(spec))
    assert victim.info.run_id in {r.info.run_id for r in runs.values()}  # continued, not new
    for cell, run in runs.items():
        ref = _reference(run)
        if run.info.run_id == victim.info.run_id:
            assert 1 <= reached["batch"] < ref["batches"][2], (reached, ref["batches"])
            print(f"killed at epoch 2, batch {reached['batch']} of {ref['batches'][2]}")
        got = _logged_weights(client, run)
        assert got.keys() == ref["weights"].keys(), cell
        for key, tensor in ref["weights"].items():
            assert torch.equal(got[key], tensor), (cell, key)  # bit-identical
        hist = assert_each_epoch_logged_once(client, run, 2)
        for key, points in ref["history"].items():
            if not key.startswith("time/"):  # wall times differ; their steps are checked above
                assert hist[key] == points, (cell, key, hist[key], points)


def test_trial_dying_between_mlflow_and_tune_does_not_log_the_epoch_twice(live, home):
    """The worst moment for a crash: epoch 1's metrics are in MLflow, Tune never got its
    checkpoint, so the retry trains epoch 1 again; it must not log it a second time."""
    client, name = live.client(), "it-unreported"
    spec, job = submit_sweep(live, home, name, epochs=2, archs=("mlp",), epsilons=(0.1,),
                             env_vars=fault_env(home / "faults", mode="exit-unreported",
                                                after_epoch=1))
    logs = finish(live.cluster, job)
    assert (home / "faults").is_dir() and list((home / "faults").glob("fault-*")), logs[-2000:]
    runs = assert_one_finished_run_per_cell(client, name, spec_cells(spec))
    for run in runs.values():
        assert_each_epoch_logged_once(client, run, 2)


def test_worker_node_killed_mid_sweep_trials_finish_on_the_other_node(live, home):
    client, name = live.client(), "it-killnode"
    node = live.cluster.workers[-1]
    # 5 epochs: on a quiet machine 2-epoch trials ended before the probe saw one running there
    spec, job = submit_sweep(live, home, name, epochs=5, archs=("mlp", "cnn"),
                             epsilons=(0.1, 0.2), attack_steps=10)
    before_job_ends(live.cluster, job, lambda: [a for a in live.cluster.actors("ImplicitFunc")
                                                if a["node_ip"] == node.ip]
                    and any(r.info.status == "RUNNING" for r in trial_runs(client, name)),
                    what=f"a trial running on {node.ip}")
    time.sleep(1.0)
    pids = node.kill()
    assert pids
    wait_for(lambda: node.ip not in live.cluster.alive_node_ips(), timeout_s=60,
             what=f"the GCS to mark {node.ip} dead")
    logs = finish(live.cluster, job)
    assert RECOVERED in logs
    for run in assert_one_finished_run_per_cell(client, name, spec_cells(spec)).values():
        assert_each_epoch_logged_once(client, run, 5)


def test_driver_killed_then_sweeps_resume_finishes_only_the_rest(live, home):
    client, name = live.client(), "it-killdriver"
    spec, job = submit_sweep(live, home, name, epochs=1, archs=("mlp", "cnn"))
    cells = spec_cells(spec)

    def some_finished():
        done = [r for r in trial_runs(client, name) if r.info.status == "FINISHED"]
        return done if 0 < len(done) < len(cells) else None

    before_job_ends(live.cluster, job, some_finished, what="the first finished trial")
    drivers = live.cluster.job_driver_pids(job)
    assert drivers, live.cluster.job_info(job)
    kill_pids(drivers)
    info = live.cluster.wait_job(job, timeout_s=120)
    assert info["status"] in ("FAILED", "STOPPED"), info
    before = {r.data.tags[tr.TAG_CELL]: (r.info.run_id, r.info.end_time)
              for r in trial_runs(client, name) if r.info.status == "FINISHED"}
    assert 0 < len(before) < len(cells)

    _, job = submit_sweep(live, home, name, command="resume")
    finish(live.cluster, job)
    runs = assert_one_finished_run_per_cell(client, name, cells)
    for cell, (run_id, end_time) in before.items():
        assert (runs[cell].info.run_id, runs[cell].info.end_time) == (run_id, end_time), \
            f"{cell} was trained again after resume"
    for run in runs.values():
        assert_each_epoch_logged_once(client, run, 1)


def test_ray_head_killed_mid_sweep_then_resume_on_a_fresh_head(live, home):
    """SIGKILL of every process of the head node (GCS, raylet, dashboard, the job's driver)
    while trials train; a fresh cluster (new head, new token) then finishes the sweep from
    Tune's state on the shared storage. Runs last in this module: it replaces the cluster."""
    client, name = live.client(), "it-killhead"
    spec, job = submit_sweep(live, home, name, epochs=2, archs=("cnn",), epsilons=(0.1, 0.2),
                             attack_steps=15)
    cells = spec_cells(spec)

    def mid_sweep():
        """The runs so far, once one of them is RUNNING inside its second (last) epoch."""
        runs = trial_runs(client, name)
        return runs if any(r.info.status == "RUNNING" and r.data.metrics.get(tr.METRIC_EPOCH) == 1
                           for r in runs) else None

    running = before_job_ends(live.cluster, job, mid_sweep,
                              what="a trial running inside its last epoch")
    old = live.cluster
    killed = old.head.kill()
    assert killed
    # A raylet that has lost its GCS exits by itself after a minute; a crashed head takes its
    # workers down with it, so they go now, by pid, rather than after that wait.
    for node in old.workers:
        node.kill()
    wait_for(lambda: not old.alive_node_ips(), timeout_s=30, what="the old cluster to be gone")
    fresh = live.replace_cluster()
    assert fresh.token != old.token and fresh.gcs_address != old.gcs_address

    _, job = submit_sweep(live, home, name, command="resume")
    finish(fresh, job)
    runs = assert_one_finished_run_per_cell(client, name, cells)
    # the runs the dead head left RUNNING were continued, not duplicated
    assert {r.info.run_id for r in running} <= {r.info.run_id for r in runs.values()}
    assert any(r.info.status == "RUNNING" for r in running)
    for run in runs.values():
        assert_each_epoch_logged_once(client, run, 2)
