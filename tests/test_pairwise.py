"""The all-pairs engines on synthetic per-model artifacts: serial == Ray actors, fault tolerance,
resumability through the result store, error rows, asymmetric (per-model) input sets."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from analysis.measures import MeasureInputError, get_measure
from analysis.engine import (KEY, MeasureSpec, RayEngine, ResultStore, SerialEngine, item_id,
                             make_engine, parse_measure, plan_pairs)
from analysis.inputs import Block
from trainables.errors import ConfigError

SPECS = [MeasureSpec("linear_cka"), MeasureSpec("knn_jaccard", (("k", 5),)),
         MeasureSpec("procrustes_sim"), MeasureSpec("agreement"), MeasureSpec("jsd_sim"),
         MeasureSpec("error_consistency")]
SORT = ["measure", "input_set", "model_a", "model_b"]
BLOCK_TOL = 1e-10


def synthetic(m: int, n: int = 120, d: int = 12, seed: int = 0, *, per_model: bool = False):
    """M models sharing a latent: features, predictions, probabilities, labels; + blocks."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"m{i}" for i in range(m))
    labels = rng.integers(0, 4, n)
    keys = {"shared": "s" * 64} if not per_model else {
        i: hashlib.sha256(f"{seed}{i}".encode()).hexdigest() for i in ids}
    items = {}
    latent = rng.normal(size=(n, d))
    for key in keys.values():
        for i in ids:
            feats = latent @ rng.normal(size=(d, d)) + 0.7 * rng.normal(size=(n, d))
            logits = feats[:, :4] + rng.normal(size=(n, 4))
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            items[item_id(i, key)] = {"features": feats.astype(np.float32),
                                      "probs": probs.astype(np.float32),
                                      "preds": logits.argmax(1).astype(np.int64), "labels": labels}
    if per_model:
        blocks = [Block("adv", "syn", keys[i], (i,), ids, False) for i in ids]
    else:
        blocks = [Block("clean", "syn", keys["shared"], ids, ids, True)]
    return items, blocks


def run(engine, plan, items) -> pd.DataFrame:
    rows: list[dict] = []
    engine.run(plan, items, sink=rows.extend)
    return pd.DataFrame(rows).sort_values(SORT).reset_index(drop=True)


def test_actor_engine_equals_serial_engine_exactly(ray_session):
    items, blocks = synthetic(5)
    a_items, a_blocks = synthetic(4, seed=1, per_model=True)
    items.update(a_items)
    plan = plan_pairs(blocks + a_blocks, SPECS)
    # symmetric measures on a shared set: each unordered pair once; per-model: all ordered pairs
    assert len(plan[SPECS[0]]) == 10 + 12
    serial = run(SerialEngine(use_blocks=False), plan, items)
    actors = run(RayEngine(actors=2, tile_pairs=3), plan, items)
    assert (serial["status"] == "ok").all(), serial.loc[serial.status != "ok", "error"].tolist()
    pd.testing.assert_frame_equal(serial.drop(columns="elapsed_s"),
                                  actors.drop(columns="elapsed_s"))
    blocked = run(SerialEngine(use_blocks=True), plan, items)
    np.testing.assert_allclose(blocked["value"], serial["value"], rtol=0, atol=BLOCK_TOL)
    # asymmetric entry (i, j) uses row model i's inputs: (m0, m1) != (m1, m0) in general
    adv = serial[(serial.input_set == "adv") & (serial.measure == "linear_cka")].set_index(
        ["model_a", "model_b"])["value"]
    assert adv[("m0", "m1")] != adv[("m1", "m0")]
    # and it equals the measure on the two models' features on m0's inputs
    key = a_blocks[0].inputs_key
    direct = get_measure("linear_cka").compare(items[item_id("m0", key)]["features"],
                                               items[item_id("m1", key)]["features"])
    assert adv[("m0", "m1")] == pytest.approx(direct, abs=1e-12)


def test_killed_actor_is_replaced_and_the_matrix_still_completes(ray_session):
    items, blocks = synthetic(8, n=150)
    specs = [MeasureSpec("linear_cka"), MeasureSpec("agreement")]
    plan = plan_pairs(blocks, specs)
    serial = run(SerialEngine(use_blocks=False), plan, items)
    engine = RayEngine(actors=2, tile_pairs=2, inflight=1)
    killed = []

    def kill_once(done, total):
        if not killed and done >= 4:  # mid-run: tiles remain queued and in flight
            killed.append(done)
            ray_session.kill(engine.actors[0], no_restart=False)

    rows: list[dict] = []
    engine.run(plan, items, sink=rows.extend, progress=kill_once)
    got = pd.DataFrame(rows).sort_values(SORT).reset_index(drop=True)
    assert killed and killed[0] < len(serial)
    assert engine.stats.restarts >= 1, engine.stats  # the killed actor came back with a new pid
    assert (got["status"] == "ok").all(), got.loc[got.status != "ok", "error"].tolist()
    pd.testing.assert_frame_equal(serial.drop(columns="elapsed_s"), got.drop(columns="elapsed_s"))


def test_second_run_computes_nothing_new(tmp_path):
    items, blocks = synthetic(4)
    store = ResultStore(tmp_path / "pairs.parquet")
    plan = plan_pairs(blocks, SPECS[:2])
    assert store.append(run(SerialEngine(), plan, items)) == 12
    again = plan_pairs(blocks, SPECS[:2], done=store.keys())
    assert sum(len(v) for v in again.values()) == 0
    assert store.append(run(SerialEngine(), plan, items)) == 0  # duplicates are never stored
    table = store.load()
    assert len(table) == 12 and not table.duplicated(list(KEY)).any()
    # a new measure computes only its own pairs
    more = plan_pairs(blocks, SPECS[:3], done=store.keys())
    assert [len(v) for v in more.values()] == [0, 0, 6]


def test_failing_comparison_is_an_error_row_never_a_silent_nan(tmp_path):
    items, blocks = synthetic(3)
    items[item_id("m1", blocks[0].inputs_key)]["features"][0, 0] = np.nan
    plan = plan_pairs(blocks, [MeasureSpec("linear_cka")])
    got = run(SerialEngine(), plan, items)
    bad = got[(got.model_a == "m1") | (got.model_b == "m1")]
    assert (bad["status"] == "error").all() and bad["value"].isna().all()
    assert bad["error"].str.contains("prepare failed for m1: MeasureInputError").all()
    assert got.loc[~got.index.isin(bad.index), "status"].eq("ok").all()
    store = ResultStore(tmp_path / "p.parquet")
    store.append(got)
    assert store.load()["status"].value_counts().to_dict() == {"error": 2, "ok": 1}
    with pytest.raises(ValueError, match="status 'ok' but value NaN"):
        store.append(got.assign(status="ok", model_a="x"))


def test_measure_specs_and_engine_arguments_are_validated():
    assert parse_measure("knn_jaccard:k=10") == MeasureSpec("knn_jaccard", (("k", 10),))
    assert parse_measure("knn_jaccard:k=10").canonical == '{"k":10}'
    with pytest.raises(MeasureInputError, match="unknown measure 'cka9'; known:"):
        parse_measure("cka9")
    with pytest.raises(MeasureInputError, match="k=0 is invalid"):
        parse_measure("knn_jaccard:k=0")
    with pytest.raises(ConfigError, match="actors must be an integer >= 0"):
        make_engine(-1)
    assert isinstance(make_engine(0), SerialEngine)
