"""Measure values against straightforward reference implementations and hand-computable cases.

The references are written from the formulas (loops are fine here) and never call the library.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import jensenshannon, pdist
from scipy.stats import spearmanr

from analysis.measures import MEASURES, MeasureInputError, ambiguity, compare, discrepancy, fort_bounds, pairwise

REL = 1e-6


def rel_close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12) + 1e-12


def feats(seed: int, n: int = 30, d: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=d) + rng.normal(size=d)


def pair(seed: int, n: int = 30, da: int = 5, db: int = 4) -> tuple[np.ndarray, np.ndarray]:
    A = feats(seed, n, da)
    rng = np.random.default_rng(seed + 100)
    B = np.tanh(A[:, :db] @ rng.normal(size=(db, db))) + 0.5 * rng.normal(size=(n, db))
    return A, B


# ---------------------------------------------------------------- references (formulas, loops)
def ref_hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H))


def ref_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012, eq. 5."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    return float(
        (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ Kt @ Lt @ one))
        / (n * (n - 3))
    )


def ref_cka(X: np.ndarray, Y: np.ndarray, hsic, kernel=lambda Z: Z @ Z.T) -> float:
    K, L = kernel(X), kernel(Y)
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def rbf_kernel(sigma: float):
    def k(Z: np.ndarray) -> np.ndarray:
        n = Z.shape[0]
        D = np.array([[np.linalg.norm(Z[i] - Z[j]) for j in range(n)] for i in range(n)])
        med = np.median([D[i, j] for i in range(n) for j in range(i + 1, n)])
        return np.exp(-(D**2) / (2 * (sigma * med) ** 2))

    return k


def ref_procrustes_sim(X: np.ndarray, Y: np.ndarray) -> float:
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    X, Y = X / np.linalg.norm(X), Y / np.linalg.norm(Y)
    d = max(X.shape[1], Y.shape[1])  # zero-pad as the paper's code does
    Xp = np.hstack([X, np.zeros((X.shape[0], d - X.shape[1]))])
    Yp = np.hstack([Y, np.zeros((Y.shape[0], d - Y.shape[1]))])
    R, _ = orthogonal_procrustes(Yp, Xp)
    dist = np.linalg.norm(Xp - Yp @ R) ** 2
    return 1 - dist / 2


def ref_neighbours(X: np.ndarray, k: int, metric: str) -> list[list[int]]:
    X = X - X.mean(0)
    n = X.shape[0]
    out = []
    for i in range(n):
        if metric == "cosine":
            score = [(-(X[i] @ X[j]) / (np.linalg.norm(X[i]) * np.linalg.norm(X[j])), j) for j in range(n) if j != i]
        else:
            score = [(np.linalg.norm(X[i] - X[j]), j) for j in range(n) if j != i]
        out.append([j for _, j in sorted(score)[:k]])
    return out


def ref_knn(X: np.ndarray, Y: np.ndarray, k: int, metric: str, what: str) -> float:
    NA, NB = ref_neighbours(X, k, metric), ref_neighbours(Y, k, metric)
    vals = []
    for a, b in zip(NA, NB):
        common = set(a) & set(b)
        jac = len(common) / len(set(a) | set(b))
        rank = 0.0
        if common:
            s = sum(2 / ((1 + abs(a.index(c) - b.index(c))) * (a.index(c) + 1 + b.index(c) + 1)) for c in common)
            rank = s / sum(1 / r for r in range(1, len(common) + 1))
        vals.append({"jaccard": jac, "rank": rank, "joint": jac * rank}[what])
    return float(np.mean(vals))


def ref_second_order_cosine(X: np.ndarray, Y: np.ndarray) -> float:
    def cos_mat(Z):
        Z = Z - Z.mean(0)
        n = Z.shape[0]
        S = np.array([[Z[i] @ Z[j] / (np.linalg.norm(Z[i]) * np.linalg.norm(Z[j])) for j in range(n)] for i in range(n)])
        np.fill_diagonal(S, 0)
        return S

    SA, SB = cos_mat(X), cos_mat(Y)
    return float(np.mean([SA[i] @ SB[i] / (np.linalg.norm(SA[i]) * np.linalg.norm(SB[i])) for i in range(len(SA))]))


def inv_sqrt(S: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh(S)
    return V @ np.diag(w**-0.5) @ V.T


def ref_cca(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical correlations and the X-side weights alpha (Morcos et al.), covariance form."""
    X, Y = X - X.mean(0), Y - Y.mean(0)
    Sxx, Syy, Sxy = X.T @ X, Y.T @ Y, X.T @ Y
    U, rho, _ = np.linalg.svd(inv_sqrt(Sxx) @ Sxy @ inv_sqrt(Syy))
    r = min(X.shape[1], Y.shape[1])
    H = X @ inv_sqrt(Sxx) @ U[:, :r]  # canonical variates of X (N, r)
    alpha = np.array([sum(abs(H[:, i] @ X[:, j]) for j in range(X.shape[1])) for i in range(r)])
    return rho[:r], alpha


