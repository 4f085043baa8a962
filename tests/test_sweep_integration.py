"""Sweeps end to end on real Ray Tune and a real sqlite MLflow store (digits, tiny models).

Covers: one FINISHED child run per cell with tags/params/per-epoch metrics and a loadable
checkpoint that reproduces the logged accuracy; a resume whose Tune state predates a trial's end
(that cell is reported from MLflow, not retrained); a trial crashing mid-training and resuming
from its checkpoint to bit-identical weights; the driver killed and the sweep resumed from the
command line; a resume after Tune's state was lost; the Optuna tuning phase; checkpoints logged
every epoch (``train.checkpoint_every``), pruned to ``keep_checkpoints`` and exact across a crash,
then analysed by epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from sweeps.__main__ import main
from sweeps.launch import resume_sweep, run_sweep
from sweeps.spec import load_spec
from sweeps.tuner import FaultSwitch, experiment_path
from trainables import tracking as tr
from trainables.checkpoints import load_checkpoint
from trainables.config import TrainConfig
from trainables.data import load_dataset
from trainables.train import train_model
from trainables.trial import train_config_dict

pytestmark = pytest.mark.integration
EVAL_SIZE = 100
REPO = Path(__file__).resolve().parents[1]


def write_spec(path: Path, *, name: str, archs: list, epsilons: list, seeds: list, epochs: int,
               tracking: dict | None = None, storage: str | None = None, **extra) -> Path:
    """A tiny digits spec (PGD-3 training, cheap evaluation)."""
    spec = {
        "name": name,
        "dataset": {"name": "digits", "eval_size": EVAL_SIZE},
        "archs": archs, "threat_model": "linf", "epsilons": epsilons, "seeds": seeds,
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "attack_steps": 3},
        "eval": {"attack_steps": 3, "final_steps": 5, "restarts": 1},
        "max_failures": 2,
        **({"tracking": tracking} if tracking else {}),
        **({"storage": storage} if storage else {}),
        **extra,
    }
    out = path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def tracking_of(mlflow_store: dict) -> dict:
    return {"uri": mlflow_store["tracking_uri"], "artifact_location": mlflow_store["artifact_root"]}


def trial_runs(uri: str, name: str, role: str = "trial") -> tuple[object, list]:
    client = tr.make_client(uri)
    exp = client.get_experiment_by_name(name)
    return client, tr.search_sweep_runs(client, exp.experiment_id, sweep=name, role=role)


def steps(client, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def rewind_trial_state(experiment_dir: Path, trial_id: str) -> None:
    """Make Tune's newest saved state say trial ``trial_id`` is still running, with no checkpoint.

    That is the state Tune last saved when the driver died after the trial ended (its MLflow run
    is FINISHED) but before Tune saved again: on restore Tune starts that trial from scratch.
    """
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    state_file = max(experiment_dir.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    for pair in state["trial_data"]:
        trial = json.loads(pair[0])
        if trial["trial_id"] != trial_id:
            continue
        assert trial["status"] == "TERMINATED"
        pair[0] = json.dumps({**trial, "status": "RUNNING"})
        meta = _TrainingRunMetadata.from_json_state(pair[1])
        meta.checkpoint_manager = _CheckpointManager(meta.checkpoint_manager.checkpoint_config)
        meta.invalidate_cache()
        pair[1] = meta.get_json_state()
        state_file.write_text(json.dumps(state))
        return
    raise AssertionError(f"trial {trial_id} not in {state_file}")


def trial_status(experiment_dir: Path, trial_id: str) -> str:
    """The status of trial ``trial_id`` in Tune's newest saved state."""
    state_file = max(experiment_dir.glob("experiment_state-*.json"))
    trials = [json.loads(pair[0]) for pair in json.loads(state_file.read_text())["trial_data"]]
    return next(t["status"] for t in trials if t["trial_id"] == trial_id)


def history(client, run_id: str) -> dict[str, list[tuple[int, float, int]]]:
    """Every metric's full logged history: (step, value, timestamp) in logging order."""
    metrics = client.get_run(run_id).data.metrics
    return {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, k)]
            for k in sorted(metrics)}


