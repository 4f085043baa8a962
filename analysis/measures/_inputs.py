"""What a measure accepts: its parameter declarations and the checks on its inputs.

`Param` (with `choice`, `positive_int`, `real`, `LABELS`) declares one measure parameter;
`check_input` validates one input against a measure's input kind (features / labels / probs)
and `check_labels` the `labels=` parameter. Every failure is a `MeasureInputError` (a
`UserError`) that names the measure, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainables.errors import UserError

# Probability rows must sum to 1 within this tolerance (float32 softmax over 1000 classes is ~1e-6).
PROB_SUM_TOL = 1e-3


class MeasureInputError(UserError):
    """Bad input to a measure: wrong shape, dtype, non-finite values, unknown or invalid params."""


@dataclass(frozen=True)
class Param:
    """One declared measure parameter.

    Attributes:
        default: value used when the caller omits it (None for `labels`, which is then required
            when `required` is True).
        allowed: human-readable description of allowed values, used in error messages.
        check: predicate on a value; False -> MeasureInputError.
        required: the caller must pass it (only `labels`).
    """

    default: Any
    allowed: str
    check: Callable[[Any], bool]
    required: bool = False


def choice(default: str, *options: str) -> Param:
    """A closed-set string parameter."""
    return Param(default, f"one of {list(options)}", lambda v: v in options)


def positive_int(default: int) -> Param:
    return Param(default, "an int >= 1", lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1)


def real(default: float, *, lo: float, lo_open: bool = False, hi: float = math.inf) -> Param:
    op = ">" if lo_open else ">="

    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            return False
        v = float(v)
        return math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi

    return Param(default, f"a finite number {op} {lo}" + (f" and <= {hi}" if hi < math.inf else ""), ok)


LABELS = Param(None, "a 1-D integer array of ground-truth labels, one per sample", lambda v: True, required=True)


def to_numpy(A: Any) -> np.ndarray:
    if hasattr(A, "detach"):  # torch.Tensor, without importing torch
        A = A.detach().cpu().numpy()
    return np.asarray(A)


def check_finite(X: np.ndarray, what: str) -> None:
    if not np.isfinite(X).all():
        bad = int(X.size - np.count_nonzero(np.isfinite(X)))
        raise MeasureInputError(f"{what} contains {bad} NaN/inf values; measures need finite inputs")


def check_labels(name: str, y: Any, n: int | None) -> np.ndarray:
    """The `labels=` parameter as a 1-D integer array of N entries >= 0."""
    y = to_numpy(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise MeasureInputError(
            f"measure {name!r}: labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}"
        )
    if n is not None and y.shape[0] != n:
        raise MeasureInputError(f"measure {name!r}: labels has {y.shape[0]} entries but the inputs have N={n}")
    if y.size and y.min() < 0:
        raise MeasureInputError(f"measure {name!r}: labels must be >= 0, got min {int(y.min())}")
    return y


def check_input(name: str, kind: str, min_n: int, A: Any, what: str = "A") -> np.ndarray:
    """Check one input against a measure's input kind (`features`, `labels`, `probs`) and its
    smallest N; returns it as a numpy array (no copy)."""
    A = to_numpy(A)
    if kind == "features":
        if A.ndim != 2:
            raise MeasureInputError(f"{name}: {what} must be 2-D features (N, D), got shape {A.shape}")
        if not np.issubdtype(A.dtype, np.floating):
            raise MeasureInputError(f"{name}: {what} must be a float array (N, D), got dtype {A.dtype}")
        if A.shape[1] < 1:
            raise MeasureInputError(f"{name}: {what} has no feature columns, shape {A.shape}")
        check_finite(A, f"{name}: {what}")
    elif kind == "labels":
        if A.ndim != 1 or not np.issubdtype(A.dtype, np.integer):
            raise MeasureInputError(
                f"{name}: {what} must be 1-D integer predicted labels (N,), got shape {A.shape} dtype "
                f"{A.dtype} (take argmax of probabilities first)"
            )
        if A.size and A.min() < 0:
            raise MeasureInputError(f"{name}: {what} labels must be >= 0, got min {int(A.min())}")
    elif kind == "probs":
        if A.ndim != 2 or not np.issubdtype(A.dtype, np.floating):
            raise MeasureInputError(
                f"{name}: {what} must be a 2-D float array of probabilities (N, C), got shape {A.shape} "
                f"dtype {A.dtype}"
            )
        check_finite(A, f"{name}: {what}")
        row_sums = A.sum(axis=1, dtype=np.float64)
        if A.size and (A.min() < 0 or np.abs(row_sums - 1.0).max() > PROB_SUM_TOL):
            raise MeasureInputError(
                f"{name}: {what} rows must be probabilities (>= 0, summing to 1 within {PROB_SUM_TOL}); "
                f"got min {float(A.min()):.3g}, row sums in [{row_sums.min():.4g}, {row_sums.max():.4g}] "
                "-- pass softmax(logits), not logits"
            )
    else:  # pragma: no cover - closed set, guarded at registration
        raise AssertionError(f"unknown input kind {kind!r}")
    if A.shape[0] < min_n:
        raise MeasureInputError(f"{name}: {what} has N={A.shape[0]} samples; needs at least {min_n}")
    return A
