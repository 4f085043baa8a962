"""Inversion transfer (Jones et al. 2022; SPEC §11): how often model B labels model A's inverted
images as the inversion's target class, or as its seed class.

On the per-model input set ``inverted`` the pair engine compares, for the ordered pair (A, B),
A's predictions and B's predictions on *A's* inverted images (SPEC §3 rows). An inversion of A
turns a seed image of one class into an image whose A-representation matches a target image of
another class; if B "sees" what A put there, B predicts the target class:

    transfer_target(A, B) = mean_i 1[yhat_B(inv_A,i) == target class_i]
    transfer_seed(A, B)   = mean_i 1[yhat_B(inv_A,i) == seed class_i]

Both take predicted labels (N,) int and ``labels=`` (N,) int; which labels the engine passes is
declared at registration (``labels_from``): the inverted set's own labels are the targets'
classes, the seeds' classes are the item array ``seed_labels``. The value depends on B's
predictions only (A's are not read), so the measure is asymmetric and has no fixed self value:
(A, A) is A's own inversion success rate. Both are defined on the ``inverted`` input set only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._base import LABELS, Measure, register_measure
from ._presets import ON_LABELS

_TRANSFER = dict(
    {**ON_LABELS, "symmetric": False},  # (A, B) reads B's predictions on A's inversions
    range=(0.0, 1.0),
    self_value=None,
    params={"labels": LABELS},
    cost="O(N) per model (hits counted in prepare), O(1) per pair",
    input_sets=("inverted",),
)


@register_measure(
    "transfer_target",
    higher_is_more_similar=True,
    reference="Jones et al. 2022 (UAI), If you've trained one you've trained them all; SPEC §11",
    formula="mean_i 1[yB_i == target class_i] on row model A's inverted images",
    variant="target",
    labels_from="labels",
    **_TRANSFER,
)
@register_measure(
    "transfer_seed",
    higher_is_more_similar=False,
    reference="SPEC §11 (the seed-class column of its transfer table)",
    formula="mean_i 1[yB_i == seed class_i] on row model A's inverted images",
    variant="seed",
    labels_from="seed_labels",
    **_TRANSFER,
)
class InversionTransfer(Measure):
    """Fraction of the column model's predictions equal to ``labels`` (the targets' or the
    seeds' classes of the row model's inversions)."""

    min_n = 1  # an exact count over inputs, like the agreement family

    def _prepare(self, y: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        return {"hits": int(np.count_nonzero(y == p["labels"]))}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return sb["hits"] / sb["n"]

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray:
        hits = np.array([s["hits"] / s["n"] for s in states], dtype=np.float64)
        return np.broadcast_to(hits[None, :], (len(states), len(states))).copy()
