"""What the integration tests run and how they read the result back: tiny sweep specs, jobs,
and MLflow queries that count runs per grid cell (nothing lost, nothing duplicated)."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from trainables import tracking as tr

from .harness import wait_for
from .raycluster import TERMINAL_JOB_STATES

PY = sys.executable  # the venv's python, by full path (ray job submit runs in Ray's temp dir)


def tiny_spec(path: Path, *, name: str, tracking_uri: str, storage: Path, epochs: int = 2,
              archs: tuple = ("mlp",), epsilons: tuple = (0.0, 0.1), seeds: tuple = (0,),
              max_failures: int = 2, eval_size: int = 120, attack_steps: int = 2,
              artifact_location: str | None = None) -> Path:
    """Write a small sweep spec (digits, tiny final eval); return its path.

    ``attack_steps`` sets the cost of an adversarial epoch (about 0.15 s per step for the cnn
    here): fault tests raise it so that a fault reliably lands inside an epoch.
    """
    spec = {
        "name": name,
        "description": "integration-test sweep",
        "dataset": {"name": "digits", "eval_size": eval_size},
        "archs": list(archs),
        "threat_model": "linf",
        "epsilons": list(epsilons),
        "seeds": list(seeds),
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "attack_steps": attack_steps},
        "eval": {"attack_steps": 2, "final_steps": 3, "restarts": 1},
        "resources": {"cpu": 1, "gpu": 0},
        "max_failures": max_failures,
        "tracking": {"uri": tracking_uri,
                     **({"artifact_location": artifact_location} if artifact_location else {})},
        "storage": str(storage),
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def spec_cells(path: Path) -> set[str]:
    """The grid cell keys of a spec, as the sweep code computes them."""
    from sweeps.spec import load_spec

    return {c.key for c in load_spec(path).cells()}


def trial_runs(client: Any, sweep: str) -> list[Any]:
    """Every MLflow run of role ``trial`` in the sweep's experiment (any status)."""
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{tr.TAG_SWEEP}` = '{sweep}' and "
                                            f"tags.`{tr.TAG_ROLE}` = 'trial'",
                              max_results=1000)


def runs_by_cell(runs: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for run in runs:
        out[run.data.tags.get(tr.TAG_CELL, "?")].append(run)
    return dict(out)


def assert_one_finished_run_per_cell(client: Any, sweep: str, cells: set[str]) -> dict[str, Any]:
    """Nothing lost, nothing duplicated: exactly one run per cell, FINISHED, with a checkpoint.

    Returns:
        cell key -> its run.
    """
    by_cell = runs_by_cell(trial_runs(client, sweep))
    assert set(by_cell) == cells, f"cells with runs {sorted(by_cell)} != grid {sorted(cells)}"
    dupes = {c: [(r.info.run_id, r.info.status) for r in rs] for c, rs in by_cell.items()
             if len(rs) != 1}
    assert not dupes, f"cells with more than one MLflow run: {dupes}"
    runs = {c: rs[0] for c, rs in by_cell.items()}
    unfinished = {c: r.info.status for c, r in runs.items() if r.info.status != "FINISHED"}
    assert not unfinished, f"trial runs not FINISHED: {unfinished}"
    for cell, run in runs.items():
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id,
                                                                  tr.ARTIFACT_CHECKPOINT)}
        assert {"model.safetensors", "meta.json"} <= names, f"{cell}: checkpoint has {names}"
    return runs


def epoch_history(client: Any, run_id: str) -> list[int]:
    """The ``epoch`` metric's logged steps, in logging order."""
    hist = client.get_metric_history(run_id, tr.METRIC_EPOCH)
    return [int(m.value) for m in sorted(hist, key=lambda m: (m.timestamp, m.step))]


def trial_config_for(run: Any) -> dict[str, Any]:
    """The TrainConfig dict a trial ran with, rebuilt from its MLflow params."""
    from trainables.config import TrainConfig

    params = run.data.params
    fields = TrainConfig.__dataclass_fields__
    out: dict[str, Any] = {}
    for key, raw in params.items():
        if key not in fields:
            continue
        out[key] = yaml.safe_load(raw) if raw not in ("None", "") else None
    if isinstance(out.get("extra_eval_eps"), list):
        out["extra_eval_eps"] = tuple(out["extra_eval_eps"])
    return out


# -- jobs: submit a sweep, wait for a moment inside it, wait for its end ----------------------


def fault_env(marker_dir: Path, *, mode: str = "watch", after_epoch: int = 0) -> dict[str, str]:
    """The sweep's test-only fault switch (`sweeps.tuner.FaultSwitch`) as job environment."""
    return {"UNISWEEP_FAULT_AFTER_EPOCH": str(after_epoch), "UNISWEEP_FAULT_MODE": mode,
            "UNISWEEP_FAULT_MARKER_DIR": str(marker_dir)}


def submit_sweep(live: Any, home: Path, name: str, *, command: str = "run",
                 tracking_uri: str | None = None, env_vars: dict[str, str] | None = None,
                 **spec_kw: Any) -> tuple[Path, str]:
    """Write a tiny spec and ``ray job submit`` ``python -m sweeps <command> SPEC``."""
    spec = home / "spec.yaml"
    if not spec.exists():
        tiny_spec(spec, name=name, tracking_uri=tracking_uri or live.mlflow.url,
                  storage=home / "ray_results", **spec_kw)
    job = live.cluster.submit([PY, "-m", "sweeps", command, str(spec)],
                              env_vars={"UNISWEEP_HOME": str(home), **(env_vars or {})})
    return spec, job


def before_job_ends(cluster: Any, job: str, check, *, what: str, timeout_s: float = 300,
                    interval_s: float = 0.2):
    """Poll ``check()`` until truthy; fail at once if the job ends first (fault not injected)."""

    def probe():
        value = check()
        if value:
            return value
        status = cluster.job_info(job)["status"]
        if status in TERMINAL_JOB_STATES:
            raise AssertionError(f"job {job} ended ({status}) before {what}; fault not injected:"
                                 f"\n{cluster.job_logs(job)[-3000:]}")
        return None

    return wait_for(probe, timeout_s=timeout_s, what=what, interval_s=interval_s)


def finish(cluster: Any, job: str, *, timeout_s: float = 420) -> str:
    """Wait for the job's end, assert it SUCCEEDED; returns its logs."""
    info = cluster.wait_job(job, timeout_s=timeout_s)
    logs = cluster.job_logs(job)
    assert info["status"] == "SUCCEEDED", logs[-5000:]
    return logs


# -- MLflow histories: every metric, every step, in logging order ---------------------------


def histories(client: Any, run: Any) -> dict[str, list[tuple[int, float]]]:
    """Each metric of ``run`` as its full history: [(step, value), ...] in logging order."""
    out = {}
    for key in run.data.metrics:
        hist = client.get_metric_history(run.info.run_id, key)
        out[key] = [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.timestamp, m.step))]
    return out


def assert_each_epoch_logged_once(client: Any, run: Any, epochs: int) -> dict[str, list]:
    """Every per-epoch metric has steps exactly [1, ..., epochs] (``final/*``: [epochs]), as a
    list: a repeated epoch shows as a repeated step. Returns the histories."""
    hist = histories(client, run)
    assert tr.METRIC_EPOCH in hist, sorted(hist)
    for key, points in hist.items():
        want = [epochs] if key.startswith("final/") else list(range(1, epochs + 1))
        assert [s for s, _ in points] == want, (run.info.run_id, key, points)
    return hist
