"""Prediction-agreement measures on predicted labels (N,) int.

Pairwise: `disagreement`, `agreement`, `cohen_kappa`, `normalized_disagreement` (needs labels=),
`error_consistency` (needs labels=). Set-level functions over M models: `ambiguity`,
`discrepancy`. Reference curves: `fort_bounds`. Functional measures take predicted labels, i.e.
argmax of the probabilities (not logits, not probabilities): SPEC 3.3.

All pairs share one vectorised core: the (M, M) count of samples on which two models predict the
same label, computed as M-1 row-block comparisons of the stacked (M, N) label matrix (uint8/uint16
when the class count allows), plus per-model class histograms (one bincount each) for kappa and
per-model error counts for the error-corrected measures. Counts stay integers until the final
division, so the "bounds coincide" cases are detected exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._base import LABELS, Measure, MeasureInputError, get_measure, register_measure
from ._presets import DISTANCE, ON_LABELS, SIMILARITY


def narrow_labels(y: np.ndarray) -> np.ndarray:
    """Labels in the narrowest unsigned dtype that holds them (faster compares, smaller states)."""
    top = int(y.max()) if y.size else 0
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.int64
    return y.astype(dtype, copy=False)


def agreement_counts(L: np.ndarray) -> np.ndarray:
    """(M, M) int64 number of samples where models i and j predict the same label.

    Args:
        L: (M, N) integer label matrix.
    """
    m = L.shape[0]
    out = np.empty((m, m), dtype=np.int64)
    for i in range(m):  # over models only: each step compares one row against the remaining block
        # pack the (M-i, N) equality mask to bits and popcount: ~8x less data than summing bools
        same = np.bitwise_count(np.packbits(L[i:] == L[i], axis=1)).sum(axis=1, dtype=np.int64)
        out[i, i:] = same
        out[i:, i] = same
    return out


def _stack(states: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.stack([s["y"] for s in states])


def kappa_from_counts(agree: np.ndarray, chance_num: np.ndarray, n: int) -> np.ndarray:
    """Cohen's kappa from agreement counts and sum_c n_ac n_bc; 1.0 where p_e == 1 (see docs)."""
    p_o = agree / n
    p_e = chance_num / float(n) ** 2
    denom = 1.0 - p_e
    degenerate = chance_num == n * n  # both models always predict the same single class
    return np.where(degenerate, 1.0, (p_o - p_e) / np.where(degenerate, 1.0, denom))


_COUNTS_COST = "O(N) per pair; all pairs one (M, N) block compare per model"


