"""Fault injection on the analysis side, on the 2-node cluster: a pair actor SIGKILLed while it
holds a tile of a 12-model plan, and a checkpoint whose tensor data has one flipped byte. The job
must finish every pair, its engine must report the actor restart, Ray must show the held tile
retried, the matrix must equal the serial engine's bit for bit, and the corrupt model must be
skipped with a reason that names its file and the checksum.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
from test_analysis_models import build_sweep
from threadpoolctl import threadpool_limits

from analysis.engine import KEY, SerialEngine, item_id, parse_measure, plan_pairs
from analysis.inputs import Block
from trainables import tracking as tr

from .workload import PY, before_job_ends, finish, trial_runs

pytestmark = pytest.mark.integration

SWEEP = "it-many"
MODELS = 13  # 12 to analyse + 1 with a corrupt checkpoint
# rtd (one subsample) makes a tile last about a second, long enough to be caught running.
MEASURES = ("rtd:n_subsamples=1", "linear_cka", "agreement")


def _local_path(artifact_uri: str) -> Path:
    parsed = urlparse(artifact_uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else Path("/nonexistent")


def _flip_tensor_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8 + int.from_bytes(raw[:8], "little") + 11] ^= 0x01  # inside the tensor data
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def many_models(services):
    """13 real 1-epoch digits mlps logged as the FINISHED trials of SWEEP (in-process training,
    ~1 s each), one of them with a flipped byte in its stored model.safetensors."""
    store = {"tracking_uri": services.mlflow.url,
             "artifact_root": str(services.mlflow.artifact_root / SWEEP)}
    build_sweep(store, SWEEP, [("mlp", 0.0, seed) for seed in range(MODELS)])
    runs = sorted(trial_runs(services.client(), SWEEP), key=lambda r: r.info.run_id)
    assert len(runs) == MODELS
    victim = runs[0]
    _flip_tensor_byte(_local_path(victim.info.artifact_uri) / tr.ARTIFACT_CHECKPOINT
                      / "model.safetensors")
    return runs, victim


def _serial_rows(out: Path) -> pd.DataFrame:
    """The serial engine, pair by pair, on the job's own cached artifacts (its manifest)."""
    manifest = json.loads((out / "cache" / "manifest.json").read_text())
    blocks = [Block(b["input_set"], b["dataset"], b["inputs_hash"], tuple(b["rows"]),
                    tuple(b["rows"]), True, {r: Path(p) for r, p in b["artifacts"].items()})
              for b in manifest["blocks"]]
    assert all(len(b.rows) == MODELS - 1 for b in blocks)
    items = {item_id(r, b.inputs_key): p for b in blocks for r, p in b.artifacts.items()}
    plan = plan_pairs(blocks, [parse_measure(m) for m in MEASURES])
    rows: list[dict] = []
    with threadpool_limits(limits=1):  # as each actor runs (one BLAS thread)
        SerialEngine(use_blocks=False).run(plan, items, sink=rows.extend)
    return pd.DataFrame(rows)


def test_actor_killed_holding_a_tile_of_a_12_model_plan(live, many_models, tmp_path):
    runs, victim = many_models
    home = tmp_path / "home"
    job = live.cluster.submit([PY, "-m", "analysis", "run", SWEEP, "--actors", "2",
                               "--tracking-uri", live.mlflow.url, "--no-report",
                               "--measures", *MEASURES],
                              env_vars={"UNISWEEP_HOME": str(home)})

    def running_tile():
        for task in live.cluster.tasks("_PairWorker.run_tile"):
            if task["state"] == "RUNNING":
                actor = [a for a in live.cluster.actors("_PairWorker")
                         if a["actor_id"] == task["actor_id"]]
                if actor:
                    return task, actor[0]
        return None

    task, actor = before_job_ends(live.cluster, job, running_tile, what="a tile running on an "
                                  "actor", timeout_s=400, interval_s=0.1)
    live.cluster.kill_actor_process(actor)
    logs = finish(live.cluster, job, timeout_s=400)

    # The engine saw its actor come back, and Ray re-ran the tile the actor was holding.
    engine = re.search(r"engine: (\d+) pairs on 2 actors, (\d+) actor restart\(s\)", logs)
    assert engine and int(engine.group(2)) >= 1, logs[-3000:]
    attempts = [t["attempt_number"] for t in live.cluster.tasks("_PairWorker.run_tile")
                if t["task_id"] == task["task_id"]]
    assert max(attempts) >= 1, attempts
    exp = live.client().get_experiment_by_name(SWEEP)
    analysis = tr.search_sweep_runs(live.client(), exp.experiment_id, sweep=SWEEP,
                                    role="analysis")[-1]
    assert analysis.data.metrics["analysis/actor_restarts"] >= 1

    # The corrupt model is skipped, named, with the checksum as the reason.
    out = home / "reports" / SWEEP
    skipped = json.loads((out / "skipped.json").read_text())
    reason = skipped[victim.info.run_id]
    assert "model.safetensors" in reason and "sha256" in reason, reason
    assert "skipped" in logs and "sha256" in logs

    # Every pair of the other 12 models, every measure, and bit for bit the serial engine's.
    table = pd.read_parquet(out / "pairs.parquet")
    assert (table["status"] == "ok").all(), table[table["status"] != "ok"]
    others = {r.info.run_id for r in runs} - {victim.info.run_id}
    assert set(table["model_a"]) | set(table["model_b"]) == others
    assert table.groupby("measure").size().to_dict() == {
        m.split(":")[0]: (MODELS - 1) * (MODELS - 2) // 2 for m in MEASURES}
    serial = _serial_rows(out)
    got = table.set_index(list(KEY))["value"].sort_index()
    want = serial.set_index(list(KEY))["value"].sort_index()
    assert list(got.index) == list(want.index)
    assert (got.to_numpy() == want.to_numpy()).all(), (got - want).abs().max()