def svd_truncate(X: np.ndarray, keep: float) -> np.ndarray:
    X = X - X.mean(0)
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    frac = np.cumsum(S**2) / np.sum(S**2)
    r = next(i + 1 for i, f in enumerate(frac) if f >= keep)
    return U[:, :r] * S[:r]


def ref_gulp(X: np.ndarray, Y: np.ndarray, lam: float) -> float:
    def hat(Z):
        Z = Z - Z.mean(0)
        n = Z.shape[0]
        Z = Z * np.sqrt(n) / np.linalg.norm(Z)
        cov = Z.T @ Z / n
        inv = np.linalg.pinv(cov) if lam == 0 else np.linalg.inv(cov + lam * np.eye(cov.shape[0]))
        return Z @ inv @ Z.T / n

    return float(np.linalg.norm(hat(X) - hat(Y)) ** 2)


# ---------------------------------------------------------------- representational vs references
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dims", [(5, 4), (40, 35)])  # D < N (feature form) and D > N (Gram / N x N form)
def test_cka_procrustes_match_references(seed: int, dims: tuple[int, int]) -> None:
    A, B = pair(seed, n=30, da=dims[0], db=dims[1]) if dims[0] <= 30 else (feats(seed, 30, 40), feats(seed + 7, 30, 35))
    assert rel_close(compare("linear_cka", A, B, allow_small_n=True), ref_cka(A, B, ref_hsic_biased))
    assert rel_close(compare("linear_cka_debiased", A, B), ref_cka(A, B, ref_hsic_unbiased))
    assert rel_close(compare("rbf_cka", A, B, sigma=0.8), ref_cka(A, B, ref_hsic_biased, rbf_kernel(0.8)))
    sim = ref_procrustes_sim(A, B)
    assert rel_close(compare("procrustes_sim", A, B), sim)
    assert rel_close(compare("procrustes_angular", A, B), float(np.arccos(sim)))


def test_cka_mixed_forms_and_gram_block_path() -> None:
    """Wide (Gram-state) and narrow (feature-state) models mix; large-M/small-N uses the Gram block."""
    narrow, wide = feats(3, 12, 6), feats(4, 12, 20)
    for name, hsic in (("linear_cka", ref_hsic_biased), ("linear_cka_debiased", ref_hsic_unbiased)):
        assert rel_close(compare(name, narrow, wide, allow_small_n=True), ref_cka(narrow, wide, hsic))
        items = [feats(10 + i, 12, 10) for i in range(6)] + [wide]
        mat = pairwise(name, items, allow_small_n=True)  # 7 models, N=12: cost model picks the Gram form
        for i, j in itertools.combinations_with_replacement(range(len(items)), 2):
            assert rel_close(mat[i, j], ref_cka(items[i], items[j], hsic))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("what", ["jaccard", "rank", "joint"])
def test_knn_family_matches_reference(metric: str, what: str) -> None:
    A, B = pair(2, n=40)
    name = {"jaccard": "knn_jaccard", "rank": "rank_sim", "joint": "joint_rank_jaccard"}[what]
    for k in (1, 4, 39):
        assert rel_close(compare(name, A, B, k=k, metric=metric, allow_small_n=True), ref_knn(A, B, k, metric, what))


