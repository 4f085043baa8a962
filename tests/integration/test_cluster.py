"""The whole path on a real 2-node Ray cluster: `ray job submit` a sweep, then its analysis, with
tracking in an MLflow server backed by PostgreSQL. Token auth stays on throughout."""

from __future__ import annotations

import pandas as pd
import pytest

from .workload import PY, assert_one_finished_run_per_cell, spec_cells

pytestmark = pytest.mark.integration


def test_cluster_has_two_nodes_with_their_own_processes(live):
    cluster = live.cluster
    assert len(cluster.alive_node_ips()) >= 2
    roles = cluster.head.roles()
    assert {"gcs_server", "raylet"} <= set(roles), roles
    assert "raylet" in cluster.workers[-1].roles()


def test_sweep_job_trains_every_cell_once_across_both_nodes(live, trained_sweep):
    assert trained_sweep.job_status == "SUCCEEDED", trained_sweep.job_logs[-4000:]
    client = live.client()
    runs = assert_one_finished_run_per_cell(client, trained_sweep.name,
                                            spec_cells(trained_sweep.spec))
    assert len(runs) == 4
    parent_ids = {r.data.tags["mlflow.parentRunId"] for r in runs.values()}
    assert len(parent_ids) == 1
    assert client.get_run(parent_ids.pop()).info.status == "FINISHED"
    for run in runs.values():
        assert 0.0 <= run.data.metrics["final/clean_acc"] <= 1.0
        assert 0.0 <= run.data.metrics["final/robust_acc"] <= run.data.metrics["final/clean_acc"]
    # Trials ran on both nodes (each node has one CPU, a trial needs one).
    trial_nodes = {a["node_ip"] for a in live.cluster.actors("ImplicitFunc", state=None)}
    assert len(trial_nodes) >= 2, trial_nodes


def test_analysis_job_computes_every_pair(live, trained_sweep):
    client = live.client()
    runs = assert_one_finished_run_per_cell(client, trained_sweep.name,
                                            spec_cells(trained_sweep.spec))
    job = live.cluster.submit([PY, "-m", "analysis", "run", trained_sweep.name, "--actors", "2",
                               "--tracking-uri", live.mlflow.url, "--no-report"],
                              env_vars={"UNISWEEP_HOME": str(trained_sweep.home)})
    info = live.cluster.wait_job(job, timeout_s=300)
    assert info["status"] == "SUCCEEDED", live.cluster.job_logs(job)[-4000:]
    table = pd.read_parquet(trained_sweep.home / "reports" / trained_sweep.name / "pairs.parquet")
    assert len(table) > 0 and (table["status"] == "ok").all(), table[table["status"] != "ok"]
    ids = {r.info.run_id for r in runs.values()}
    for measure, rows in table.groupby("measure"):
        pairs = {frozenset((a, b)) for a, b in zip(rows["model_a"], rows["model_b"]) if a != b}
        assert len(pairs) == len(ids) * (len(ids) - 1) // 2, measure
        assert {x for p in pairs for x in p} == ids, measure
    exp = client.get_experiment_by_name(trained_sweep.name)
    analysis = client.search_runs([exp.experiment_id],
                                  filter_string="tags.`unisweep.role` = 'analysis'")
    assert len(analysis) == 1 and analysis[0].info.status == "FINISHED"
    assert analysis[0].data.metrics["analysis/models"] == 4
