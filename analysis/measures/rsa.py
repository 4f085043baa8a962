"""Second-order measures: RSA (RDM correlation) and second-order cosine similarity.

RSA (Kriegeskorte et al. 2008, "Representational similarity analysis", Front. Syst. Neurosci.):
correlate the upper triangles of the two N x N representational dissimilarity matrices. The state
is that triangle, rank-transformed for Spearman and standardised to zero mean and unit norm, so a
pair is one dot product and all pairs one GEMM. O(N^2) memory per model: keep N to a few thousand.

Second-order cosine (Hamilton et al. 2016, "Cultural shift or linguistic drift?", EMNLP; SPEC 3.2):
row-wise cosine between the N x N cosine-similarity matrices (diagonals zeroed), averaged over rows.
Computed without any N x N matrix: with unit rows a_i, row i of S_A . row i of S_B =
a_i^T (A^T B) b_i - (a_i.a_i)(b_i.b_i), O(N Da Db) per pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ._backend import torch_ops
from ._base import Measure, MeasureInputError, choice, register_measure
from ._linalg import GRAM_STACK_BYTES, centred, centred_tensor, row_normalised, sq_distances, thin
from ._presets import REPRESENTATIONAL, ROTATION_INVARIANT, SIMILARITY


def rdm_upper(X: np.ndarray, metric: str) -> np.ndarray:
    """Upper triangle (k=1, row-major) of the N x N dissimilarity matrix of float64 X.

    Args:
        X: (N, D) float64.
        metric: "euclidean", "sqeuclidean", "cosine" (1 - cosine similarity) or "correlation"
            (1 - Pearson correlation between the two samples' feature vectors).

    Returns:
        (N (N-1) / 2,) float64.
    """
    n = X.shape[0]
    iu = np.triu_indices(n, k=1)
    if metric in ("euclidean", "sqeuclidean"):
        sq = sq_distances(X)[iu]
        return np.sqrt(sq) if metric == "euclidean" else sq
    if metric == "correlation":
        X = X - X.mean(axis=1, keepdims=True)
    Z = row_normalised(X)
    return 1.0 - (Z @ Z.T)[iu]


@register_measure(
    "rsa",
    range=(-1.0, 1.0),
    invariances=ROTATION_INVARIANT,
    params={
        "rdm": choice("euclidean", "euclidean", "sqeuclidean", "cosine", "correlation"),
        "corr": choice("spearman", "spearman", "pearson"),
    },
    reference="Kriegeskorte et al. 2008, Representational similarity analysis (Front. Syst. Neurosci.)",
    formula="corr(upper(RDM_X), upper(RDM_Y)); corr = Spearman (default) or Pearson",
    cost="O(N^2 D + N^2 log N) per model, O(N^2) per pair, O(N^2) memory per model",
    **REPRESENTATIONAL,
    **SIMILARITY,
)
class RSA(Measure):
    """RDM correlation; invariances listed hold for the default Euclidean RDM."""

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        v = rdm_upper(np.asarray(X, dtype=np.float64), p["rdm"])
        if p["corr"] == "spearman":
            v = rankdata(v)  # average ranks for ties
        v = v - v.mean()
        norm = np.linalg.norm(v)
        if not norm > 0:  # like every other measure: no silent 0 for an undefined correlation
            raise MeasureInputError(
                f"{self.name}: the {p['rdm']} dissimilarity matrix is constant across sample pairs "
                "(all samples identical or equidistant); its correlation is undefined"
            )
        return {"v": v / norm}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return float(np.clip(sa["v"] @ sb["v"], -1.0, 1.0))

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        V = [s["v"] for s in states]
        if len(V) * V[0].size * 8 > GRAM_STACK_BYTES:
            return None
        V = np.stack(V)
        return np.clip(V @ V.T, -1.0, 1.0)


@register_measure(
    "second_order_cosine",
    range=(-1.0, 1.0),
    invariances=ROTATION_INVARIANT,
    params={},
    reference="Hamilton et al. 2016 (EMNLP); SPEC 3.2",
    formula="mean_i cos(S_X[i], S_Y[i]), S = cosine-similarity matrix of centred rows, diagonal 0",
    cost="O(N Da Db) per pair, O(N D^2) per model; no N x N matrix",
    **REPRESENTATIONAL,
    **SIMILARITY,
)
class SecondOrderCosine(Measure):
    """Second-order cosine similarity; rows whose similarity profile is all zero contribute 0."""

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        A = thin(row_normalised(centred(X, name=self.name)))  # Z Z^T = A A^T keeps every cosine
        unit = np.einsum("ij,ij->i", A, A)  # 1 (or 0 for a zero row), the masked diagonal
        row_sq = np.einsum("ij,ij->i", A @ (A.T @ A), A) - unit**2  # ||S_A[i]||^2 without the diagonal
        return {"A": A, "unit": unit, "row_norm": np.sqrt(np.maximum(row_sq, 0.0))}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        A, B = sa["A"], sb["A"]
        dots = np.einsum("ij,ij->i", A @ (A.T @ B), B) - sa["unit"] * sb["unit"]
        denom = sa["row_norm"] * sb["row_norm"]
        cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
        return float(np.clip(cos, -1.0, 1.0).mean())

    # ------------------------------------------------------------------ torch backend
    # float32 GEMMs, float64 row sums; the unit rows are normalised in float64 first.
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        T = torch_ops()
        A = T.thin(T.row_normalised(centred_tensor(X, dev, name=self.name, dtype=T.F64))).to(T.WORK)
        unit = (A * A).sum(1, dtype=T.F64)
        row_sq = ((A @ (A.T @ A)) * A).sum(1, dtype=T.F64) - unit**2
        return {"A": A, "unit": unit, "row_norm": row_sq.clamp(min=0.0).sqrt()}

    def _compare_torch(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        T = torch_ops()
        A, B = sa["A"], sb["A"]
        dots = ((A @ (A.T @ B)) * B).sum(1, dtype=T.F64) - sa["unit"] * sb["unit"]
        denom = sa["row_norm"] * sb["row_norm"]
        cos = T.to_numpy(dots / denom.where(denom > 0, 1.0)) * T.to_numpy(denom > 0)
        return float(np.clip(cos, -1.0, 1.0).mean())