def test_second_order_rsa_cca_gulp_match_references() -> None:
    A, B = pair(4, n=50, da=6, db=5)
    assert rel_close(compare("second_order_cosine", A, B), ref_second_order_cosine(A, B))
    assert rel_close(compare("rsa", A, B), spearmanr(pdist(A), pdist(B))[0])
    assert rel_close(
        compare("rsa", A, B, rdm="correlation", corr="pearson"),
        np.corrcoef(pdist(A, "correlation"), pdist(B, "correlation"))[0, 1],
    )
    rho, alpha = ref_cca(A, B)
    assert rel_close(compare("pwcca", A, B), float(alpha @ rho / alpha.sum()))
    rho_t, _ = ref_cca(svd_truncate(A, 0.9), svd_truncate(B, 0.9))
    assert rel_close(compare("svcca", A, B, keep=0.9), float(rho_t.mean()))
    for lam in (0.0, 0.1):
        assert rel_close(compare("gulp", A, B, lam=lam), ref_gulp(A, B, lam))


def test_magnitude_concentricity_match_references() -> None:
    A, B = pair(5)

    def mag(Z):
        return np.sqrt(sum(np.mean(Z[:, j]) ** 2 for j in range(Z.shape[1])))

    def conc(Z):
        mu = Z.mean(0)
        return np.mean([z @ mu / (np.linalg.norm(z) * np.linalg.norm(mu)) for z in Z])

    assert rel_close(compare("magnitude_diff", A, B), abs(mag(A) - mag(B)))
    assert rel_close(compare("concentricity_diff", A, B), abs(conc(A) - conc(B)))


def test_rtd_matches_reference_and_is_seeded() -> None:
    import ripser

    A, B = pair(6, n=60, da=4, db=4)
    n_sub, size, seed = 2, 25, 3
    rng = np.random.default_rng(seed)
    total = []
    for _ in range(n_sub):
        rows = np.sort(rng.choice(60, size=size, replace=False))

        def dist(Z):
            Z = Z[rows]
            D = np.array([[np.linalg.norm(a - b) for b in Z] for a in Z])
            return D / np.quantile(D, 0.9)

        ra, rb = dist(A), dist(B)

        def h1(r1, r2):
            M = np.block([[np.zeros_like(r1), r1.T], [r1, np.minimum(r1, r2)]])
            M[M < 1e-6 * r1.mean()] = 0
            bars = ripser.ripser(M, distance_matrix=True, maxdim=1)["dgms"][1]
            return sum(d - b for b, d in bars)

        total.append((h1(ra, rb) + h1(rb, ra)) / 2)
    v = compare("rtd", A, B, n_subsamples=n_sub, subsample_size=size, seed=seed)
    assert rel_close(v, float(np.mean(total)))
    assert v > 0
    assert compare("rtd", A, B, n_subsamples=n_sub, subsample_size=size, seed=4) != v


# ---------------------------------------------------------------- functional vs references
def label_data(seed: int, n: int = 300, c: int = 7):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    a = np.where(rng.random(n) < 0.6, y, rng.integers(0, c, n))
    b = np.where(rng.random(n) < 0.5, a, rng.integers(0, c, n))
    return a, b, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_measures_match_references(seed: int) -> None:
    from sklearn.metrics import cohen_kappa_score

    a, b, y = label_data(seed)
    n = len(a)
    d = sum(int(a[i] != b[i]) for i in range(n)) / n
    assert rel_close(compare("disagreement", a, b), d)
    assert rel_close(compare("agreement", a, b), 1 - d)
    classes = range(max(a.max(), b.max()) + 1)
    p_e = sum(sum(a == c) * sum(b == c) for c in classes) / n**2
    assert rel_close(compare("cohen_kappa", a, b), ((1 - d) - p_e) / (1 - p_e))
    assert rel_close(compare("cohen_kappa", a, b), cohen_kappa_score(a, b))
    ea, eb = np.mean(a != y), np.mean(b != y)
    lo, hi = abs(ea - eb), min(ea + eb, 1)
    assert rel_close(compare("normalized_disagreement", a, b, labels=y), (d - lo) / (hi - lo))
    ra, rb = a == y, b == y
    c_obs = sum(int(ra[i] == rb[i]) for i in range(n)) / n
    pa, pb = ra.mean(), rb.mean()
    c_exp = pa * pb + (1 - pa) * (1 - pb)
    assert rel_close(compare("error_consistency", a, b, labels=y), (c_obs - c_exp) / (1 - c_exp))


