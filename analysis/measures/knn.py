"""k-nearest-neighbour measures: Jaccard overlap, rank similarity, joint rank-Jaccard.

The state of each model is its (N, k) int32 neighbour-index matrix, nearest first, computed once
(`knn_indices`) from a chunked N x N similarity so memory stays bounded. A point is never its own
neighbour (the diagonal is masked for both metrics; the paper's Euclidean path counted the point
itself -- documented deviation). Pairs are then compared with a fully vectorised sorted-index
intersection: concatenate the two rows, sort, and count adjacent equal entries.

References: Schumacher et al. 2021 / Hryniowski & Wong 2020 (k-NN Jaccard); Wang et al. 2020,
"Towards Understanding Learning Representations" (rank similarity); Klabunde et al. 2023, ReSi
(joint rank-Jaccard); SPEC 3.1c and 3.2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._backend import torch_ops
from ._base import Measure, MeasureInputError, Param, choice, positive_int, register_measure
from ._linalg import CHUNK_BYTES, centred, centred_tensor, row_normalised
from ._presets import REPRESENTATIONAL, ROTATION_INVARIANT, SIMILARITY


def knn_indices(X: np.ndarray, *, k: int, metric: str, center: bool, name: str = "knn") -> np.ndarray:
    """Indices of the k nearest other samples of every sample, nearest first.

    Args:
        X: (N, D) float features.
        k: neighbours per sample, 1 <= k < N.
        metric: "cosine" (largest cosine similarity) or "euclidean" (smallest distance).
        center: subtract column means first.
        name: measure name for error messages.

    Returns:
        (N, k) int32. Ties are broken by the lower index.
    """
    Xc = centred(X, name=name, center=center)
    # Rank in the input's precision: float32 features give float32 similarities (half the GEMM
    # and top-k memory traffic); float64 input keeps float64.
    work = np.float32 if X.dtype == np.float32 else np.float64
    n = Xc.shape[0]
    if metric == "cosine":
        Xc = row_normalised(Xc)
        bias = None
    elif metric == "euclidean":
        # argmin_j ||x_i - x_j||^2 == argmin_j (||x_j||^2 - 2 x_i.x_j): ||x_i||^2 is constant per row.
        bias = np.einsum("ij,ij->i", Xc, Xc).astype(work)
    else:
        raise MeasureInputError(f"{name}: metric={metric!r}; allowed: ['cosine', 'euclidean']")
    Xw = Xc.astype(work, copy=False)
    # per chunk row: the similarity row plus argpartition's int64 index row
    rows = max(1, CHUNK_BYTES // ((Xw.itemsize + 8) * n))
    out = np.empty((n, k), dtype=np.int32)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        cost = Xw[start:stop] @ Xw.T  # (chunk, N) similarity, turned in place into "lower = nearer"
        if bias is None:
            np.negative(cost, out=cost)
        else:
            cost *= -2.0
            cost += bias[None, :]
        cost[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own neighbour
        top = np.argpartition(cost, k - 1, axis=1)[:, :k]
        # order the k by (cost asc, index asc): sort index first, then a stable sort by cost
        top.sort(axis=1)
        order = np.argsort(np.take_along_axis(cost, top, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def neighbour_overlap(A: np.ndarray, B: np.ndarray, *, ranks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-sample overlap of two ranked neighbour lists.

    Args:
        A, B: (N, k) int neighbour indices, nearest first, no repeats within a row.
        ranks: also compute the rank-similarity sum.

    Returns:
        (inter, rank_sum): inter (N,) = |A_i & B_i|; rank_sum (N,) = sum over common neighbours
        of 2 / ((1 + |r_A - r_B|)(r_A + r_B)) with 1-based ranks, or None when ranks=False.
    """
    k = A.shape[1]
    cat = np.concatenate([A, B], axis=1)  # (N, 2k)
    if not ranks:
        s = np.sort(cat, axis=1)
        return np.count_nonzero(s[:, 1:] == s[:, :-1], axis=1), None
    order = np.argsort(cat, axis=1, kind="stable")  # equal values keep A before B
    s = np.take_along_axis(cat, order, axis=1)
    match = s[:, 1:] == s[:, :-1]  # (N, 2k-1): a match pairs an A entry with the next B entry
    r_a = order[:, :-1] + 1
    r_b = order[:, 1:] - k + 1
    denom = (1.0 + np.abs(r_a - r_b)) * (r_a + r_b)  # only meaningful where match
    contrib = np.divide(2.0, denom, out=np.zeros(denom.shape), where=match)
    return np.count_nonzero(match, axis=1), contrib.sum(axis=1)


_COMMON = dict(
    range=(0.0, 1.0),
    invariances=ROTATION_INVARIANT,
    **REPRESENTATIONAL,
    **SIMILARITY,
    cost="O(N^2 D + N^2) per model (chunked, O(chunk x N) memory), O(N k log k) per pair",
)


