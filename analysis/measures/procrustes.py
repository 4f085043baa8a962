"""Orthogonal Procrustes similarity and its angular distance.

With X, Y centred and scaled to unit Frobenius norm, min_Q ||X - YQ||_F^2 = 2 - 2 ||X^T Y||_*,
so ProcrustesSim = ||X^T Y||_* in [0, 1] (the nuclear norm; Ding et al. 2021, "Grounding
Representation Similarity Through Statistical Testing", NeurIPS; Williams et al. 2021,
"Generalized Shape Metrics on Neural Representations", NeurIPS). The paper's code zero-pads the
narrower matrix; that is unnecessary because the nuclear norm of the Da x Db cross-product is
the same. When D > N the state is the N x N factor Z with Z Z^T = X X^T, which has the same
nuclear norms against any Y (SPEC 3.1b).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._backend import torch_ops
from ._base import Measure, register_measure
from ._linalg import centred, centred_tensor, thin, upper_blocks
from ._presets import DISTANCE, REPRESENTATIONAL, ROTATION_INVARIANT, SIMILARITY

_COMMON = dict(
    invariances=ROTATION_INVARIANT,
    params={},
    reference="Ding et al. 2021 (NeurIPS); Williams et al. 2021 (NeurIPS); SPEC 3.1b",
    cost="O(N Da Db + min(Da,Db)^2 max(Da,Db)) per pair; D > N uses the N x N form",
)


@register_measure(
    "procrustes_sim",
    range=(0.0, 1.0),
    formula="||X^T Y||_* with X, Y centred and ||X||_F = ||Y||_F = 1  (= 1 - d_Procrustes/2)",
    variant="sim",
    **REPRESENTATIONAL,
    **SIMILARITY,
    **_COMMON,
)
@register_measure(
    "procrustes_angular",
    range=(0.0, float(np.pi / 2)),
    formula="arccos(||X^T Y||_*) (angular Procrustes distance, radians)",
    variant="angular",
    **REPRESENTATIONAL,
    **DISTANCE,
    **_COMMON,
)
class Procrustes(Measure):
    """Procrustes similarity (`procrustes_sim`) or angle (`procrustes_angular`)."""

    tf32 = True  # TF32-rounded operands move the values by ~1e-6 (tests/test_measures_backends.py)

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        Xc = centred(X, name=self.name)
        Xc /= np.linalg.norm(Xc)
        return {"X": thin(Xc)}

    def _finish(self, nuclear: float) -> float:
        sim = min(max(nuclear, 0.0), 1.0)  # rounding can push 1.0 up by an ulp
        return sim if self.variant == "sim" else float(np.arccos(sim))

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        cross = sa["X"].T @ sb["X"]
        return self._finish(float(np.linalg.svd(cross, compute_uv=False).sum()))

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        m = len(states)
        out = np.empty((m, m))
        for i, s in enumerate(states):  # ||X^T X||_* = tr(X^T X) = ||X||_F^2 (PSD), no SVD needed
            out[i, i] = self._finish(float(np.einsum("ij,ij->", s["X"], s["X"])))
        for i, j, cross in upper_blocks([s["X"] for s in states], strict=True):
            out[i, j] = out[j, i] = self._finish(float(np.linalg.svd(cross, compute_uv=False).sum()))
        return out

    # ------------------------------------------------------------------ torch backend
    # The state keeps the float32 centred X and its float64 squared norm apart (scaling in
    # float32 would put ||X||_F^2 an ulp off 1, which arccos turns into ~1e-4 on the diagonal).
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        T = torch_ops()
        Z = T.thin(centred_tensor(X, dev, name=self.name))
        return {"X": Z, "sq": T.fro_inner(Z, Z)}

    def _compare_torch(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        T = torch_ops()
        if T.same(sa["X"], sb["X"]):  # ||X^T X||_* = ||X||_F^2 (PSD), as `_block` uses
            return self._finish(1.0)
        nuclear = float(T.svdvals64(sa["X"].T @ sb["X"]).sum())
        return self._finish(nuclear / np.sqrt(sa["sq"] * sb["sq"]))

    def _block_torch(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        T = torch_ops()
        sq = np.array([s["sq"] for s in states])
        nuclear = T.upper_nuclear([s["X"] for s in states]) / np.sqrt(np.outer(sq, sq))
        np.fill_diagonal(nuclear, [T.fro_inner(s["X"], s["X"]) / s["sq"] for s in states])  # = 1
        sim = np.clip(nuclear, 0.0, 1.0)
        return sim if self.variant == "sim" else np.arccos(sim)

    def _cross_torch(self, sa: Sequence[Mapping[str, Any]], sb: Sequence[Mapping[str, Any]],
                     p: dict[str, Any]) -> np.ndarray | None:
        T = torch_ops()
        sq_a, sq_b = np.array([s["sq"] for s in sa]), np.array([s["sq"] for s in sb])
        nuclear = T.cross_nuclear([s["X"] for s in sa], [s["X"] for s in sb])
        sim = np.clip(nuclear / np.sqrt(np.outer(sq_a, sq_b)), 0.0, 1.0)
        return sim if self.variant == "sim" else np.arccos(sim)