@pytest.mark.parametrize("seed", [0, 1])
def test_prob_measures_match_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(6, 0.3), size=100)
    Q = rng.dirichlet(np.full(6, 0.3), size=100)
    P[0] = [1, 0, 0, 0, 0, 0]  # exact zeros: 0 log 0 = 0
    Q[0] = [0, 1, 0, 0, 0, 0]
    js = np.mean([jensenshannon(P[i], Q[i]) ** 2 for i in range(100)])
    assert rel_close(compare("jsd", P, Q), js)
    assert rel_close(compare("jsd_sim", P, Q), (np.log(2) - js) / np.log(2))
    for alpha in (1.0, 0.5):
        churn = sum(np.abs((P[i] / P[i].max()) ** alpha - (Q[i] / Q[i].max()) ** alpha).sum() for i in range(100)) / 200
        assert rel_close(compare("surrogate_churn", P, Q, alpha=alpha), churn)
    # float32 probabilities are accepted
    assert abs(compare("jsd", P.astype(np.float32), Q.astype(np.float32)) - js) < 1e-5


def test_pairwise_label_block_large_class_count() -> None:
    rng = np.random.default_rng(9)
    preds = [rng.integers(0, 1000, 500) for _ in range(4)]
    preds[1][:250] = preds[0][:250]
    mat = pairwise("cohen_kappa", preds)
    for i, j in itertools.product(range(4), repeat=2):
        assert rel_close(mat[i, j], compare("cohen_kappa", preds[i], preds[j]))
    assert mat[0, 1] > 0.4 and abs(mat[0, 2]) < 0.05


# ---------------------------------------------------------------- hand-computable cases
def test_knn_identical_graphs_one_disjoint_zero() -> None:
    A = feats(7, 25, 4)
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    assert compare("knn_jaccard", A, 2.0 * A @ Q + 1.0, k=3, allow_small_n=True) == 1.0
    # pairs (0,1), (2,3), ... are mutual nearest neighbours in A; (0,2), (1,3), ... in B
    A1 = np.array([0, 1, 10, 11, 20, 21, 30, 31], dtype=float)[:, None]
    B1 = np.array([0, 10, 1, 11, 20, 30, 21, 31], dtype=float)[:, None]
    for name in ("knn_jaccard", "rank_sim", "joint_rank_jaccard"):
        assert compare(name, A1, B1, k=1, metric="euclidean", allow_small_n=True) == 0.0
        assert compare(name, A1, A1 + 5.0, k=1, metric="euclidean", allow_small_n=True) == 1.0


def test_kappa_on_constructed_confusion_table() -> None:
    # confusion [[20, 5], [10, 15]]: p_o = 0.7, marginals A (25, 25), B (30, 20) -> p_e = 0.5, kappa 0.4
    a = np.array([0] * 25 + [1] * 25)
    b = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    assert abs(compare("cohen_kappa", a, b) - 0.4) < 1e-12
    assert abs(compare("disagreement", a, b) - 0.3) < 1e-12
    const = np.zeros(10, dtype=int)
    assert compare("cohen_kappa", const, const) == 1.0  # p_e = 1: defined as 1


def test_error_corrected_measures_edge_cases() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    worse = np.array([0, 1, 2, 0, 0, 0, 0, 1])  # 2 errors
    # one model perfect -> bounds coincide (d is forced) -> defined as 0
    assert compare("normalized_disagreement", y, worse, labels=y) == 0.0
    assert compare("error_consistency", y, y, labels=y) == 1.0  # both perfect: c_exp = 1 -> 1
    # same errors in both -> error consistency 1; complementary errors -> negative
    assert abs(compare("error_consistency", worse, worse.copy(), labels=y) - 1.0) < 1e-12
    other = np.array([1, 2, 2, 0, 1, 2, 0, 1])  # errors at 0, 1 instead of 4, 5
    assert compare("error_consistency", worse, other, labels=y) < 0


