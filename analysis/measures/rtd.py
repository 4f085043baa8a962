"""Representation Topology Divergence (RTD), with the CPU persistent-homology package ripser.

Barannikov et al. 2022, "Representation Topology Divergence: A Method for Comparing Neural
Network Representations" (ICML); SPEC 3.1d. For one subsample of n common rows, with Euclidean
distance matrices R_A, R_B each divided by its 0.9 quantile, the R-Cross-Barcode is the H1
persistence of the Vietoris-Rips filtration of the 2n x 2n matrix

    [[0,   R_A^T       ],
     [R_A, min(R_A, R_B)]]

(the first n vertices are one point at time 0). RTD(A, B) is the total length of its H1 bars;
the measure is the symmetrised average (RTD(A, B) + RTD(B, A)) / 2 over `n_subsamples` draws,
as the reference implementation does.

Defaults are the paper's: 10 subsamples of 500 points. CPU ripser is slow on 1,000 vertices
(about a minute per pair on a loaded 2-core machine), so small runs pass a cheaper setting
explicitly (the demo: ``rtd:n_subsamples=2:subsample_size=64``) and their reports name it.
Deviation from the paper's setup: subsamples are seeded (`seed`), the same indices for every
model (drawn from N alone), so pairs are reproducible and a model's state can be prepared once.
Entries below 1e-6 x mean(R_A) are set to 0, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._backend import torch_ops
from ._base import Measure, MeasureInputError, Param, positive_int, register_measure
from ._linalg import centred, centred_tensor, sq_distances
from ._presets import DISTANCE, REPRESENTATIONAL, ROTATION_INVARIANT


def subsample_indices(n: int, *, n_subsamples: int, subsample_size: int, seed: int) -> np.ndarray:
    """(n_subsamples, min(subsample_size, n)) sorted row indices, a function of (n, params) only."""
    rng = np.random.default_rng(seed)
    size = min(subsample_size, n)
    return np.stack([np.sort(rng.choice(n, size=size, replace=False)) for _ in range(n_subsamples)])


def h1_total_length(dist: np.ndarray) -> float:
    """Sum of finite H1 bar lengths of the Vietoris-Rips filtration of a distance matrix."""
    from ripser import ripser  # imported lazily: only RTD needs it

    bars = ripser(dist, maxdim=1, distance_matrix=True)["dgms"][1]
    finite = np.isfinite(bars[:, 1])
    return float((bars[finite, 1] - bars[finite, 0]).sum())


def cross_barcode_length(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Total H1 length of the R-Cross-Barcode of (A, B) from normalised distance matrices (n, n)."""
    n = r_a.shape[0]
    d = np.zeros((2 * n, 2 * n))
    d[n:, :n] = r_a
    d[:n, n:] = r_a.T
    d[n:, n:] = np.minimum(r_a, r_b)
    d[d < 1e-6 * r_a.mean()] = 0.0
    return h1_total_length(d)


@register_measure(
    "rtd",
    range=(0.0, float("inf")),
    invariances=ROTATION_INVARIANT,
    params={
        "n_subsamples": positive_int(10),
        "subsample_size": positive_int(500),
        "seed": Param(0, "an int >= 0", lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0),
    },
    reference="Barannikov et al. 2022, Representation Topology Divergence (ICML); SPEC 3.1d",
    formula="mean over subsamples of (H1 length of R-Cross-Barcode(A,B) + of (B,A)) / 2",
    cost="O(T s^2 D) per model; per pair 2T persistent-homology runs on 2s vertices (T subsamples of s)",
    **REPRESENTATIONAL,
    **DISTANCE,
)
class RTD(Measure):
    """Symmetrised, seeded-subsample RTD; lower = more similar, 0 for identical inputs."""

    def _check_params(self, p: dict[str, Any], n: int | None) -> None:
        if p["subsample_size"] < 4:
            raise MeasureInputError(f"{self.name}: subsample_size={p['subsample_size']} must be >= 4")

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        Xc = centred(X, name=self.name)
        idx = subsample_indices(
            Xc.shape[0], n_subsamples=p["n_subsamples"], subsample_size=p["subsample_size"], seed=p["seed"]
        )
        mats = []
        for rows in idx:  # loop over the few subsamples, not over samples
            r = np.sqrt(sq_distances(Xc[rows]))
            mats.append(r / self._scale(float(np.quantile(r, 0.9))))
        return {"R": np.stack(mats)}  # (T, s, s)

    def _scale(self, q: float) -> float:
        if q <= 0:
            raise MeasureInputError(f"{self.name}: 0.9-quantile of distances is 0 (most samples identical)")
        return q

    # ------------------------------------------------------------------ torch backend
    # The distance matrices on the device (float64); the barcodes stay on the CPU (ripser), so
    # the state is numpy and pairs compare as on the numpy backend.
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        T = torch_ops()
        Xc = centred_tensor(X, dev, name=self.name, dtype=T.F64)
        idx = subsample_indices(
            Xc.shape[0], n_subsamples=p["n_subsamples"], subsample_size=p["subsample_size"], seed=p["seed"]
        )
        mats = []
        for rows in idx:
            r = T.sq_distances(Xc[T.tensor(rows, Xc.device)]).sqrt()
            mats.append(T.to_numpy(r) / self._scale(T.quantile(r, 0.9)))
        return {"R": np.stack(mats)}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        values = [
            0.5 * (cross_barcode_length(ra, rb) + cross_barcode_length(rb, ra)) for ra, rb in zip(sa["R"], sb["R"])
        ]
        return float(np.mean(values))

    _compare_torch = _compare  # torch states hold the numpy distance matrices
