"""Contract tests parametrised over the whole measure registry (STYLE rule 20).

For every measure: declared self value, symmetry, declared invariances hold and undeclared ones
are violated on random data (so the metadata is honest), values in the declared range,
determinism, pairwise == matrix of compare calls, prepare/compare_states == compare, picklable
compact states, and input errors.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from analysis.measures import INVARIANCES, MEASURES, MeasureInputError, compare, get_measure, orient, pairwise

TOL = 1e-9  # same-math comparisons (invariances, symmetry, paths)
SELF_TOL = 1e-6  # self values (arccos near 1 amplifies rounding to ~1e-8)
# N_FEAT is at least every measure's declared meaningful N for these inputs (k-NN with k=5:
# max(50, 2k) = 50; SVCCA/PWCCA: > Da + Db = 11; biased CKA: > D = 6), so compare does not refuse.
N_FEAT, N_FUNC, C = 60, 200, 5

# Small settings for the slow or N-bound measures.
TEST_PARAMS = {
    "rtd": {"n_subsamples": 2, "subsample_size": 24},
    "knn_jaccard": {"k": 5},
    "rank_sim": {"k": 5},
    "joint_rank_jaccard": {"k": 5},
}
FEATURE_INV = sorted(INVARIANCES - {"class_relabel"})
FUNCTIONAL_INV = ["class_relabel"]
NAMES = sorted(MEASURES)


def _features(rng: np.random.Generator, n: int = N_FEAT) -> tuple[np.ndarray, np.ndarray]:
    """Related A (n, 6), B (n, 5) with decaying spectra (so SVCCA's 99% truncation bites)."""
    Z = rng.normal(size=(n, 6))
    A = Z * np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.05]) + 0.3
    B = np.tanh(Z[:, :5] @ rng.normal(size=(5, 5))) + 0.4 * rng.normal(size=(n, 5))
    B[:, 4] *= 0.05
    return A, B


def _labels(rng: np.random.Generator, n: int = N_FUNC) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = rng.integers(0, C, size=n)
    a = np.where(rng.random(n) < 0.7, y, rng.integers(0, C, size=n))
    b = np.where(rng.random(n) < 0.6, y, rng.integers(0, C, size=n))
    return a, b, y


def _probs(rng: np.random.Generator, n: int = N_FUNC) -> tuple[np.ndarray, np.ndarray]:
    base = rng.normal(size=(n, C))

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return softmax(2 * base + rng.normal(size=(n, C))), softmax(2 * base + rng.normal(size=(n, C)))


