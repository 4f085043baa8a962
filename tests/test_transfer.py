"""The inversion-transfer measures (``transfer_target``, ``transfer_seed``): values against a loop
over images, bounds, the engine's planning (inverted set only, ordered pairs), serial == Ray
actors, and a tiny end-to-end analysis on real digits models with an inverted set."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from test_analysis_models import EVAL_SIZE, build_sweep

from analysis.engine import (TRANSFER_MEASURES, MeasureSpec, RayEngine, ResultStore,
                             SerialEngine, item_id, plan_pairs)
from analysis.engine.compare import measure_arrays
from analysis.inputs import ArtifactCache, Block, InvertedInputs, discover_models, load_eval_set
from analysis.measures import MeasureInputError, compare, get_measure, pairwise
from analysis.pipeline import run_analysis
from analysis.reproduction.analysed import analysed_inversion

C = 5
SORT = ["measure", "input_set", "model_a", "model_b"]


def loop_transfer(preds_b, labels) -> float:
    """The definition, one image at a time: share of B's predictions equal to the label."""
    hits = 0
    for p, y in zip(preds_b, labels, strict=True):
        hits += int(p == y)
    return hits / len(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_equal_a_loop_over_images(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    target = rng.integers(0, C, n)
    seed_y = (target + rng.integers(1, C, n)) % C  # a seed's class differs from its target's
    a = rng.integers(0, C, n)
    b = np.where(rng.random(n) < 0.4, target, rng.integers(0, C, n))
    assert compare("transfer_target", a, b, labels=target) == loop_transfer(b, target)
    assert compare("transfer_seed", a, b, labels=seed_y) == loop_transfer(b, seed_y)
    # (A, B) reads B's predictions on A's inversions: A's own predictions do not enter
    assert compare("transfer_target", rng.integers(0, C, n), b, labels=target) == \
        loop_transfer(b, target)
    mat = pairwise("transfer_target", [a, b], labels=target)
    assert mat[0, 1] == loop_transfer(b, target) and mat[1, 0] == loop_transfer(a, target)


def test_bounds_and_declared_metadata():
    y = np.arange(40) % C
    other = (y + 1) % C
    for name in ("transfer_target", "transfer_seed"):
        m = get_measure(name)
        assert m.range == (0.0, 1.0) and m.self_value is None and not m.symmetric
        assert m.input == "labels" and m.kind == "functional" and m.min_n == 1
        assert m.input_sets == ("inverted",)
        assert compare(name, other, y, labels=y) == 1.0  # every inversion seen as the label
        assert compare(name, y, other, labels=y) == 0.0  # none
    assert get_measure("transfer_target").higher_is_more_similar
    assert not get_measure("transfer_seed").higher_is_more_similar  # seen as the seed: apart
    assert get_measure("transfer_target").labels_from == "labels"
    assert get_measure("transfer_seed").labels_from == "seed_labels"
    with pytest.raises(MeasureInputError, match="needs labels"):
        compare("transfer_target", y, y)


def synthetic_inverted(m: int, n: int = 64, seed: int = 0):
    """M models, each with its own inverted set (per-model blocks) plus a shared clean set."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"m{i}" for i in range(m))
    keys = {i: hashlib.sha256(f"inv{seed}{i}".encode()).hexdigest() for i in ids}
    clean_key = "c" * 64
    items, extras = {}, {}
    for row in ids:
        target = rng.integers(0, C, n)
        seed_y = (target + rng.integers(1, C, n)) % C
        extras[keys[row]] = {"seed_labels": seed_y}
        for col in ids:
            pick = rng.random(n)
            preds = np.where(pick < 0.5, target, np.where(pick < 0.8, seed_y,
                                                          rng.integers(0, C, n)))
            items[item_id(col, keys[row])] = {"preds": preds.astype(np.int64), "labels": target,
                                              "features": rng.normal(size=(n, 4))}
    for col in ids:
        items[item_id(col, clean_key)] = {"preds": rng.integers(0, C, n),
                                          "labels": rng.integers(0, C, n),
                                          "features": rng.normal(size=(n, 4))}
    blocks = [Block("inverted", "syn", keys[i], (i,), ids, False) for i in ids]
    blocks.append(Block("clean", "syn", clean_key, ids, ids, True))
    return items, extras, blocks, keys


def run(engine, plan, items, extras) -> pd.DataFrame:
    rows: list[dict] = []
    engine.run(plan, items, sink=rows.extend, extras=extras)
    return pd.DataFrame(rows).sort_values(SORT).reset_index(drop=True)


def test_engines_plan_ordered_inverted_pairs_and_agree(ray_session):
    items, extras, blocks, keys = synthetic_inverted(4)
    specs = [*TRANSFER_MEASURES, MeasureSpec("agreement")]
    plan = plan_pairs(blocks, specs)
    for spec in TRANSFER_MEASURES:  # ordered pairs on the inverted set, none on clean
        assert len(plan[spec]) == 4 * 3
        assert {t.input_set for t in plan[spec]} == {"inverted"}
    assert len(plan[MeasureSpec("agreement")]) == 4 * 3 + 6
    serial = run(SerialEngine(), plan, items, extras)
    actors = run(RayEngine(actors=2, tile_pairs=5), plan, items, extras)
    assert (serial["status"] == "ok").all(), serial.loc[serial.status != "ok", "error"].tolist()
    pd.testing.assert_frame_equal(serial.drop(columns="elapsed_s"),
                                  actors.drop(columns="elapsed_s"))
    got = serial.set_index(["measure", "model_a", "model_b"])["value"]
    for row, key in keys.items():
        for col in keys:
            if col == row:
                continue
            it = items[item_id(col, key)]
            assert got[("transfer_target", row, col)] == loop_transfer(it["preds"], it["labels"])
            assert got[("transfer_seed", row, col)] == loop_transfer(
                it["preds"], extras[key]["seed_labels"])
    assert got[("transfer_target", "m0", "m1")] != got[("transfer_target", "m1", "m0")]


def test_missing_seed_labels_are_named():
    items, _, blocks, keys = synthetic_inverted(2)
    with pytest.raises(MeasureInputError, match="seed_labels"):
        measure_arrays("transfer_seed", items[item_id("m1", keys["m0"])])
    X, extra = measure_arrays("transfer_target", items[item_id("m1", keys["m0"])])
    assert extra["labels"] is items[item_id("m1", keys["m0"])]["labels"]


def test_tiny_analysis_end_to_end_stores_transfer_rows(tmp_path):
    """Two tiny digits models, an inverted set at a tiny setting, the serial pipeline."""
    store = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
             "artifact_root": str(tmp_path / "art")}
    (tmp_path / "art").mkdir()
    build_sweep(store, "tr", [("mlp", 0.0, 0), ("mlp", 0.1, 1)])
    inv = "inverted:iterations=5:num_targets=24"
    res = run_analysis("tr", tracking_uri=store["tracking_uri"], home=tmp_path, actors=0,
                       measures=["transfer_target", "transfer_seed", "agreement"],
                       input_sets=["clean", inv], log_mlflow=False)
    table = ResultStore(res.pairs_path).load()
    assert (table["status"] == "ok").all(), table["error"].tolist()
    tr_rows = table[table["measure"].str.startswith("transfer_")]
    assert set(tr_rows["input_set"]) == {"inverted"}
    assert len(tr_rows) == 2 * 2  # two measures x two ordered pairs
    assert len(table[(table["measure"] == "agreement")]) == 1 + 2
    # the values equal the definition on the cached predictions and the shared pairing
    manifest = json.loads((res.report_dir / "cache" / "manifest.json").read_text())
    base = load_eval_set("digits", eval_size=EVAL_SIZE, seed=0)
    seed_idx, target_idx = InvertedInputs(iterations=5, num_targets=24).pairs(base)
    for blk in manifest["blocks"]:
        if blk["input_set"] != "inverted":
            continue
        (row,) = blk["rows"]
        col = next(r for r in blk["artifacts"] if r != row)
        preds = ArtifactCache.load(blk["artifacts"][col])["preds"]
        for name, labels in (("transfer_target", base.y[target_idx]),
                             ("transfer_seed", base.y[seed_idx])):
            value = tr_rows[(tr_rows.measure == name) & (tr_rows.model_a == row)
                            & (tr_rows.model_b == col)]["value"]
            assert value.item() == loop_transfer(preds, labels)
    # the reproduction finds the analysed inversion from the table and inverts with its settings
    models = discover_models("tr", tracking_uri=store["tracking_uri"]).models
    cache = ArtifactCache(res.report_dir / "cache")
    found = analysed_inversion(res.pairs_path, cache, base, models)
    assert found is not None and found.params() == InvertedInputs(
        iterations=5, num_targets=24).params()
    assert {found.key(base, m) for m in models} == set(tr_rows["inputs_hash"])
    assert analysed_inversion(tmp_path / "none.parquet", cache, base, models) is None
