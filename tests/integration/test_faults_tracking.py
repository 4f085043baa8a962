"""Fault injection on the tracking side, during real sweeps on the 2-node cluster: the MLflow
server killed and restarted, its PostgreSQL stopped and restarted, and checkpoint uploads broken
half way through by a proxy in front of an artifact-serving MLflow server. Nothing may be lost
or duplicated, and no run may be FINISHED without a complete checkpoint (its bytes match the
sha256 in its meta.json).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import pytest

from trainables import tracking as tr
from trainables.checkpoints import load_checkpoint

from .faultproxy import FaultProxy
from .harness import MlflowServer
from .workload import (
    assert_each_epoch_logged_once, assert_one_finished_run_per_cell, before_job_ends, finish,
    spec_cells, submit_sweep, trial_runs,
)

pytestmark = pytest.mark.integration


def _mid_epoch_1_of_2(client, name):
    """Trials RUNNING with epoch 1 logged and epoch 2 to come: run id -> epochs seen."""
    return lambda: {r.info.run_id: int(r.data.metrics["epoch"]) for r in trial_runs(client, name)
                    if r.info.status == "RUNNING" and r.data.metrics.get("epoch", 2) < 2}


def _later_epochs_logged_after(client, running: dict[str, int], since_ms: int) -> None:
    """The trials that were mid-run during an outage logged their later epochs afterwards."""
    for run_id, seen in running.items():
        later = [m for m in client.get_metric_history(run_id, tr.METRIC_EPOCH) if m.value > seen]
        assert later and max(m.timestamp for m in later) >= since_ms, (run_id, seen)


def _outage_mid_sweep(live, home, name: str, outage) -> None:
    """Run a 2-cell, 2-epoch sweep; once a trial is past epoch 1 in MLflow, call ``outage()``
    (it returns when the service is back); then nothing may be lost or logged twice, and the
    trials that were mid-run logged their later epochs after the outage began."""
    client = live.client()
    spec, job = submit_sweep(live, home, name, epochs=2, archs=("cnn",), epsilons=(0.1, 0.2),
                             attack_steps=20)
    running = before_job_ends(live.cluster, job, _mid_epoch_1_of_2(client, name),
                              what="a trial past epoch 1 in MLflow")
    down_ms = int(time.time() * 1000)
    outage()
    assert live.cluster.job_info(job)["status"] == "RUNNING"  # the outage hit a live sweep
    finish(live.cluster, job)

    runs = assert_one_finished_run_per_cell(client, name, spec_cells(spec))
    for run in runs.values():
        assert_each_epoch_logged_once(client, run, 2)
    # The MLflow client's bounded backoff retries held the calls until the service was back.
    _later_epochs_logged_after(client, running, down_ms)


def test_mlflow_server_restarted_mid_sweep_loses_no_metric(live, home):
    _outage_mid_sweep(live, home, "it-mlflowdown",
                      lambda: live.mlflow.restart(down_s=2.0))  # SIGKILL, 2 s down, ~6 s start


def test_postgres_stopped_and_restarted_mid_sweep_loses_no_metric(live, home):
    """The tracking server's database goes away (fast shutdown: every connection dropped) for
    5 s while trials log; the server answers 500s meanwhile, the clients retry, and its
    connection pool reconnects once the database is back."""

    def outage() -> None:
        live.postgres.restart(down_s=5.0)
        assert live.mlflow.healthy()  # the server process itself stayed up

    _outage_mid_sweep(live, home, "it-pgdown", outage)


class _BreakCheckpointUploads:
    """The proxy's rule: the first run uploading ``checkpoint/model.safetensors`` has its first
    upload broken (a transient fault); the second run has every upload broken (a persistent
    one). Which run is which is recorded."""

    def __init__(self) -> None:
        self.transient: str | None = None
        self.persistent: str | None = None
        self.seen: dict[str, int] = {}

    def __call__(self, method: str, path: str) -> str:
        if method != "PUT" or not path.endswith(f"/{tr.ARTIFACT_CHECKPOINT}/model.safetensors"):
            return "pass"
        run_id = re.search(r"/([0-9a-f]{32})/artifacts/", path).group(1)
        if self.transient is None:
            self.transient = run_id
        elif self.persistent is None and run_id != self.transient:
            self.persistent = run_id
        self.seen[run_id] = self.seen.get(run_id, 0) + 1
        if run_id == self.persistent or self.seen[run_id] == 1:
            return "break"
        return "pass"


@pytest.fixture()
def artifact_server(live, home):
    """An MLflow server that stores uploaded artifacts itself (as the cluster's does, to S3),
    on the session PostgreSQL, behind a proxy that breaks checkpoint uploads."""
    server = MlflowServer(home / "mlflow-proxied", live.postgres.create_database("proxied"),
                          home / "proxied-artifacts", proxy_artifacts=True).start()
    rule = _BreakCheckpointUploads()
    proxy = FaultProxy(server.port, rule)
    try:
        yield server, proxy, rule
    finally:
        proxy.stop()
        server.stop()


def test_checkpoint_upload_broken_mid_file_is_retried_or_fails_the_trial(live, home,
                                                                         artifact_server):
    server, proxy, rule = artifact_server
    client, name = tr.make_client(proxy.url), "it-upload"
    # Bounded client retries, so the persistent fault ends the trial within a minute; Tune
    # does not retry it (max_failures 0): a failure must end FAILED, not FINISHED.
    # The artifacts go through the tracking server too (it stores them, as a team server
    # proxies S3): "mlflow-artifacts:" with no host resolves against the tracking URI.
    proxied = "mlflow-artifacts:///"
    spec, job = submit_sweep(live, home, name, tracking_uri=proxy.url, epochs=1,
                             archs=("mlp",), epsilons=(0.0, 0.1), max_failures=0,
                             artifact_location=proxied,
                             env_vars={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    info = live.cluster.wait_job(job, timeout_s=420)
    logs = live.cluster.job_logs(job)
    assert rule.transient and rule.persistent, (rule.seen, logs[-3000:])
    broken = [e for e in proxy.log if e[2].startswith("broken")]
    assert len(broken) >= 2 and rule.seen[rule.transient] >= 2, proxy.log
    assert info["status"] == "FAILED", logs[-3000:]  # one trial errored: the sweep says so

    runs = {r.info.run_id: r for r in trial_runs(client, name)}
    assert set(runs) == {rule.transient, rule.persistent}
    # transient: the upload was retried, the run FINISHED with a complete, verified checkpoint
    done = runs[rule.transient]
    assert done.info.status == "FINISHED"
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(done.info.run_id, tr.ARTIFACT_CHECKPOINT, tmp)
        load_checkpoint(local)  # raises CheckpointError on a truncated or changed file
        meta = json.loads((Path(local) / "meta.json").read_text())
        assert meta["sha256"]["model.safetensors"]
    # persistent: every upload failed, the trial failed cleanly: FAILED, never FINISHED
    failed = runs[rule.persistent]
    assert failed.info.status == "FAILED", failed.info.status
    names = {Path(a.path).name for a in client.list_artifacts(failed.info.run_id,
                                                               tr.ARTIFACT_CHECKPOINT)}
    assert "model.safetensors" not in names, names
    # and nothing anywhere is FINISHED without both checkpoint files
    for run in runs.values():
        if run.info.status == "FINISHED":
            names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id,
                                                                       tr.ARTIFACT_CHECKPOINT)}
            assert {"model.safetensors", "meta.json"} <= names, (run.info.run_id, names)