def test_mini_sweep_one_finished_child_run_per_cell(ray_session, tmp_path, mlflow_store):
    path = write_spec(tmp_path, name="mini", archs=["mlp", "cnn"], epsilons=[0, 0.1], seeds=[0],
                      epochs=2, tracking=tracking_of(mlflow_store),
                      storage=str(tmp_path / "ray_results"))
    spec = load_spec(path)
    handle = run_sweep(spec)

    client, runs = trial_runs(spec.tracking.uri, "mini")
    assert sorted(r.data.tags[tr.TAG_CELL] for r in runs) == sorted(c.key for c in spec.cells())
    parent = client.get_run(handle.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tr.TAG_ROLE] == "sweep"
    X, y = load_dataset("digits", seed=0, eval_size=EVAL_SIZE).eval_tensors()
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert tags[tr.TAG_PARENT] == handle.parent_run_id
        assert tags[tr.TAG_SWEEP] == "mini" and tags[tr.TAG_DATASET] == "digits"
        assert tags[tr.TAG_THREAT_MODEL] == "linf" and tags[tr.TAG_SEED] == "0"
        assert tags[tr.TAG_ARCH] in {"mlp", "cnn"} and float(tags[tr.TAG_EPS]) in {0.0, 0.1}
        assert tags[tr.TAG_TRIAL_ID]
        assert params["arch"] == tags[tr.TAG_ARCH] and float(params["eps"]) == float(tags[tr.TAG_EPS])
        assert params["lr"] == "0.05" and params["epochs"] == "2" and params["attack_steps"] == "3"
        for metric in (tr.METRIC_TRAIN_LOSS, tr.METRIC_CLEAN_ACC, tr.METRIC_ROBUST_ACC):
            assert steps(client, run.info.run_id, metric) == [1, 2]
        # The logged final checkpoint loads and reproduces the logged clean accuracy.
        ckpt = client.download_artifacts(run.info.run_id, tr.ARTIFACT_CHECKPOINT, str(tmp_path))
        assert sorted(p.name for p in Path(ckpt).iterdir()) == ["meta.json", "model.safetensors"]
        model, meta = load_checkpoint(ckpt)
        assert (meta["arch"], meta["epoch"], meta["eps"]) == (tags[tr.TAG_ARCH], 2,
                                                               float(tags[tr.TAG_EPS]))
        with torch.no_grad():
            acc = int((model.eval()(X).argmax(1) == y).sum()) / len(y)
        assert acc == pytest.approx(metrics[tr.METRIC_FINAL_CLEAN_ACC], abs=1e-9)
        assert acc == pytest.approx(metrics[tr.METRIC_CLEAN_ACC], abs=1e-9)
    summary = client.download_artifacts(handle.parent_run_id, "summary.csv", str(tmp_path))
    lines = Path(summary).read_text().strip().splitlines()
    assert lines[0].startswith("arch,threat,eps,seed") and len(lines) == 1 + 4

    # Resume when Tune's last saved state predates a trial's end (the driver died between the
    # trial finishing and Tune saving): Tune reruns that trial, which finds its MLflow run
    # FINISHED and reports it instead of training. The run's history and end time are untouched.
    done = next(r for r in runs if r.data.tags[tr.TAG_CELL] == "cnn_linf_eps0.1_seed0")
    done_id, trial_id = done.info.run_id, done.data.tags[tr.TAG_TRIAL_ID]
    before = history(client, done_id)
    assert len(before[tr.METRIC_EPOCH]) == 2 and len(before[tr.METRIC_FINAL_CLEAN_ACC]) == 1
    rewind_trial_state(Path(experiment_path(spec)), trial_id)
    resume_sweep(str(path))
    after_run = client.get_run(done_id)
    assert after_run.info.status == "FINISHED"
    assert after_run.info.end_time == done.info.end_time
    assert history(client, done_id) == before
    assert trial_status(Path(experiment_path(spec)), trial_id) == "TERMINATED"
    _, again = trial_runs(spec.tracking.uri, "mini")
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    assert {r.info.status for r in again} == {"FINISHED"}
    assert client.get_run(handle.parent_run_id).info.status == "FINISHED"

    # Resume when Tune's state is lost (the driver died before Tune first saved it) with one
    # trial caught mid-run: only that cell trains again; its old run ends as KILLED.
    shutil.rmtree(experiment_path(spec))
    orphan = next(r for r in runs if r.data.tags[tr.TAG_CELL] == "mlp_linf_eps0.1_seed0")
    client.update_run(orphan.info.run_id, status="RUNNING")
    resume_sweep(str(path))
    _, after = trial_runs(spec.tracking.uri, "mini")
    status = {r.info.run_id: r.info.status for r in after}
    assert status.pop(orphan.info.run_id) == "KILLED"
    assert len(after) == 5 and set(status.values()) == {"FINISHED"}
    new = [r for r in after if r.info.run_id not in {x.info.run_id for x in runs}]
    assert [r.data.tags[tr.TAG_CELL] for r in new] == ["mlp_linf_eps0.1_seed0"]
    assert client.get_run(handle.parent_run_id).info.status == "FINISHED"


