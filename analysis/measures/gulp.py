"""GULP: distance between the best ridge-regression predictors on two representations.

Boix-Adsera et al. 2022, "GULP: a prediction-based metric between representations" (NeurIPS).
Each representation is centred and scaled so that ||X||_F^2 = N (unit total variance, as in the
GULP code the paper adapts). With covariance eigenpairs from the thin SVD X = U S V^T
(e = S^2 / N), the ridge "hat" operator on the N samples is P_X = U diag(w) U^T with
w = e / (e + lambda). The (squared) distance is

    ||P_X - P_Y||_F^2 = sum w_X^2 + sum w_Y^2 - 2 sum_ij w_X,i w_Y,j (U_X^T U_Y)_ij^2,

which equals the code's T1 + T2 - 2 T3 (SPEC 3.2). lambda = 0 uses the pseudo-inverse: covariance
eigenvalues below RANK_TOL x the largest count as zero (the paper's code inverts any positive
eigenvalue, which amplifies rounding noise). At lambda = 0 the value only depends on the column
span, hence invariance to any invertible linear map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import Measure, real, register_measure
from ._linalg import centred
from ._presets import DISTANCE, REPRESENTATIONAL

RANK_TOL = 1e-10


@register_measure(
    "gulp",
    range=(0.0, float("inf")),
    invariances=("orthogonal", "isotropic_scale", "translation", "permutation", "invertible_linear"),
    params={"lam": real(0.0, lo=0.0)},
    reference="Boix-Adsera et al. 2022, GULP (NeurIPS); SPEC 3.2",
    formula="||P_X - P_Y||_F^2, P = X (X^T X/N + lam I)^-1 X^T / N after centring, ||X||_F^2 = N",
    cost="O(N D min(N,D)) per model, O(N ra rb) per pair",
    **REPRESENTATIONAL,
    **DISTANCE,
)
class Gulp(Measure):
    """GULP distance (squared form, as the paper's code); lam is the ridge parameter lambda.

    The invariance list holds at the default lam = 0; lam > 0 loses `invertible_linear`.
    """

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        Xc = centred(X, name=self.name)
        n = Xc.shape[0]
        Xc *= np.sqrt(n) / np.linalg.norm(Xc)
        U, S, _ = np.linalg.svd(Xc, full_matrices=False)
        e = S**2 / n
        r = int(np.count_nonzero(e > RANK_TOL * e[0]))
        w = e[:r] / (e[:r] + p["lam"])
        return {"U": U[:, :r], "w": w, "t": float(w @ w)}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        cross = sa["U"].T @ sb["U"]
        t3 = float(sa["w"] @ (cross**2) @ sb["w"])
        return max(sa["t"] + sb["t"] - 2.0 * t3, 0.0)
