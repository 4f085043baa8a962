"""(h) The measures' numpy and torch backends on the CPU, and the torch path against its limits.

1. Per torch-backed measure: all pairs end to end (``pairwise``, prepare included) with
   ``backend="numpy"`` and ``backend="torch", device="cpu"`` on the same float32 features
   (M = 20, N = 2,000, D = 256; RTD at its cheap setting on M = 6). ``met``: the faster one is
   what ``analysis.measures._backend.CPU_FASTER`` (``backend="auto"``) picks, or the two are
   within 10% (a tie: either choice is right).
2. Limits of the torch path (float32), each from prepared states:
   - linear CKA all pairs vs ONE float32 GEMM of the stacked centred features with itself
     (target <= 0.8x the GEMM: the work is its upper half plus the diagonal blocks);
   - Procrustes all pairs vs its GEMMs + SVDs alone (the stacked GEMM, which holds every block,
     plus the float64 singular values of the M(M-1)/2 blocks in one batched call);
   - kNN Jaccard all pairs vs computing the M neighbour sets alone (plain torch: centre,
     normalise, one N x N GEMM, top-k).

Every timing runs on ONE thread (BLAS and torch) with value and baseline interleaved in rounds;
the ratio is the median of the per-round ratios (the machine is shared: see docs/PERFORMANCE.md).
Run: ``python -m bench --only bench_backends`` (or ``python -m bench.bench_backends``).
"""

from __future__ import annotations

import os
import statistics

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from analysis.measures import MEASURES, get_measure, pairwise
from analysis.measures._backend import CPU_FASTER
from bench._common import interleaved, print_rows, row

PARAMS = {"knn_jaccard": {"k": 10}, "rank_sim": {"k": 10}, "joint_rank_jaccard": {"k": 10},
          "rtd": {"n_subsamples": 2, "subsample_size": 64}}
TIE = 0.10  # within 10%: either backend is the right choice