def test_trial_crash_resumes_from_checkpoint_bit_identically(ray_session, tmp_path, mlflow_store):
    spec = load_spec(write_spec(tmp_path, name="crash", archs=["cnn"], epsilons=[0.1], seeds=[1],
                                epochs=3, tracking=tracking_of(mlflow_store),
                                storage=str(tmp_path / "ray_results")))
    markers = tmp_path / "faults"
    run_sweep(spec, fault=FaultSwitch(after_epoch=1, marker_dir=str(markers), mode="exit"))

    assert len(list(markers.iterdir())) == 1  # the worker really died once
    client, runs = trial_runs(spec.tracking.uri, "crash")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    # Epoch 1 was not retrained: the restart continued from the epoch-1 checkpoint.
    assert steps(client, run_id, tr.METRIC_EPOCH) == [1, 2, 3]
    # An uninterrupted run of the same cell ends with exactly the same weights and numbers.
    cell = spec.cells()[0]
    d = spec.to_dict()
    config = {"cell": {"model": {"arch": cell.arch.name, "width": cell.arch.width},
                       "threat_model": cell.threat_model, "eps": cell.eps, "seed": cell.seed},
              "dataset": d["dataset"], "train": d["train"], "eval": d["eval"], "num_threads": 1}
    reference = train_model(TrainConfig.from_dict(train_config_dict(config)))
    ckpt = client.download_artifacts(run_id, tr.ARTIFACT_CHECKPOINT, str(tmp_path))
    model, _ = load_checkpoint(ckpt)
    ref_state, state = reference.model.state_dict(), model.state_dict()
    assert ref_state.keys() == state.keys()
    assert all(torch.equal(ref_state[k].cpu(), state[k]) for k in state)
    logged = client.get_run(run_id).data.metrics
    for key in (tr.METRIC_FINAL_CLEAN_ACC, tr.METRIC_FINAL_ROBUST_ACC, tr.METRIC_TRAIN_LOSS):
        assert logged[key] == reference.metrics[key]


def _read_until(proc: subprocess.Popen, needle: str, *, timeout_s: float) -> list[str]:
    """Collect the process's output lines until one contains ``needle`` (or time runs out)."""
    lines: list[str] = []
    found = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    found.wait(timeout_s)
    return lines