def _knn_params() -> dict[str, Param]:
    return {
        "k": positive_int(10),
        "metric": choice("cosine", "cosine", "euclidean"),
        "center": Param(True, "True or False", lambda v: isinstance(v, (bool, np.bool_))),
    }


@register_measure(
    "knn_jaccard",
    params=_knn_params(),
    reference="Schumacher et al. 2021; Klabunde et al. 2023 (ReSi); SPEC 3.1c",
    formula="mean_i |N_A(i) & N_B(i)| / |N_A(i) | N_B(i)|, N(i) = k nearest other samples",
    variant="jaccard",
    **_COMMON,
)
@register_measure(
    "rank_sim",
    params=_knn_params(),
    reference="Wang et al. 2020, Towards Understanding Learning Representations; SPEC 3.2",
    formula="mean_i (1/H_|common|) sum_common 2/((1+|rA-rB|)(rA+rB)), 0 if nothing common",
    variant="rank",
    **_COMMON,
)
@register_measure(
    "joint_rank_jaccard",
    params=_knn_params(),
    reference="Klabunde et al. 2023 (ReSi); SPEC 3.2",
    formula="mean_i Jaccard_i x RankSim_i",
    variant="joint",
    **_COMMON,
)
class KnnOverlap(Measure):
    """Neighbourhood-overlap measures over k-NN graphs (see module docstring)."""

    def meaningful_n(self, p: Mapping[str, Any], dims: Sequence[int] = ()) -> tuple[int, str]:
        """N >= max(50, 2k) (SPEC §10): with fewer points a k-neighbourhood is a large share of
        the set and overlaps by chance."""
        need = max(50, 2 * int(p["k"]))
        return need, f"N >= max(50, 2k) = {need} for k={p['k']}"

    def _check_params(self, p: dict[str, Any], n: int | None) -> None:
        if n is not None and p["k"] >= n:
            raise MeasureInputError(f"{self.name}: k={p['k']} must be < N={n} (a point is not its own neighbour)")

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        return {"idx": knn_indices(X, k=p["k"], metric=p["metric"], center=p["center"], name=self.name)}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        inter, rank_sum = neighbour_overlap(sa["idx"], sb["idx"], ranks=self.variant != "jaccard")
        return float(self._score(inter, rank_sum, p["k"]))

    def _score(self, inter: np.ndarray, rank_sum: np.ndarray | None, k: int) -> np.ndarray:
        """The measure from per-sample overlaps (..., N): the mean over the last axis."""
        jaccard = inter / (2 * k - inter)
        if self.variant == "jaccard":
            return jaccard.mean(axis=-1)
        harmonic = np.concatenate([[1.0], np.cumsum(1.0 / np.arange(1, k + 1))])  # H_0 unused (rank_sum 0)
        rank = rank_sum / harmonic[inter]
        if self.variant == "rank":
            return rank.mean(axis=-1)
        return (jaccard * rank).mean(axis=-1)

    # ------------------------------------------------------------------ torch backend
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        T = torch_ops()
        Xc = centred_tensor(X, dev, name=self.name, center=p["center"], dtype=T.F64)
        work = T.WORK if X.dtype == np.float32 else T.F64  # rank in the input's precision, as numpy
        return {"idx": T.knn_indices(Xc, k=p["k"], metric=p["metric"], work=work)}

    def _compare_torch(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return float(self._block_row(sa["idx"], sb["idx"][None], p["k"])[0])

    def _block_row(self, a: Any, batch: Any, k: int) -> np.ndarray:
        """Values of neighbour lists ``a`` (N, k) against a batch (b, N, k): (b,) float64."""
        T = torch_ops()
        inter, rank_sum = T.neighbour_overlap(a, batch, ranks=self.variant != "jaccard")
        return self._score(T.to_numpy(inter), None if rank_sum is None else T.to_numpy(rank_sum), k)

    def _block_torch(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        """All pairs, one batched sort per model and batch of partners (no per-pair loop)."""
        idx = [s["idx"] for s in states]
        out = np.empty((len(idx), len(idx)))
        for i in range(len(idx)):
            for j0, batch in torch_ops().overlap_batches(idx, i):
                out[i, j0: j0 + len(batch)] = out[j0: j0 + len(batch), i] = self._block_row(idx[i], batch, p["k"])
        return out

    def _cross_torch(self, sa: Sequence[Mapping[str, Any]], sb: Sequence[Mapping[str, Any]],
                     p: dict[str, Any]) -> np.ndarray | None:
        idx_b = [s["idx"] for s in sb]
        out = np.empty((len(sa), len(sb)))
        for i, s in enumerate(sa):
            for j0, batch in torch_ops().overlap_batches(idx_b, 0):
                out[i, j0: j0 + len(batch)] = self._block_row(s["idx"], batch, p["k"])
        return out
