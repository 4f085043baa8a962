"""analysis.inputs (extraction, input sets) on tiny real models in a real sqlite MLflow store:
fixed hashed inputs, the data-hash refusal, the on-disk cache, per-model adversarial inputs, Ray
tasks == serial."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from test_analysis_models import EVAL_SIZE, build_sweep

from analysis.inputs import (ArtifactCache, check_data_hash, discover_models, extract_all,
                             load_eval_set, make_input_set)
from trainables.errors import ConfigError, DataError

CELLS = [("mlp", 0.0, 0), ("mlp", 0.1, 0), ("cnn", 0.1, 1)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    (root / "art").mkdir()
    store = {"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "art")}
    build_sweep(store, "ext", CELLS, extra=[{"eval_seed": 7, "seed": 9}])
    disc = discover_models("ext", tracking_uri=store["tracking_uri"])
    base = load_eval_set("digits", eval_size=EVAL_SIZE, seed=0)
    return store, disc, base


def test_a_model_evaluated_on_other_inputs_is_refused_with_a_clear_error(sweep, tmp_path):
    store, disc, base = sweep
    other = next(m for m in disc.models if m.seed == 9)
    with pytest.raises(DataError, match=r"model mlp-e0-s9 \(run .*\) was evaluated on inputs "
                                        r"with data_hash .* refused"):
        check_data_hash(other, base)
    blocks, failures = extract_all(disc.models, [make_input_set("clean")], bases={"digits": base},
                                   cache=ArtifactCache(tmp_path), tracking_uri=store["tracking_uri"])
    assert "mlp-e0-s9" in failures[other.run_id]
    assert len(blocks) == 1 and len(blocks[0].rows) == 3 and other.run_id not in blocks[0].rows


def test_artifacts_are_cached_and_a_second_extraction_computes_nothing(sweep, tmp_path):
    store, disc, base = sweep
    models = [m for m in disc.models if m.seed != 9]
    calls = []
    kw = dict(bases={"digits": base}, cache=ArtifactCache(tmp_path / "c"),
              tracking_uri=store["tracking_uri"], progress=lambda *a: calls.append(a))
    blocks, failures = extract_all(models, [make_input_set("clean")], **kw)
    assert failures == {} and calls[-1] == ("features", 3, 3)
    art = ArtifactCache.load(blocks[0].artifacts[models[1].run_id])
    n = len(base.y)
    assert art["features"].dtype == np.float32 and art["features"].shape[0] == n
    assert art["logits"].shape == (n, 10) and art["probs"].shape == (n, 10)
    np.testing.assert_allclose(art["probs"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(art["preds"], art["logits"].argmax(1))
    np.testing.assert_array_equal(art["labels"], base.y)
    assert blocks[0].inputs_key == base.hash  # the clean set is named by the eval hash itself
    calls.clear()
    again, _ = extract_all(models, [make_input_set("clean")], **kw)
    assert calls == [] and again == blocks


def test_per_model_adversarial_inputs_and_ray_tasks_equal_serial(sweep, tmp_path, ray_session):
    store, disc, base = sweep
    models = [m for m in disc.models if m.seed != 9]
    isets = [make_input_set("adv", steps=3), make_input_set("adv_shared", steps=3)]
    kw = dict(bases={"digits": base}, tracking_uri=store["tracking_uri"])
    blocks, failures = extract_all(models, isets, cache=ArtifactCache(tmp_path / "s"), **kw)
    assert failures == {}
    adv = [b for b in blocks if b.input_set == "adv"]
    assert [b.rows for b in adv] == [(m.run_id,) for m in models]  # one row block per model
    shared = [b for b in blocks if b.input_set == "adv_shared"]
    assert len(shared) == 1 and shared[0].rows == shared[0].cols == tuple(m.run_id for m in models)
    cache = ArtifactCache(tmp_path / "s")
    for b, m in zip(adv, models, strict=True):
        X = ArtifactCache.load(cache.inputs_path(b.inputs_key))["X"]
        if m.eps == 0:  # a standard model's own-eps attack is the identity
            np.testing.assert_array_equal(X, base.X)
        else:  # linf ball of the model's own eps, valid pixels, and actually moved
            delta = np.abs(X - base.X).max()
            assert 0 < delta <= m.eps + 1e-6 and X.min() >= 0 and X.max() <= 1
    ray_blocks, ray_fail = extract_all(models, isets, cache=ArtifactCache(tmp_path / "r"),
                                       use_ray=True, **kw)
    assert ray_fail == {} and [b.inputs_key for b in ray_blocks] == [b.inputs_key for b in blocks]
    for b_s, b_r in zip(blocks, ray_blocks, strict=True):
        for rid in b_s.cols:
            s, r = ArtifactCache.load(b_s.artifacts[rid]), ArtifactCache.load(b_r.artifacts[rid])
            np.testing.assert_allclose(s["features"], r["features"], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(s["preds"], r["preds"])


def test_input_set_options_are_validated(sweep):
    _, _, base = sweep
    with pytest.raises(ConfigError, match=r"unknown input set 'noisy'; known: .*'inverted'"):
        make_input_set("noisy")
    with pytest.raises(ConfigError, match="adv.steps must be >= 1"):
        make_input_set("adv", steps=0)
    inv = make_input_set("inverted", iterations=5, num_targets=16)  # registered by the engine
    assert inv.per_model and inv.name == "inverted" and inv.size(base) == 16
    assert make_input_set("inverted").size(base) == make_input_set("clean").size(base) == EVAL_SIZE
    with pytest.raises(ConfigError, match="inversion.iterations must be an int >= 1"):
        make_input_set("inverted", iterations=0)
    with pytest.raises(ConfigError, match=r"inverted.num_targets must be an int in \[1, 120\]"):
        make_input_set("inverted", num_targets=500).size(base)


def test_input_sets_pickle_for_ray_tasks(sweep):
    """Every registered set is a module-level class: it pickles by reference into a Ray task."""
    _, _, base = sweep
    for name in ("clean", "adv", "adv_shared", "inverted", "train_split"):
        iset = make_input_set(name)
        back = pickle.loads(pickle.dumps(iset))
        assert type(back) is type(iset) and back.key(base, None) == iset.key(base, None)
    X, y = make_input_set("train_split", max_train=100).build(base, None, tracking_uri=None)
    assert X.shape == (100, 1, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() >= 0 and X.max() <= 1 and len(np.unique(y)) == 10


def test_inverted_inputs_cache_their_seed_target_pairing(sweep, tmp_path):
    """The report's inversion figure reads the pairing from the cached inputs, not recomputed."""
    store, disc, base = sweep
    models = [m for m in disc.models if m.seed != 9][:2]
    inv = make_input_set("inverted", iterations=2, num_targets=8)
    cache = ArtifactCache(tmp_path / "inv")
    blocks, failures = extract_all(models, [inv], bases={"digits": base}, cache=cache,
                                   tracking_uri=store["tracking_uri"])
    assert failures == {} and len(blocks) == len(models)
    seed_idx, target_idx = inv.pairs(base)
    for b, m in zip(blocks, models, strict=True):
        z = ArtifactCache.load(cache.inputs_path(b.inputs_key))
        np.testing.assert_array_equal(z["seed_idx"], seed_idx)
        np.testing.assert_array_equal(z["target_idx"], target_idx)
        np.testing.assert_array_equal(z["seed_y"], base.y[seed_idx])
        np.testing.assert_array_equal(z["y"], base.y[target_idx])
        assert z["X"].shape == (8, *base.X.shape[1:])
        assert json.loads(str(z["info"]))["source"] == m.run_id