def test_fort_bounds_known_values() -> None:
    b = fort_bounds(0.8, 0.9, 10)
    assert abs(b.min_disagreement - 9 * 0.1 / 8) < 1e-12
    assert abs(b.independent_disagreement - (0.1 * 0.8 + 0.2 * 0.9 + 0.1 * 0.2 * 8 / 9)) < 1e-12
    assert fort_bounds(0.9, 0.8, 10) == b  # order-free
    assert abs(b.max_agreement - (1 - 0.1125)) < 1e-12
    assert fort_bounds(0.7, 0.7, 5).min_disagreement == 0.0
    assert abs(fort_bounds(0.6, 1.0, 10).min_disagreement - 0.4) < 1e-12  # a* = 1: d_lo = 1 - a
    assert abs(fort_bounds(0.6, 0.7, 2).independent_disagreement - (0.6 * 0.3 + 0.7 * 0.4)) < 1e-12
    with pytest.raises(MeasureInputError, match="chance"):
        fort_bounds(0.05, 0.1, 10)
    with pytest.raises(MeasureInputError, match="acc_b"):
        fort_bounds(0.5, 1.5, 10)
    with pytest.raises(MeasureInputError, match="num_classes"):
        fort_bounds(0.5, 0.6, 1)


def test_ambiguity_and_discrepancy() -> None:
    p = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 2, 2, 3]])
    assert ambiguity(p) == 0.5  # samples 1 and 3 have a disagreeing pair
    assert discrepancy(p) == 0.5  # rows 1 vs 2 disagree on 2 of 4
    assert ambiguity([p[0]]) == 0.0 and discrepancy([p[0]]) == 0.0
    with pytest.raises(MeasureInputError, match="different numbers of samples"):
        ambiguity([p[0], p[1][:3]])


def test_debiased_cka_near_zero_for_independent_gaussians() -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(1000, 50)), rng.normal(size=(1000, 50))
    biased, debiased = compare("linear_cka", X, Y), compare("linear_cka_debiased", X, Y)
    assert abs(debiased) < 0.01
    assert biased > 0.03  # the biased estimator's positive offset at D/N = 0.05
    small = compare("linear_cka", X[:200], Y[:200])
    assert small > biased  # biased CKA of independent data shrinks with N


def test_procrustes_hand_values() -> None:
    A = feats(8, 20, 3)
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    assert abs(compare("procrustes_sim", A, 3 * A @ Q - 2, allow_small_n=True) - 1.0) < 1e-12
    # orthogonal column spaces after centring -> similarity 0
    X = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    Y = np.array([[1.0], [1.0], [-1.0], [-1.0]])
    assert abs(compare("procrustes_sim", X[:, :1], Y, allow_small_n=True)) < 1e-12
    assert abs(compare("procrustes_angular", X[:, :1], Y, allow_small_n=True) - np.pi / 2) < 1e-12


def test_every_measure_has_a_reference_test() -> None:
    covered = {
        "linear_cka", "linear_cka_debiased", "rbf_cka", "procrustes_sim", "procrustes_angular", "knn_jaccard",
        "rank_sim", "joint_rank_jaccard", "second_order_cosine", "rsa", "svcca", "pwcca", "gulp", "rtd",
        "magnitude_diff", "concentricity_diff", "disagreement", "agreement", "cohen_kappa",
        "normalized_disagreement", "error_consistency", "jsd", "jsd_sim", "surrogate_churn",
    }  # fmt: skip
    assert covered == set(MEASURES)


@pytest.mark.parametrize("cross_bytes", [1, 2**30])  # one model per slab, or one slab per half
def test_upper_blocks_cover_the_triangle(monkeypatch: pytest.MonkeyPatch, cross_bytes: int) -> None:
    from analysis.measures import _linalg

    monkeypatch.setattr(_linalg, "CROSS_BYTES", cross_bytes)
    rng = np.random.default_rng(0)
    mats = [rng.normal(size=(20, d)) for d in (3, 5, 2, 4, 6, 1, 3)]
    for strict in (False, True):
        got = {(i, j): c for i, j, c in _linalg.upper_blocks(mats, strict=strict)}
        assert set(got) == {(i, j) for i in range(7) for j in range(i + strict, 7)}
        for (i, j), c in got.items():
            np.testing.assert_allclose(c, mats[i].T @ mats[j], rtol=1e-12, atol=1e-12)