def features(m: int, n: int, d: int, seed: int = 0, noise: float = 0.7) -> list[np.ndarray]:
    """M float32 (N, D) representations of one shared latent (random mixes plus noise)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, d)).astype(np.float32)
    return [latent @ (rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d))
            + noise * rng.normal(size=(n, d)).astype(np.float32) for _ in range(m)]


def _ratios(base: list[float], value: list[float]) -> list[float]:
    return [b / v for b, v in zip(base, value, strict=True)]


def _load() -> str:
    return f"1-min load {os.getloadavg()[0]:.1f}"


def _backend_rows(quick: bool, rounds: int) -> list[dict]:
    m, n, d = (5, 300, 32) if quick else (20, 2000, 256)
    feats = features(m, n, d)
    rows = []
    for name in sorted(k for k, v in MEASURES.items() if "torch" in v.backends):
        items = feats[: min(m, 6)] if name == "rtd" else feats
        p = PARAMS.get(name, {})
        results: dict[str, np.ndarray] = {}

        def run(backend: str, name=name, items=items, p=p) -> None:
            results[backend] = pairwise(name, items, backend=backend, **p)

        tt = interleaved({"numpy": lambda: run("numpy"), "torch": lambda: run("torch")}, rounds)
        per = _ratios(tt["numpy"], tt["torch"])
        ratio = statistics.median(per)
        winner = "torch" if ratio > 1 else "numpy"
        table = CPU_FASTER.get(name, "numpy")
        err = float(np.abs(results["numpy"] - results["torch"]).max())
        rows.append(row(
            f"backend torch vs numpy, {name} all pairs M={len(items)} N={n} D={d}",
            statistics.median(tt["torch"]), "the numpy backend (float64)",
            statistics.median(tt["numpy"]), ratio, f"faster one = CPU_FASTER ({table})",
            None if quick else (winner == table or abs(np.log(ratio)) < np.log(1 + TIE)),
            f"faster: {winner}; ratio = median of {rounds} interleaved rounds "
            f"({', '.join(f'{r:.2f}' for r in per)}); end to end incl. prepare, 1 thread, float32 "
            f"inputs; max |torch - numpy| = {err:.1e}; {_load()}"))
    return rows


def _cka_limit(quick: bool, rounds: int) -> dict:
    m, n, d = (5, 1000, 128) if quick else (10, 5000, 512)
    feats = features(m, n, d, seed=1)
    cka = get_measure("linear_cka")
    states = [cka.prepare(f, backend="torch") for f in feats]
    H = torch.cat([s["X"] for s in states], 1)  # (N, M D) float32 centred
    H2 = H.clone()  # a second buffer: a full GEMM, not a symmetric rank-k update
    tt = interleaved({"gemm": lambda: H.T @ H2, "blocks": lambda: cka.pairwise_states(states),
                      "self": lambda: [s["X"].T @ s["X"] for s in states]}, rounds)
    ours = [b + s for b, s in zip(tt["blocks"], tt["self"], strict=True)]
    per = _ratios(tt["gemm"], ours)
    ratio = statistics.median(per)
    return row(f"linear_cka all pairs (torch float32) M={m} N={n} D={d} vs one float32 GEMM",
               statistics.median(ours), "one float32 GEMM of the stacked centred features",
               statistics.median(tt["gemm"]), ratio, "<= 0.8x the GEMM (ratio >= 1.25)",
               None if quick else ratio >= 1.25,
               f"from prepared states: block pass + the diagonal blocks prepare computes; the work "
               f"is {(m * (m + 1) / 2) / m**2:.2f} of the GEMM's flops (ideal ratio "
               f"{m**2 / (m * (m + 1) / 2):.2f}); median of {rounds} interleaved rounds "
               f"({', '.join(f'{r:.2f}' for r in per)}); 1 thread; {_load()}")


def _procrustes_limit(quick: bool, rounds: int) -> dict:
    m, n, d = (5, 300, 32) if quick else (20, 2000, 256)
    feats = features(m, n, d, seed=2)
    pro = get_measure("procrustes_sim")
    states = [pro.prepare(f, backend="torch") for f in feats]
    H = torch.cat([s["X"] for s in states], 1)
    H2 = H.clone()
    iu = [(i, j) for i in range(m) for j in range(i + 1, m)]

    def gemm_and_svds() -> None:
        G = (H.T @ H2).view(m, d, m, d)
        torch.linalg.svdvals(torch.stack([G[i, :, j] for i, j in iu]).double())

    tt = interleaved({"limit": gemm_and_svds, "ours": lambda: pro.pairwise_states(states)}, rounds)
    per = _ratios(tt["limit"], tt["ours"])
    ratio = statistics.median(per)
    return row(f"procrustes_sim all pairs (torch) M={m} N={n} D={d} vs its GEMMs + SVDs",
               statistics.median(tt["ours"]), "one stacked float32 GEMM + float64 SVDs of the "
               f"{len(iu)} blocks", statistics.median(tt["limit"]), ratio,
               "within 1.3x (ratio >= 0.77)", None if quick else ratio >= 1 / 1.3,
               f"from prepared states; ours computes only the upper-half GEMM blocks; median of "
               f"{rounds} interleaved rounds ({', '.join(f'{r:.2f}' for r in per)}); 1 thread; "
               f"{_load()}")


def _knn_limit(quick: bool, rounds: int) -> dict:
    m, n, d, k = (4, 1500, 128, 10) if quick else (6, 5000, 512, 10)
    feats = features(m, n, d, seed=3)
    tensors = [torch.from_numpy(f) for f in feats]

    def sets_alone() -> None:
        for X in tensors:
            Xc = X - X.mean(0, keepdim=True)
            Xc = Xc / Xc.norm(dim=1, keepdim=True)
            S = Xc @ Xc.T
            S.fill_diagonal_(-float("inf"))
            S.topk(k, dim=1)

    tt = interleaved({"ours": lambda: pairwise("knn_jaccard", feats, backend="torch", k=k),
                      "sets": sets_alone}, rounds)
    per = _ratios(tt["sets"], tt["ours"])
    ratio = statistics.median(per)
    return row(f"knn_jaccard all pairs (torch) M={m} N={n} D={d} k={k} vs the neighbour sets",
               statistics.median(tt["ours"]), "the M neighbour sets alone (plain torch top-k)",
               statistics.median(tt["sets"]), ratio, "within 1.3x (ratio >= 0.77)",
               None if quick else ratio >= 1 / 1.3,
               f"end to end incl. prepare; median of {rounds} interleaved rounds "
               f"({', '.join(f'{r:.2f}' for r in per)}); 1 thread; {_load()}")


def run(quick: bool = False) -> list[dict]:
    """Backend rows (which backend is faster per measure) and the torch path's limit rows."""
    rounds = 2 if quick else 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            return (_backend_rows(quick, rounds) + [_cka_limit(quick, rounds),
                    _procrustes_limit(quick, rounds), _knn_limit(quick, rounds)])
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print_rows(run)
