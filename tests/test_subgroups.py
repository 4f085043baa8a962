"""Agree/disagree subgroups: exact splits, fresh state per subset, permutation test, tiny subsets."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.engine import MeasureSpec
from analysis.measures import compare
from analysis.reproduction.subgroups import (
    min_samples,
    results_frame,
    split_agree,
    subgroup_similarity,
)
from trainables.errors import ConfigError, DataError

CKA = MeasureSpec("linear_cka")
JACC = MeasureSpec("knn_jaccard", {"k": 10})


def _preds(n: int, disagree: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Predictions of two models over 10 classes that differ exactly at ``disagree``."""
    pa = rng.integers(0, 10, size=n)
    pb = pa.copy()
    pb[disagree] = (pa[disagree] + 1 + rng.integers(0, 9, size=disagree.size)) % 10
    return pa, pb


def test_split_has_exact_sizes(rng):
    dis = np.sort(rng.choice(100, size=23, replace=False))
    pa, pb = _preds(100, dis, rng)
    agree, disagree = split_agree(pa, pb)
    np.testing.assert_array_equal(disagree, dis)
    assert agree.size == 77 and np.union1d(agree, disagree).size == 100
    # Logits are argmaxed first.
    la, lb = np.eye(10)[pa], np.eye(10)[pb]
    np.testing.assert_array_equal(split_agree(la, lb)[1], dis)
    with pytest.raises(DataError, match="equal length"):
        split_agree(pa, pb[:-1])


def test_identical_features_give_no_difference(rng):
    X = rng.normal(size=(120, 6))
    pa, pb = _preds(120, np.arange(40), rng)
    (res,) = subgroup_similarity(X, X, pa, pb, measures=[CKA], n_permutations=30, seed=0)
    assert res.status == "ok" and (res.n_agree, res.n_disagree) == (80, 40)
    assert res.agree == pytest.approx(1.0) and res.disagree == pytest.approx(1.0)
    assert res.diff == pytest.approx(0.0, abs=1e-9)
    assert res.p_value == 1.0


def test_known_effect_is_detected_and_seeded(rng):
    n, dis = 150, np.arange(100, 150)
    A = rng.normal(size=(n, 8))
    B = A @ np.linalg.qr(rng.normal(size=(8, 8)))[0]  # same representation up to rotation
    B[dis] = rng.normal(size=(dis.size, 8))  # unrelated on the disagree subset
    pa, pb = _preds(n, dis, rng)
    res = subgroup_similarity(A, B, pa, pb, measures=[CKA, JACC], n_permutations=49, seed=1)
    for r in res:
        assert r.status == "ok", r.reason
        assert r.agree > 0.95 and r.disagree < 0.5 and r.diff > 0.5
        assert r.p_value == pytest.approx(2 / 50)  # observed beyond every permutation
        assert r.n_permutations == 49
    again = subgroup_similarity(A, B, pa, pb, measures=[CKA, JACC], n_permutations=49, seed=1)
    assert [r.null_mean for r in again] == [r.null_mean for r in res]
    frame = results_frame(res, model_a="a", model_b="b")
    assert list(frame["measure"]) == ["linear_cka", "knn_jaccard"]
    assert frame.loc[1, "params"] == "k=10"


def test_each_subset_is_computed_with_fresh_state(rng):
    """The disagree value depends only on the disagree rows (no accumulator carried over)."""
    n, dis = 90, np.arange(60, 90)
    A, B = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
    pa, pb = _preds(n, dis, rng)
    (r1,) = subgroup_similarity(A, B, pa, pb, measures=[CKA], n_permutations=0)
    A2, B2 = A.copy(), B.copy()
    A2[:60] = rng.normal(size=(60, 5))  # change only the agree rows
    (r2,) = subgroup_similarity(A2, B2, pa, pb, measures=[CKA], n_permutations=0)
    assert r1.disagree == pytest.approx(compare("linear_cka", A[dis], B[dis]), abs=1e-12)
    assert r2.disagree == pytest.approx(r1.disagree, abs=1e-12)
    assert r2.agree != pytest.approx(r1.agree)
    assert np.isnan(r1.p_value) and r1.n_permutations == 0


def test_tiny_disagree_subset_is_recorded_not_crashed(rng):
    """A subset below the measure's declared meaningful N (SPEC §10) is "too small", with the
    rule, never a value: k-NN with k=10 needs max(50, 2k) = 50 rows, biased CKA N > D and 20."""
    n = 100
    A = rng.normal(size=(n, 4))
    pa, pb = _preds(n, np.arange(25), rng)  # 25 disagreements: too few for k=10, enough for CKA
    jac, cka = subgroup_similarity(A, A, pa, pb, measures=[JACC, CKA], n_permutations=5)
    assert jac.status == "too_small" and np.isnan(jac.agree)
    assert "disagree subset has 25 rows" in jac.reason and ">= 50" in jac.reason
    assert "max(50, 2k)" in jac.reason
    assert cka.status == "ok"  # biased CKA on D=4 features: N > 4 and the common floor 20
    assert min_samples(JACC) == 50 and min_samples(CKA) == 20
    assert min_samples(CKA, (4, 64)) == 65  # biased CKA: N > D
    assert min_samples(MeasureSpec("svcca"), (30, 40)) == 71  # CCA: N > Da + Db
    (small,) = subgroup_similarity(A, A, *_preds(n, np.arange(10), rng), measures=[CKA],
                                   n_permutations=0)
    assert small.status == "too_small" and "disagree subset has 10 rows" in small.reason
    none = subgroup_similarity(A, A, pa, pa, measures=[CKA], n_permutations=5)[0]
    assert none.status == "too_small" and none.n_disagree == 0
    with pytest.raises(ConfigError, match="n_permutations"):
        subgroup_similarity(A, A, pa, pb, measures=[CKA], n_permutations=-1)