def test_driver_killed_then_resumed_from_cli(tmp_path, monkeypatch, capsys):
    # No ray_session here: the driver subprocess starts (and loses) its own local Ray.
    home = tmp_path / "home"
    home.mkdir()
    spec_path = write_spec(tmp_path, name="killme", archs=["mlp", "cnn"], epsilons=[0.1],
                           seeds=[0], epochs=3)
    env = {**os.environ, "UNISWEEP_HOME": str(home), "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(spec_path)], cwd=home,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        lines = _read_until(proc, " epoch 1/3", timeout_s=240)
        assert any(" epoch 1/3" in ln for ln in lines), "".join(lines[-30:])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=60)
    uri = tr.default_paths(home).tracking_uri
    _, runs = trial_runs(uri, "killme")
    assert not all(r.info.status == "FINISHED" for r in runs) or len(runs) < 2

    done = subprocess.run([sys.executable, "-m", "sweeps", "resume", "killme"], cwd=home, env=env,
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client, runs = trial_runs(uri, "killme")
    spec = load_spec(spec_path)
    # Tune's saved state was restored: the same trials (same ids, same runs) went on.
    assert sorted(r.data.tags[tr.TAG_CELL] for r in runs) == sorted(c.key for c in spec.cells())
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert set(steps(client, run.info.run_id, tr.METRIC_EPOCH)) == {1, 2, 3}
    monkeypatch.setenv("UNISWEEP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["status", "killme"]) == 0
    assert "cells 2: 2 finished, 0 running, 0 failed" in capsys.readouterr().out


def test_hpo_phase_then_grid_with_best_values(ray_session, tmp_path, mlflow_store):
    hpo = {"space": {"lr": {"loguniform": [0.01, 0.2]}, "weight_decay": {"choice": [0.0, 5e-4]}},
           "num_samples": 2, "metric": "eval/robust_acc", "mode": "max", "epochs": 1, "seed": 3}
    spec = load_spec(write_spec(tmp_path, name="tuned", archs=["mlp"], epsilons=[0.1], seeds=[0],
                                epochs=1, tracking=tracking_of(mlflow_store),
                                storage=str(tmp_path / "ray_results"), hpo=hpo))
    handle = run_sweep(spec)

    client, hpo_runs = trial_runs(spec.tracking.uri, "tuned", role="hpo")
    assert len(hpo_runs) == 2
    assert all(r.data.tags[tr.TAG_PARENT] == handle.parent_run_id for r in hpo_runs)
    assert all(r.info.status == "FINISHED" for r in hpo_runs)
    best_run = max(hpo_runs, key=lambda r: r.data.metrics[tr.METRIC_ROBUST_ACC])
    parent = client.get_run(handle.parent_run_id).data.params
    assert float(parent["hpo.best.all.lr"]) == float(best_run.data.params["lr"])
    _, grid = trial_runs(spec.tracking.uri, "tuned")
    assert len(grid) == 1 and grid[0].info.status == "FINISHED"
    assert float(grid[0].data.params["lr"]) == float(best_run.data.params["lr"])
    assert float(grid[0].data.params["weight_decay"]) == float(best_run.data.params["weight_decay"])


def test_epoch_checkpoints_are_logged_pruned_and_resume_stays_exact(ray_session, tmp_path,
                                                                     mlflow_store, monkeypatch,
                                                                     capsys):
    """train.checkpoint_every=1, keep_checkpoints=2 over 4 epochs, each trial's worker killed
    after epoch 2: the runs hold checkpoints/epoch_002 and epoch_003 (epoch 1 deleted, epoch 4 is
    the final checkpoint/), each with the weights an uninterrupted run has after that epoch, and
    the analysis compares the models at those epochs."""
    train = {"epochs": 4, "batch_size": 64, "lr": 0.05, "attack_steps": 3,
             "checkpoint_every": 1, "keep_checkpoints": 2}
    spec = load_spec(write_spec(tmp_path, name="ckpts", archs=["mlp", "cnn"], epsilons=[0.1],
                                seeds=[0], epochs=4, tracking=tracking_of(mlflow_store),
                                storage=str(tmp_path / "ray_results"), train=train))
    markers = tmp_path / "faults"
    run_sweep(spec, fault=FaultSwitch(after_epoch=2, marker_dir=str(markers), mode="exit"))
    assert len(list(markers.iterdir())) == 2  # both workers really died once

    client, runs = trial_runs(spec.tracking.uri, "ckpts")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    d = spec.to_dict()
    for run in runs:
        run_id = run.info.run_id
        assert run.info.run_name == tr.trial_run_name(run.data.tags[tr.TAG_ARCH], 1.0, "linf",
                                                      0.1, 0)
        assert steps(client, run_id, tr.METRIC_EPOCH) == [1, 2, 3, 4]  # 1-2 not retrained
        assert tr.logged_epochs(client, run_id) == [2, 3]
        # An uninterrupted run of the cell, its weights kept after every epoch.
        cell = next(c for c in spec.cells() if c.key == run.data.tags[tr.TAG_CELL])
        config = {"cell": {"model": {"arch": cell.arch.name, "width": cell.arch.width},
                           "threat_model": cell.threat_model, "eps": cell.eps, "seed": cell.seed},
                  "dataset": d["dataset"], "train": d["train"], "eval": d["eval"],
                  "num_threads": 1}
        weights = {}

        def keep(metrics, ckpt):
            weights[int(metrics["epoch"])] = load_checkpoint(ckpt)[0].state_dict()

        train_model(TrainConfig.from_dict(train_config_dict(config)), report=keep)
        for epoch, path in ((2, tr.epoch_checkpoint_path(2)), (3, tr.epoch_checkpoint_path(3)),
                            (4, tr.ARTIFACT_CHECKPOINT)):
            local = client.download_artifacts(run_id, path, str(tmp_path / run_id / str(epoch)))
            assert sorted(p.name for p in Path(local).iterdir()) == ["meta.json",
                                                                     "model.safetensors"]
            model, meta = load_checkpoint(local)
            assert meta["epoch"] == epoch
            state = model.state_dict()
            assert all(torch.equal(weights[epoch][k].cpu(), state[k]) for k in state), (epoch, path)
        logged = client.get_metric_history(run_id, tr.METRIC_CLEAN_ACC)
        assert meta_at(client, run_id, 3, tmp_path)["metrics"][tr.METRIC_CLEAN_ACC] == next(
            m.value for m in logged if m.step == 3)

    # The analysis by epoch: 2 models at each of epochs 2, 3 and 4 (the final ones).
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    from analysis.__main__ import main as analysis_main

    uri = ["--tracking-uri", spec.tracking.uri]
    assert analysis_main(["run", "ckpts", "--epoch", "1", "--actors", "0", *uri]) == 2
    assert "epochs 2, 3, 4 (4 = the final ones)" in capsys.readouterr().err
    assert analysis_main(["run", "ckpts", "--epochs", "all", "--actors", "0", "--no-report",
                          "--measures", "linear_cka", *uri]) == 0
    assert "3 new pair results" in capsys.readouterr().out


def meta_at(client, run_id: str, epoch: int, tmp_path: Path) -> dict:
    local = client.download_artifacts(run_id, f"{tr.epoch_checkpoint_path(epoch)}/meta.json",
                                      str(tmp_path / "meta" / run_id))
    return json.loads(Path(local).read_text())