def inputs(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(A, B, params) of the right kind for measure `name`."""
    rng = np.random.default_rng(seed)
    m = MEASURES[name]
    params = dict(TEST_PARAMS.get(name, {}))
    if m.input == "features":
        A, B = _features(rng)
    elif m.input == "labels":
        A, B, y = _labels(rng)
        if "labels" in m.params:
            params["labels"] = y
    else:
        A, B = _probs(rng)
    return A, B, params


def transform(kind: str, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    d = X.shape[1]
    if kind == "orthogonal":
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        return X @ Q
    if kind == "isotropic_scale":
        return 3.7 * X
    if kind == "translation":
        return X + 5.0 * rng.normal(size=(1, d))
    if kind == "permutation":
        return X[:, rng.permutation(d)]
    if kind == "invertible_linear":
        return X @ (rng.normal(size=(d, d)) + 0.5 * np.eye(d))
    raise AssertionError(kind)


def close(a: float, b: float, tol: float = TOL) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("name", NAMES)
def test_metadata_complete(name: str) -> None:
    m = MEASURES[name]
    assert m.name == name
    assert m.kind in ("representational", "functional")
    assert (m.kind == "representational") == (m.input == "features")
    assert m.range[0] <= m.self_value <= m.range[1]
    assert m.reference and m.formula and m.cost
    assert m.invariances <= INVARIANCES
    assert orient(name, 2.0) == (2.0 if m.higher_is_more_similar else -2.0)


@pytest.mark.parametrize("name", NAMES)
def test_self_value_range_determinism(name: str) -> None:
    m = MEASURES[name]
    A, B, params = inputs(name)
    for X in (A, B):
        assert abs(compare(name, X, X, **params) - m.self_value) <= SELF_TOL
    v = compare(name, A, B, **params)
    assert np.isfinite(v)
    assert m.range[0] - 1e-12 <= v <= m.range[1] + 1e-12
    assert compare(name, A, B, **params) == v  # bit-identical on repeat
    # related inputs are distinguishable from identical ones (the measure is not constant)
    assert abs(v - m.self_value) > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_symmetry_as_declared(name: str) -> None:
    A, B, params = inputs(name)
    ab, ba = compare(name, A, B, **params), compare(name, B, A, **params)
    if MEASURES[name].symmetric:
        assert close(ab, ba)
    else:
        assert not close(ab, ba, 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_invariances_are_honest(name: str) -> None:
    m = MEASURES[name]
    A, B, params = inputs(name)
    base = compare(name, A, B, **params)
    vocab = FEATURE_INV if m.input == "features" else FUNCTIONAL_INV
    for kind in vocab:
        rng = np.random.default_rng(1)
        if kind == "class_relabel":
            perm = rng.permutation(C)
            p = dict(params)
            if "labels" in p:
                p["labels"] = perm[p["labels"]]
            if m.input == "labels":
                values = [compare(name, perm[A], perm[B], **p)]
            else:  # probs: class c moves to column perm[c]
                inv = np.argsort(perm)
                values = [compare(name, A[:, inv], B[:, inv], **p)]
        else:
            values = [
                compare(name, transform(kind, A, rng), B, **params),
                compare(name, A, transform(kind, B, rng), **params),
            ]
        if kind in m.invariances:
            assert all(close(v, base, 1e-7) for v in values), (kind, base, values)
        else:
            assert any(not close(v, base, 1e-6) for v in values), f"{name} is invariant to undeclared {kind}"


@pytest.mark.parametrize("name", NAMES)
def test_pairwise_equals_compare_and_states(name: str) -> None:
    m = get_measure(name)
    A, B, params = inputs(name)
    C3, _, _ = inputs(name, seed=5)
    items = [A, B, C3]
    if m.input == "features":  # different widths per model are allowed
        items[2] = C3[:, :4]
    mat = pairwise(name, items, **params)
    assert mat.shape == (3, 3) and mat.dtype == np.float64
    states = [m.prepare(x, **params) for x in items]
    # arccos has infinite slope at 1: a 1-ulp difference in the similarity moves the angle ~1e-8
    tol = 1e-7 if name == "procrustes_angular" else TOL
    for i, x in enumerate(items):
        for j, y in enumerate(items):
            ref = compare(name, x, y, **params)
            assert close(mat[i, j], ref, tol), (i, j, mat[i, j], ref)
            assert close(m.compare_states(states[i], states[j], **params), ref, tol)
    # states are picklable and made of numpy arrays / scalars / strings only
    restored = pickle.loads(pickle.dumps(states))
    assert close(m.compare_states(restored[0], restored[1], **params), mat[0, 1])
    for s in states:
        assert all(isinstance(v, (np.ndarray, int, float, str)) for v in s.values()), s.keys()


@pytest.mark.parametrize("name", NAMES)
def test_input_errors(name: str) -> None:
    m = MEASURES[name]
    A, B, params = inputs(name)
    with pytest.raises(MeasureInputError, match="same number of samples"):
        compare(name, A, B[:-1], **params)
    with pytest.raises(MeasureInputError, match="different numbers of samples"):
        pairwise(name, [A, B[:-1]], **params)
    with pytest.raises(MeasureInputError, match="unknown parameter"):
        compare(name, A, B, bogus=1, **params)
    with pytest.raises(MeasureInputError):
        compare(name, A[None], B, **params)  # wrong ndim
    if m.input in ("features", "probs"):
        bad = A.copy()
        bad[3, 0] = np.nan
        with pytest.raises(MeasureInputError, match="NaN"):
            compare(name, bad, B, **params)
        with pytest.raises(MeasureInputError, match="float"):
            compare(name, A.astype(np.int64), B, **params)
        # float32 input is accepted and agrees with float64 to float32 precision
        v32 = compare(name, A.astype(np.float32), B.astype(np.float32), **params)
        assert np.isfinite(v32)
    else:
        with pytest.raises(MeasureInputError, match="integer"):
            compare(name, A.astype(np.float64), B, **params)
        with pytest.raises(MeasureInputError, match=">= 0"):
            compare(name, A - 1, B, **params)
    if m.input == "probs":
        with pytest.raises(MeasureInputError, match="logits"):
            compare(name, np.log(A), B, **params)
    if "labels" in m.params:
        p = {k: v for k, v in params.items() if k != "labels"}
        with pytest.raises(MeasureInputError, match="needs labels"):
            compare(name, A, B, **p)
        with pytest.raises(MeasureInputError, match="labels has"):
            compare(name, A, B, labels=params["labels"][:-1])
    # states prepared with other params, or for other N, are refused
    half = len(B) // 2
    p_half = {k: (v[:half] if k == "labels" else v) for k, v in params.items()}
    sa = m.prepare(A[:half], **p_half)
    sb = m.prepare(B[half : 2 * half - 1], **{k: (v[half : 2 * half - 1] if k == "labels" else v) for k, v in params.items()})
    with pytest.raises(MeasureInputError, match="different numbers of samples|prepared as"):
        m.compare_states(sa, sb, **p_half)


def test_unknown_measure_lists_known() -> None:
    A = np.zeros((5, 2))
    with pytest.raises(MeasureInputError, match="known: .*linear_cka"):
        compare("linear_kca", A, A)
    with pytest.raises(MeasureInputError, match="known"):
        pairwise("nope", [A])


def test_param_errors_name_value_and_allowed() -> None:
    A, B = _features(np.random.default_rng(0), n=40)
    with pytest.raises(MeasureInputError, match=r"k=40 must be < N=40"):
        compare("knn_jaccard", A, B, k=40)
    with pytest.raises(MeasureInputError, match=r"metric='manhattan' is invalid; allowed: one of \['cosine', 'euclidean'\]"):
        compare("knn_jaccard", A, B, metric="manhattan")
    with pytest.raises(MeasureInputError, match="k=0"):
        compare("knn_jaccard", A, B, k=0)
    with pytest.raises(MeasureInputError, match="lam=-1"):
        compare("gulp", A, B, lam=-1.0)
    with pytest.raises(MeasureInputError, match="constant"):
        compare("linear_cka", np.ones((40, 3)), B)
    m = MEASURES["knn_jaccard"]
    s5, s6 = m.prepare(A, k=5), m.prepare(B, k=6)
    with pytest.raises(MeasureInputError, match="prepared as"):
        m.compare_states(s5, s6, k=5)


def test_register_refuses_duplicates() -> None:
    from analysis.measures import Measure, register_measure

    with pytest.raises(ValueError, match="already registered"):
        register_measure("linear_cka", kind="representational")(Measure)
