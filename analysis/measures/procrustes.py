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

from ._base import Measure, register_measure
from ._linalg import centred, thin, upper_blocks
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
