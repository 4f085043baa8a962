"""CCA-based similarities: SVCCA and PWCCA.

Canonical correlations of centred X, Y are the singular values of U_X^T U_Y, where U are
orthonormal bases of the column spaces (thin SVD; directions with singular value below
`RANK_TOL` x the largest are dropped as numerically null).

* SVCCA (Raghu et al. 2017, NeurIPS): keep the top singular directions of each representation
  explaining a fraction `keep` of its variance, then average the canonical correlations.
* PWCCA (Morcos et al. 2018, "Insights on representational similarity in neural networks with
  canonical correlation", NeurIPS): canonical correlations weighted by how much of the FIRST
  representation each canonical variate h_i accounts for, alpha_i = sum_j |<h_i, x_j>| over
  X's neurons x_j. Asymmetric; not invariant to rotations of X (the |.| is per neuron).

With Da + Db >= N the canonical correlations go to 1 trivially: ``compare`` / ``pairwise`` refuse
N <= Da + Db (``meaningful_n``) unless the caller passes ``allow_small_n=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._backend import torch_ops
from ._base import Measure, real, register_measure
from ._linalg import centred, centred_tensor
from ._presets import REPRESENTATIONAL, ROTATION_INVARIANT, SIMILARITY

RANK_TOL = 1e-10


def _basis(X: np.ndarray, keep: float | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis U (N, r) of centred X and R = S V^T (r, D), so X = U R."""
    Xc = centred(X, name=name)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    r = _rank(S, keep)
    return U[:, :r], S[:r, None] * Vt[:r]


def _rank(S: np.ndarray, keep: float | None) -> int:
    """How many leading singular directions the basis keeps (numerically non-null; with `keep`,
    the fewest explaining that fraction of the variance)."""
    r = int(np.count_nonzero(S > RANK_TOL * S[0]))
    if keep is not None:
        var = S[:r] ** 2
        # smallest r' whose leading directions explain >= keep of the variance
        r = min(r, int(np.searchsorted(np.cumsum(var) / var.sum(), keep - 1e-12)) + 1)
    return r


@register_measure(
    "svcca",
    range=(0.0, 1.0),
    invariances=ROTATION_INVARIANT,
    params={"keep": real(0.99, lo=0.0, lo_open=True, hi=1.0)},
    reference="Raghu et al. 2017, SVCCA (NeurIPS)",
    formula="mean of the canonical correlations between the top-variance SVD subspaces (fraction `keep`)",
    cost="O(N D min(N,D)) per model, O(N ra rb) per pair",
    variant="svcca",
    **REPRESENTATIONAL,
    **SIMILARITY,
)
@register_measure(
    "pwcca",
    kind="representational",
    input="features",
    symmetric=False,
    range=(0.0, 1.0),
    invariances=("isotropic_scale", "translation", "permutation"),
    params={},
    reference="Morcos et al. 2018, Insights on representational similarity ... canonical correlation (NeurIPS)",
    formula="sum_i alpha_i rho_i / sum_i alpha_i, alpha_i = sum_j |<h_i, x_j>| (h_i: canonical variates of X)",
    cost="O(N D min(N,D)) per model, O(N ra rb + ra rb D) per pair",
    variant="pwcca",
    **SIMILARITY,
)
class CCA(Measure):
    """SVCCA (`svcca`) and projection-weighted CCA (`pwcca`)."""

    def meaningful_n(self, p: Mapping[str, Any], dims: Sequence[int] = ()) -> tuple[int, str]:
        """N > Da + Db: below it the two column spaces share directions by construction."""
        need = max(self.small_n_floor, sum(dims) + 1)
        return need, f"N > Da + Db = {sum(dims)}" if dims else f"N >= {need}"

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        U, R = _basis(X, p.get("keep"), self.name)
        state: dict[str, Any] = {"U": U}
        if self.variant == "pwcca":
            state["R"] = R
        return state

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        P, rho, _ = np.linalg.svd(sa["U"].T @ sb["U"], full_matrices=False)  # P (ra, r), rho (r,)
        return self._from_svd(P, rho, sa)

    def _from_svd(self, P: np.ndarray | None, rho: np.ndarray, sa: Mapping[str, Any]) -> float:
        """The measure from the SVD P diag(rho) Q^T of U_a^T U_b (P only for PWCCA)."""
        rho = np.clip(rho, 0.0, 1.0)
        if self.variant == "svcca":
            return float(rho.mean())
        # <h_i, x_j> for canonical variate h_i = U_a P[:, i] and neuron x_j = U_a R[:, j]
        alpha = np.abs(P.T @ sa["R"]).sum(axis=1)  # (r,)
        return float(alpha @ rho / alpha.sum())

    # ------------------------------------------------------------------ torch backend
    # The bases come from float64 SVDs (their rank cut must see the true small singular values);
    # U is kept float32, U_a^T U_b is a float32 GEMM and its SVD float64. R stays numpy (small).
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        T = torch_ops()
        U, S, Vt = T.svd64(centred_tensor(X, dev, name=self.name, dtype=T.F64))
        r = _rank(T.to_numpy(S), p.get("keep"))
        state: dict[str, Any] = {"U": U[:, :r].to(T.WORK)}
        if self.variant == "pwcca":
            state["R"] = T.to_numpy(S[:r, None] * Vt[:r])
        return state

    def _compare_torch(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        T = torch_ops()
        C = sa["U"].T @ sb["U"]
        if self.variant == "svcca":
            return self._from_svd(None, T.to_numpy(T.svdvals64(C)), sa)
        P, rho, _ = T.svd64(C)
        return self._from_svd(T.to_numpy(P), T.to_numpy(rho), sa)
