"""Benchmarks of all-pairs measure computation against paper-style per-pair code and limits.

`run(quick=False) -> list[dict]` returns rows {name, value_s, baseline_name, baseline_s, ratio,
target, met, note}; `ratio` is always baseline_s / value_s ("x faster"), so a limit row's ratio is
<= 1 and its target says how close to the limit we must be. Slow baselines are timed on a few
pairs and extrapolated to all pairs (the note says so). Run: `python -m bench.bench_measures`.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy.spatial.distance import jensenshannon
from threadpoolctl import threadpool_limits

from analysis.measures import MEASURES, pairwise
from analysis.measures._linalg import upper_blocks
from analysis.measures.knn import knn_indices
from bench._common import interleaved as _interleaved


def _time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best-of-`repeat` wall time in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def _row(name: str, value_s: float, baseline_name: str, baseline_s: float, target: str, met: bool, note: str = "") -> dict:
    return {
        "name": name,
        "value_s": value_s,
        "baseline_name": baseline_name,
        "baseline_s": baseline_s,
        "ratio": baseline_s / value_s,
        "target": target,
        "met": None if met is None else bool(met),
        "note": note,
    }


def _pairs(m: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(m) for j in range(i + 1, m)]


def _extrapolated(per_pair: Callable[[int, int], object], m: int, budget_pairs: int) -> tuple[float, str]:
    """Time the first `budget_pairs` unordered pairs and scale to all M(M-1)/2."""
    pairs = _pairs(m)
    timed = pairs[: min(budget_pairs, len(pairs))]
    t0 = time.perf_counter()
    for i, j in timed:
        per_pair(i, j)
    spent = time.perf_counter() - t0
    if len(timed) == len(pairs):
        return spent, f"all {len(pairs)} pairs timed"
    return spent * len(pairs) / len(timed), f"timed {len(timed)} of {len(pairs)} pairs, extrapolated"


# ------------------------------------------------------------------ paper-style per-pair code
def loop_disagreement(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.tolist(), b.tolist()
    return sum([1 for x, y in zip(a, b) if x != y]) / len(a)


def loop_kappa(a: np.ndarray, b: np.ndarray, c: int) -> float:
    a, b = a.tolist(), b.tolist()
    n = len(a)
    p_o = 1 - sum([1 for x, y in zip(a, b) if x != y]) / n
    p_e = 0.0
    for k in range(c):  # loop over classes x samples, as in the paper's code
        p_e += sum([1 for x in a if x == k]) * sum([1 for y in b if y == k])
    p_e /= n * n
    return (p_o - p_e) / (1 - p_e)


def scipy_jsd(p: np.ndarray, q: np.ndarray) -> float:
    js = jensenshannon(p, q, axis=1) ** 2
    return float(np.nan_to_num(js).mean())


# ------------------------------------------------------------------ (a) functional
LIMIT_NOTE = (
    "value = all pairs from prepared states (validation excluded); limit = np.bincount over the "
    "(M, N) labels with per-model offsets (kappa's histograms); a bare uint8 equality pass is ~20x cheaper still"
)
def _functional_rows(quick: bool) -> list[dict]:
    rows = []
    m, n = (8, 2000) if quick else (20, 10_000)
    rng = np.random.default_rng(0)
    for c in (10, 1000):
        y = rng.integers(0, c, n)
        preds = [np.where(rng.random(n) < 0.7, y, rng.integers(0, c, n)) for _ in range(m)]
        L = np.stack(preds)
        tag = f"M={m} N={n} C={c}"

        # the limit: one vectorised pass over the (M, N) labels (a per-model class histogram)
        offsets = (np.arange(m) * c)[:, None]
        limit = _time(lambda: np.bincount((L + offsets).ravel(), minlength=m * c), repeat=5)

        t_dis = _time(lambda: pairwise("disagreement", preds))
        base, note = _extrapolated(lambda i, j: loop_disagreement(preds[i], preds[j]), m, 30)
        rows.append(_row(f"disagreement all-pairs {tag}", t_dis, "per-pair Python loop (paper style)", base, ">= 40x", base / t_dis >= 40, note))
        dis = MEASURES["disagreement"]
        st = [dis.prepare(x) for x in preds]
        t_blk = _time(lambda: dis.pairwise_states(st), repeat=5)
        rows.append(_row(f"disagreement all-pairs {tag} vs limit", t_blk, "one vectorised pass over M x N labels", limit, "within 2x (ratio >= 0.5)", limit / t_blk >= 0.5, LIMIT_NOTE))

        t_kap = _time(lambda: pairwise("cohen_kappa", preds))
        base, note = _extrapolated(lambda i, j: loop_kappa(preds[i], preds[j], c), m, 8 if c == 10 else 1)
        target = 200 if c == 10 else 10_000
        rows.append(_row(f"cohen_kappa all-pairs {tag}", t_kap, "per-pair classes x samples Python loop (paper style)", base, f">= {target}x", base / t_kap >= target, note))
        kap = MEASURES["cohen_kappa"]
        st = [kap.prepare(x) for x in preds]
        t_blk = _time(lambda: kap.pairwise_states(st), repeat=5)
        rows.append(_row(f"cohen_kappa all-pairs {tag} vs limit", t_blk, "one vectorised pass over M x N labels", limit, "within 2x (ratio >= 0.5)", limit / t_blk >= 0.5, LIMIT_NOTE))

        # JSD on probabilities of the same shape (M models, (N, C) each)
        mj = min(m, 6) if c == 1000 else m
        logits = rng.normal(size=(n, c))
        probs = []
        for _ in range(mj):
            z = 3 * logits + rng.normal(size=(n, c))
            e = np.exp(z - z.max(axis=1, keepdims=True))
            probs.append(e / e.sum(axis=1, keepdims=True))
        tagj = f"M={mj} N={n} C={c}"
        t_jsd = _time(lambda: pairwise("jsd", probs), repeat=1 if c == 1000 else 3)
        jsd = MEASURES["jsd"]
        st_j = [jsd.prepare(x) for x in probs]
        base, note = _extrapolated(lambda i, j: scipy_jsd(probs[i], probs[j]), mj, 3)
        rows.append(_row(f"jsd all-pairs {tagj}", t_jsd, "per-pair scipy jensenshannon (paper code)", base, "faster", base > t_jsd, note))
        n_pairs = mj * (mj + 1) // 2  # we also compute the diagonal
        buf = np.empty((n, c))

        def logs_only() -> None:
            # one log pass per pair over a different model's (N, C) probabilities each time, so
            # the data come from memory as ours must; logging one cache-resident array over and
            # over would time the cache, not the machine (docs/PERFORMANCE.md)
            for k in range(n_pairs):
                np.log(probs[k % mj], out=buf)

        def logs_cached() -> None:
            for _ in range(n_pairs):
                np.log(probs[0], out=buf)

        rep = 1 if c == 1000 else 5
        tt = _interleaved({"ours": lambda: jsd.pairwise_states(st_j), "limit": logs_only,
                           "cached": logs_cached}, rep)
        ratio = _median([lim / o for lim, o in zip(tt["limit"], tt["ours"])])
        cached = _median([lim / o for lim, o in zip(tt["cached"], tt["ours"])])
        rows.append(_row(f"jsd all-pairs {tagj} vs limit", _median(tt["ours"]), "the unavoidable logs: one log pass over N x C per pair", _median(tt["limit"]), "within 2x (ratio >= 0.5)", ratio >= 0.5, f"{n_pairs} pairs incl. diagonal, from prepared states; ratio = median of {rep} interleaved rounds; vs logging one cache-resident array repeatedly: {cached:.2f}; end-to-end incl. prepare {t_jsd:.3g} s"))
        rows[-1]["ratio"] = ratio
    return rows


# ------------------------------------------------------------------ (b) linear CKA
def _paper_cka_pair(X: np.ndarray, Y: np.ndarray) -> float:
    X = X.astype(np.float64) - X.mean(0)
    Y = Y.astype(np.float64) - Y.mean(0)
    return np.linalg.norm(X.T @ Y) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


def _cka_rows(quick: bool) -> list[dict]:
    rows = []
    m, n, d = (5, 1000, 128) if quick else (10, 5000, 512)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(n, d)).astype(np.float32)
    feats = [base @ rng.normal(size=(d, d)).astype(np.float32) + rng.normal(size=(n, d)).astype(np.float32) for _ in range(m)]
    tag = f"M={m} N={n} D={d}"
    t_ours = _time(lambda: pairwise("linear_cka", feats), repeat=2)

    ordered = [(i, j) for i in range(m) for j in range(m) if i != j]
    timed = ordered[:4]
    t0 = time.perf_counter()
    for i, j in timed:
        _paper_cka_pair(feats[i], feats[j])
    per_pair = (time.perf_counter() - t0) / len(timed) * len(ordered)
    rows.append(_row(f"linear_cka all-pairs {tag}", t_ours, "per-pair recomputation, both orders (paper)", per_pair, ">= 2x", per_pair / t_ours >= 2, f"timed {len(timed)} of {len(ordered)} ordered pairs, extrapolated"))

    H = np.hstack([f.astype(np.float64) - f.mean(0) for f in feats])  # (N, M D) centred
    H2 = H.copy()  # a second buffer so BLAS runs a full GEMM (numpy turns H.T @ H into SYRK)
    cka = MEASURES["linear_cka"]
    states = [cka.prepare(f) for f in feats]
    # same starting point as the GEMM (centred float64 features): the block pass plus the
    # self-HSIC diagonal blocks that prepare() computes; rounds interleave GEMM and ours.
    # The target row runs BLAS on one thread: on this shared 2-core VM a 2-thread GEMM whose
    # second thread is descheduled stalls at every barrier, and those stalls (not the
    # algorithm) decide a 2-thread comparison; the 2-thread figure is kept as context.
    fns = {"gemm": lambda: H.T @ H2, "blocks": lambda: cka.pairwise_states(states),
           "self": lambda: [s["X"].T @ s["X"] for s in states]}
    for threads, rounds in ((1, 2 if quick else 3), (None, 2 if quick else 3)):
        if threads is None:
            tt = _interleaved(fns, rounds)
        else:
            with threadpool_limits(limits=threads, user_api="blas"):
                tt = _interleaved(fns, rounds)
        ours = [b + s for b, s in zip(tt["blocks"], tt["self"])]
        per_round = [g / o for g, o in zip(tt["gemm"], ours)]
        ratio = _median(per_round)
        label = "1 BLAS thread" if threads else "all BLAS threads"
        rows.append(_row(f"linear_cka all-pairs {tag} vs GEMM ({label})", _median(ours), "one GEMM of hstacked centred features with itself", _median(tt["gemm"]), "<= 0.8x the GEMM (ratio >= 1.25)" if threads else "(context)", ratio >= 1.25 if threads else None, f"float64, from centred states (block pass + self blocks); ratio = median of {rounds} interleaved rounds ({', '.join(f'{r:.2f}' for r in per_round)}); the work is 0.55 of the GEMM's flops (ideal ratio 1.82); end-to-end incl. float32->float64 centring {t_ours:.3g} s"))
        rows[-1]["ratio"] = ratio
    del H, H2

    # Gram form: many models, few samples
    mg, ng, dg = (80, 150, 128) if quick else (200, 300, 256)
    feats_g = [rng.normal(size=(ng, dg)) for _ in range(mg)]
    states_g = [cka.prepare(f) for f in feats_g]
    t_gram = _time(lambda: cka.pairwise_states(states_g), repeat=2)
    xs = [s["X"] for s in states_g]

    def feature_form() -> None:
        for _, _, c in upper_blocks(xs, strict=True):
            np.einsum("ij,ij->", c, c)

    t_feat = _time(feature_form, repeat=1)
    rows.append(_row(f"linear_cka all-pairs M={mg} N={ng} D={dg} (Gram form chosen)", t_gram, "feature-space block form (the alternative)", t_feat, "faster than the alternative", t_feat > t_gram, "from prepared states; cost model: Gram form when 8 (M N^2 D + M^2 N^2/2) < N (M D)^2/2"))
    return rows


# ------------------------------------------------------------------ (c) kNN Jaccard
def _paper_knn_pair(X: np.ndarray, Y: np.ndarray, k: int) -> float:
    """Per-pair: both full N x N cosine matrices, top-k, then per-row Python set intersection."""

    def topk(Z: np.ndarray) -> np.ndarray:
        Z = Z - Z.mean(0)  # in the input precision (float32 here), like the paper's torch code
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        S = Z @ Z.T
        np.fill_diagonal(S, -np.inf)
        return np.argpartition(-S, k - 1, axis=1)[:, :k]

    a, b = topk(X), topk(Y)
    return float(np.mean([len(set(r) & set(s)) / len(set(r) | set(s)) for r, s in zip(a.tolist(), b.tolist())]))


def _knn_rows(quick: bool) -> list[dict]:
    m, n, d, k = (4, 1500, 128) + (10,) if quick else (6, 5000, 512, 10)
    rng = np.random.default_rng(2)
    base = rng.normal(size=(n, d)).astype(np.float32)
    feats = [base + 0.7 * rng.normal(size=(n, d)).astype(np.float32) for _ in range(m)]
    tag = f"M={m} N={n} D={d} k={k}"

    tracemalloc.start()
    t0 = time.perf_counter()
    pairwise("knn_jaccard", feats, k=k)
    t_ours = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # interleaved rounds: ours, one paper-style pair (a different pair each round, scaled to all
    # pairs) and the M neighbour sets alone; ratios per round, then their median
    pairs = _pairs(m)
    rounds = 2 if quick else 3
    picked = iter(pairs[:rounds])
    tt = _interleaved({"ours": lambda: pairwise("knn_jaccard", feats, k=k),
                       "pair": lambda: _paper_knn_pair(*(feats[i] for i in next(picked)), k),
                       "sets": lambda: [knn_indices(f, k=k, metric="cosine", center=True) for f in feats]},
                      rounds)
    per_pair = [p * len(pairs) / o for p, o in zip(tt["pair"], tt["ours"])]
    per_sets = [st / o for st, o in zip(tt["sets"], tt["ours"])]
    t_ours = _median(tt["ours"])
    base, t_sets = _median(tt["pair"]) * len(pairs), _median(tt["sets"])
    note = (f"one paper-style pair per round scaled to all {len(pairs)} pairs; ratio = median of "
            f"{rounds} interleaved rounds ({', '.join(f'{r:.2f}' for r in per_pair)}); "
            f"per pair the paper recomputes both neighbour sets: M(M-1) set computations vs our M, "
            f"a structural {m - 1}x, plus its per-row Python set loop")
    full_nn_mib = n * n * 8 / 2**20
    rows = [
        _row(f"knn_jaccard all-pairs {tag}", t_ours, "per-pair recomputation of both neighbour sets + set loop", base, ">= 5x", _median(per_pair) >= 5, note),
        _row(
            f"knn_jaccard all-pairs {tag} vs neighbour sets",
            t_ours,
            "computing the M neighbour sets alone",
            t_sets,
            "within 1.3x (ratio >= 0.77)",
            _median(per_sets) >= 1 / 1.3,
            f"ratio = median of {rounds} interleaved rounds ({', '.join(f'{r:.2f}' for r in per_sets)}); peak traced memory {peak / 2**20:.0f} MiB (one N x N float64 matrix is {full_nn_mib:.0f} MiB)",
        ),
    ]
    rows[0]["ratio"], rows[1]["ratio"] = _median(per_pair), _median(per_sets)
    return rows


def run(quick: bool = False) -> list[dict]:
    """All measure benchmarks; `quick` shrinks every size for a smoke test."""
    assert "linear_cka" in MEASURES
    return _functional_rows(quick) + _cka_rows(quick) + _knn_rows(quick)


def main() -> None:
    rows = run()
    cols = ("name", "value_s", "baseline_name", "baseline_s", "ratio", "target", "met")
    for r in rows:
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols), "|", r["note"])


if __name__ == "__main__":
    main()