@register_measure(
    "disagreement",
    range=(0.0, 1.0),
    params={},
    reference="SPEC 3.3; Fort et al. 2020",
    formula="d = mean_i 1[yA_i != yB_i]",
    cost=_COUNTS_COST,
    variant="disagreement",
    **DISTANCE,
    **ON_LABELS,
)
@register_measure(
    "agreement",
    range=(0.0, 1.0),
    params={},
    reference="SPEC 3.3 (the figures plot 1 - disagreement)",
    formula="1 - d",
    cost=_COUNTS_COST,
    variant="agreement",
    **SIMILARITY,
    **ON_LABELS,
)
@register_measure(
    "cohen_kappa",
    range=(-1.0, 1.0),
    params={},
    reference="Cohen 1960, A coefficient of agreement for nominal scales; SPEC 3.3",
    formula="(p_o - p_e) / (1 - p_e), p_o = 1 - d, p_e = sum_c nA_c nB_c / N^2; 1 if p_e = 1",
    cost="O(N + C) per pair; all pairs: block compare + (M, C) x (C, M) GEMM",
    variant="kappa",
    **SIMILARITY,
    **ON_LABELS,
)
@register_measure(
    "normalized_disagreement",
    range=(0.0, 1.0),
    params={"labels": LABELS},
    reference="SPEC 3.3 (rob-univ func.py), bounds as in Fort et al. 2020",
    formula="(d - |eA - eB|) / (min(eA + eB, 1) - |eA - eB|); 0 when the bounds coincide",
    cost="O(N) per pair",
    variant="normalized",
    **DISTANCE,
    **ON_LABELS,
)
@register_measure(
    "error_consistency",
    range=(-1.0, 1.0),
    params={"labels": LABELS},
    reference="Geirhos et al. 2020, Beyond accuracy: quantifying trial-by-trial behaviour ... (NeurIPS)",
    formula="(c_obs - c_exp) / (1 - c_exp), c_exp = pA pB + (1-pA)(1-pB), c_obs = P(both right or both wrong)",
    cost="O(N) per pair; all pairs one (M, N) x (N, M) GEMM",
    variant="error_consistency",
    **SIMILARITY,
    **ON_LABELS,
)
class LabelAgreement(Measure):
    """Agreement-family measures on predicted labels (one class, five registered variants).

    Defined values where a formula is 0/0:
    * cohen_kappa: p_e = 1 happens only when both models always predict one and the same class,
      so p_o = 1; the value is 1 (perfect agreement).
    * normalized_disagreement: when min(eA+eB, 1) == |eA-eB| (e.g. one model is perfect), the
      disagreement is forced to equal that bound, nothing is "excess": the value is 0.
    * error_consistency: c_exp = 1 only when both accuracies are 1 or both are 0, so c_obs = 1;
      the value is 1.
    """

    min_n = 1

    def _prepare(self, y: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"y": narrow_labels(y)}
        if self.variant == "kappa":
            state["hist"] = np.bincount(y)
        if "labels" in p:
            wrong = y != p["labels"]
            state["correct"] = ~wrong
            state["errors"] = int(np.count_nonzero(wrong))
        return state

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return float(self._block([sa, sb], p)[0, 1])

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray:
        n = int(states[0]["n"])
        if self.variant == "error_consistency":
            return self._error_consistency(states, n)
        agree = agreement_counts(_stack(states))
        if self.variant == "agreement":
            return agree / n
        if self.variant == "disagreement":
            return (n - agree) / n
        if self.variant == "kappa":
            width = max(s["hist"].size for s in states)
            H = np.zeros((len(states), width))  # float64 GEMM: counts <= N^2 < 2^53 stay exact
            for i, s in enumerate(states):
                H[i, : s["hist"].size] = s["hist"]
            return kappa_from_counts(agree, H @ H.T, n)
        if self.variant == "normalized":
            e = np.array([s["errors"] for s in states], dtype=np.int64)
            d = n - agree
            lo = np.abs(e[:, None] - e[None, :])
            hi = np.minimum(e[:, None] + e[None, :], n)
            span = hi - lo
            return np.where(span > 0, (d - lo) / np.where(span > 0, span, 1), 0.0)
        raise AssertionError(f"unhandled variant {self.variant!r}")

    @staticmethod
    def _error_consistency(states: Sequence[Mapping[str, Any]], n: int) -> np.ndarray:
        K = np.stack([s["correct"] for s in states]).astype(np.float64)  # (M, N) 0/1
        right = K.sum(axis=1)  # exact integers in float64
        both_right = K @ K.T
        both_wrong = n - right[:, None] - right[None, :] + both_right
        c_obs = (both_right + both_wrong) / n
        acc = right / n
        c_exp = np.outer(acc, acc) + np.outer(1 - acc, 1 - acc)
        degenerate = (right[:, None] == right[None, :]) & ((right[:, None] == 0) | (right[:, None] == n))
        return np.where(degenerate, 1.0, (c_obs - c_exp) / np.where(degenerate, 1.0, 1.0 - c_exp))


def _label_matrix(preds: Sequence[Any] | np.ndarray) -> np.ndarray:
    measure = get_measure("disagreement")
    rows = [measure.validate(y, f"preds[{i}]") for i, y in enumerate(preds)]
    if not rows:
        raise MeasureInputError("need at least one model's predictions, got none")
    ns = sorted({r.shape[0] for r in rows})
    if len(ns) > 1:
        raise MeasureInputError(f"predictions have different numbers of samples N: {ns}")
    return np.stack([narrow_labels(r) for r in rows])


