"""Per-model summary statistics compared across models: magnitude and concentricity.

Wang et al. 2020 ("Towards Understanding Learning Representations: To What Extent Do Different
Neural Networks Learn the Same Representation"); ReSi (Klabunde et al. 2023); SPEC 3.2.

* magnitude m(X) = ||mean_i x_i||_2 (raw, uncentred activations);
* concentricity c(X) = mean_i cos(x_i, mean_j x_j).

The pairwise measure is the absolute difference of the statistic. The paper's cross-model
"variance" versions are not provided: they are ~0 by construction (SPEC 3.2 notes the bug).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._base import Measure, register_measure
from ._linalg import row_normalised
from ._presets import DISTANCE, REPRESENTATIONAL


def magnitude(X: np.ndarray) -> float:
    """||mean activation||_2 of (N, D) features."""
    return float(np.linalg.norm(np.asarray(X, dtype=np.float64).mean(axis=0)))


def concentricity(X: np.ndarray) -> float:
    """Mean cosine of each sample to the mean activation; 0 when the mean is the zero vector."""
    X = np.asarray(X, dtype=np.float64)
    mu = X.mean(axis=0)
    norm = np.linalg.norm(mu)
    if norm == 0:
        return 0.0
    return float((row_normalised(X) @ (mu / norm)).mean())


_COMMON = dict(
    **REPRESENTATIONAL,
    **DISTANCE,
    params={},
    reference="Wang et al. 2020; Klabunde et al. 2023 (ReSi); SPEC 3.2",
    cost="O(N D) per model, O(1) per pair",
)


@register_measure(
    "magnitude_diff",
    range=(0.0, float("inf")),
    invariances=("orthogonal", "permutation"),
    formula="| ||mean(X)||_2 - ||mean(Y)||_2 |",
    variant="magnitude",
    **_COMMON,
)
@register_measure(
    "concentricity_diff",
    range=(0.0, 2.0),
    invariances=("orthogonal", "permutation", "isotropic_scale"),
    formula="| mean_i cos(x_i, mean(X)) - mean_i cos(y_i, mean(Y)) |",
    variant="concentricity",
    **_COMMON,
)
class StatDiff(Measure):
    """Absolute difference of a per-model statistic (magnitude or concentricity)."""

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        return {"stat": magnitude(X) if self.variant == "magnitude" else concentricity(X)}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return abs(sa["stat"] - sb["stat"])

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray:
        v = np.array([s["stat"] for s in states])
        return np.abs(v[:, None] - v[None, :])
