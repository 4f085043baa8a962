"""Representational-similarity and prediction-agreement measures: the registry and its contract.

    from analysis.measures import MEASURES, compare, pairwise, orient
    compare("linear_cka", A, B)                      # A (N, Da), B (N, Db) float
    pairwise("knn_jaccard", [A, B, C], k=10)         # (3, 3) float64
    compare("error_consistency", ya, yb, labels=y)   # predicted labels (N,) int
    pairwise("linear_cka", feats, backend="torch", device="cuda")  # float32 on a GPU

See docs/measures.md for the table of measures, their direction, range and invariances; the
all-pairs engine over many models is ``analysis.engine``.
"""

from __future__ import annotations

from . import (agreement, cca, cka, divergence, gulp, knn, procrustes, rsa, rtd,  # noqa: F401
               stats, transfer)  # (registers the measures)
from ._backend import (
    BACKENDS,
    Backend,
    check_backend,
    is_torch_state,
    portable_state,
    resolve_backend,
    state_to_device,
)
from ._base import (
    INVARIANCES,
    MEASURES,
    Measure,
    MeasureInputError,
    Param,
    compare,
    get_measure,
    orient,
    pairwise,
    register_measure,
)
from .agreement import FortBounds, ambiguity, discrepancy, fort_bounds

__all__ = [
    "BACKENDS",
    "Backend",
    "check_backend",
    "is_torch_state",
    "portable_state",
    "resolve_backend",
    "state_to_device",
    "INVARIANCES",
    "MEASURES",
    "FortBounds",
    "Measure",
    "MeasureInputError",
    "Param",
    "ambiguity",
    "compare",
    "discrepancy",
    "fort_bounds",
    "get_measure",
    "orient",
    "pairwise",
    "register_measure",
]