def ambiguity(preds: Sequence[Any] | np.ndarray) -> float:
    """Share of samples on which at least two of the M models disagree (Marx et al. 2020, ICML).

    Args:
        preds: M predicted-label vectors (N,) int, or an (M, N) int array.

    Returns:
        float in [0, 1]; 0 for a single model.
    """
    L = _label_matrix(preds)
    return float(np.count_nonzero((L != L[0]).any(axis=0)) / L.shape[1])


def discrepancy(preds: Sequence[Any] | np.ndarray) -> float:
    """Largest pairwise disagreement over the M models (Marx et al. 2020, ICML).

    Args:
        preds: M predicted-label vectors (N,) int, or an (M, N) int array.

    Returns:
        float in [0, 1]; 0 for a single model.
    """
    L = _label_matrix(preds)
    return float((L.shape[1] - agreement_counts(L)).max() / L.shape[1])


class FortBounds(NamedTuple):
    """Reference disagreement values for two models of given accuracy (Fort et al. 2020, App. D).

    Attributes:
        min_disagreement: d_lo, the disagreement when the worse model is the better one with a
            fraction of predictions replaced by labels drawn uniformly over all C classes (drawn
            as the upper agreement curve 1 - d_lo).
        independent_disagreement: d_hi, the disagreement when errors are independent and uniform
            over the wrong classes (drawn as the lower agreement curve 1 - d_hi).
    """

    min_disagreement: float
    independent_disagreement: float

    @property
    def max_agreement(self) -> float:
        return 1.0 - self.min_disagreement

    @property
    def independent_agreement(self) -> float:
        return 1.0 - self.independent_disagreement


def fort_bounds(acc_a: float, acc_b: float, num_classes: int) -> FortBounds:
    """Fort et al. 2020 reference disagreements for accuracies acc_a, acc_b and C classes (SPEC 3.3).

    With a <= a* the two accuracies:
    d_lo = (C-1)(a* - a) / (C a* - 1), clipped to 1;
    d_hi = (1-a*) a + (1-a) a* + (1-a*)(1-a)(C-2)/(C-1).

    What the references assume: d_hi (the lower agreement curve, ``independent_agreement``) is
    the disagreement of two models whose errors are independent of each other and spread
    uniformly over the C - 1 wrong classes; with errors concentrated on a few confusable classes
    (as real models make them) agreement above it is expected and is not evidence of shared
    mechanism. d_lo (the upper curve) is the worse model obtained from the better one by
    replacing predictions with labels drawn uniformly over all C classes, which needs the better
    accuracy above chance 1/C.

    Args:
        acc_a, acc_b: accuracies in [0, 1]; order does not matter.
        num_classes: C >= 2.

    Returns:
        FortBounds(min_disagreement, independent_disagreement).

    Raises:
        MeasureInputError: accuracies outside [0, 1], C < 2, or the better accuracy at or below
            chance 1/C (d_lo's model needs a better-than-chance model).
    """
    for name, acc in (("acc_a", acc_a), ("acc_b", acc_b)):
        if not (isinstance(acc, (int, float, np.floating, np.integer)) and 0.0 <= float(acc) <= 1.0):
            raise MeasureInputError(f"fort_bounds: {name}={acc!r} must be an accuracy in [0, 1]")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise MeasureInputError(f"fort_bounds: num_classes={num_classes!r} must be an int >= 2")
    lo_acc, hi_acc = sorted((float(acc_a), float(acc_b)))
    c = int(num_classes)
    if c * hi_acc <= 1.0:
        raise MeasureInputError(
            f"fort_bounds: the better accuracy {hi_acc} must exceed chance 1/C = {1 / c:.4g} for the minimum-"
            "disagreement model to exist"
        )
    d_lo = min((c - 1) * (hi_acc - lo_acc) / (c * hi_acc - 1.0), 1.0)
    d_hi = (1 - hi_acc) * lo_acc + (1 - lo_acc) * hi_acc + (1 - hi_acc) * (1 - lo_acc) * (c - 2) / (c - 1)
    return FortBounds(float(d_lo), float(d_hi))
