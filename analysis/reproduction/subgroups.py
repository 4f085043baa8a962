"""Agree/disagree subgroup analysis for one model pair (SPEC §5, reproduction target 6).

The evaluation inputs are split by argmax into those where the two models predict the same class
and those where they do not; each representational measure is computed on each subset from
scratch (``analysis.measures.compare`` on the row subsets: no state survives between calls. The
paper's `subgroup_sim.py` reused the agree subset's MinibatchCKA accumulator for the disagree
subset, SPEC §7 item 8).

A seeded permutation test asks whether the agree-minus-disagree difference is larger than the
subset membership alone explains: membership is permuted (subset sizes kept), both values are
recomputed, and the p-value is two-sided with the +1 correction. Keeping the sizes matters because
several measures depend on N (k-NN Jaccard with a fixed k is higher on small sets), so the null
distribution need not be centred at zero.

A subset below the smallest N at which a measure means something (its declared
``meaningful_n``, SPEC §10: e.g. max(50, 2k) rows for k-NN) is recorded with
``status="too_small"`` and a reason, never computed; a measure that raises is recorded with
``status="error"``.
Neither ever becomes a silent NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from analysis.engine.spec import MeasureSpec
from analysis.measures import compare, get_measure
from trainables.errors import ConfigError, DataError

__all__ = ["SubgroupResult", "split_agree", "min_samples", "subgroup_similarity", "results_frame"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubgroupResult:
    """One measure on the agree and disagree subsets of one model pair.

    Attributes:
        measure, params: the measure (registry name) and its parameters.
        n_agree, n_disagree: subset sizes (rows).
        agree, disagree: the measure on each subset (NaN unless status == "ok").
        diff: agree - disagree.
        p_value: two-sided permutation p-value of ``diff`` (NaN if not tested).
        null_mean: mean of the permutation null of ``diff`` (what subset sizes alone give; NaN if
            not tested); ``diff - null_mean`` is the size-adjusted difference.
        n_permutations: permutations drawn.
        status: "ok", "too_small" or "error".
        reason: why the status is not "ok" ("" otherwise).
    """

    measure: str
    params: dict[str, object]
    n_agree: int
    n_disagree: int
    agree: float
    disagree: float
    diff: float
    p_value: float
    n_permutations: int
    status: str
    reason: str = ""
    null_mean: float = float("nan")


def split_agree(preds_a: np.ndarray, preds_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices where two models' argmax predictions agree and where they differ.

    Args:
        preds_a: (N,) int predictions (or (N, C) logits/probabilities, argmaxed here).
        preds_b: same shape as ``preds_a``.

    Returns:
        ``(agree_idx, disagree_idx)``: sorted int64 arrays partitioning ``arange(N)``.
    """
    pa, pb = np.asarray(preds_a), np.asarray(preds_b)
    if pa.ndim == 2:
        pa = pa.argmax(axis=1)
    if pb.ndim == 2:
        pb = pb.argmax(axis=1)
    if pa.shape != pb.shape or pa.ndim != 1:
        raise DataError(f"predictions must be (N,) of equal length, got {pa.shape} and {pb.shape}")
    same = pa == pb
    return np.flatnonzero(same).astype(np.int64), np.flatnonzero(~same).astype(np.int64)


def _need(spec: MeasureSpec, dims: Sequence[int]) -> tuple[int, str]:
    m = get_measure(spec.name)
    need, rule = m.meaningful_n(m.resolve_params(spec.kwargs), dims)
    return max(4, m.min_n, need), rule


def min_samples(spec: MeasureSpec, dims: Sequence[int] = ()) -> int:
    """Fewest rows a subset needs for ``spec`` to mean something (SPEC §10).

    The measure's declared ``meaningful_n`` for these feature widths (k-NN: max(50, 2k);
    SVCCA/PWCCA: > Da + Db; biased CKA: > D; the rest: the common floor), and at least 4 (after
    centring, 2 rows span one direction and every linear measure says 1; debiased HSIC divides
    by N - 3).
    """
    return _need(spec, dims)[0]


def _compare(spec: MeasureSpec, a: np.ndarray, b: np.ndarray) -> float:
    return float(compare(spec.name, a, b, **spec.kwargs))


def _two_sided_p(null: np.ndarray, observed: float) -> float:
    n = null.size
    upper = (1 + np.count_nonzero(null >= observed - 1e-12)) / (n + 1)
    lower = (1 + np.count_nonzero(null <= observed + 1e-12)) / (n + 1)
    return float(min(1.0, 2 * min(upper, lower)))


def subgroup_similarity(
    features_a: np.ndarray,
    features_b: np.ndarray,
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    *,
    measures: Sequence[MeasureSpec],
    n_permutations: int = 200,
    seed: int = 0,
) -> list[SubgroupResult]:
    """Representational similarity on the agree and disagree subsets, with a permutation test.

    Args:
        features_a: (N, D_a) features of model A on the evaluation inputs.
        features_b: (N, D_b) features of model B on the same inputs (rows aligned).
        preds_a, preds_b: (N,) predictions (or (N, C) logits) of the two models.
        measures: the measures to compute (registry names of ``analysis.measures``).
        n_permutations: membership permutations per measure (0 = no test).
        seed: seeds the permutations (``np.random.default_rng(seed)``).

    Returns:
        One SubgroupResult per measure, in the order given.
    """
    xa, xb = np.asarray(features_a), np.asarray(features_b)
    if xa.ndim != 2 or xb.ndim != 2 or xa.shape[0] != xb.shape[0]:
        raise DataError(f"features must be (N, D) with equal N, got {xa.shape} and {xb.shape}")
    if not isinstance(n_permutations, int) or n_permutations < 0:
        raise ConfigError(f"n_permutations must be an int >= 0, got {n_permutations!r}")
    agree_idx, disagree_idx = split_agree(preds_a, preds_b)
    if agree_idx.size + disagree_idx.size != xa.shape[0]:
        raise DataError(f"{agree_idx.size + disagree_idx.size} predictions for {xa.shape[0]} rows")
    n_ag, n_dis = int(agree_idx.size), int(disagree_idx.size)
    out: list[SubgroupResult] = []
    for i, spec in enumerate(measures):
        base = dict(measure=spec.name, params=spec.kwargs, n_agree=n_ag, n_disagree=n_dis,
                    n_permutations=0)
        need, rule = _need(spec, (xa.shape[1], xb.shape[1]))
        if min(n_ag, n_dis) < need:
            which, rows = ("agree", n_ag) if n_ag < n_dis else ("disagree", n_dis)
            out.append(SubgroupResult(
                **base, agree=np.nan, disagree=np.nan, diff=np.nan, p_value=np.nan,
                status="too_small",
                reason=f"{which} subset has {rows} rows; {spec.label} needs >= {need} ({rule})",
            ))
            continue
        try:
            s_ag = _compare(spec, xa[agree_idx], xb[agree_idx])
            s_dis = _compare(spec, xa[disagree_idx], xb[disagree_idx])
            diff = s_ag - s_dis
            p = null_mean = np.nan
            if n_permutations:
                # One generator per measure, derived from the seed, so adding a measure does not
                # change another measure's permutations.
                rng = np.random.default_rng([seed, i])
                null = np.empty(n_permutations)
                for j in range(n_permutations):
                    perm = rng.permutation(xa.shape[0])
                    ia, idis = perm[:n_ag], perm[n_ag:]
                    null[j] = _compare(spec, xa[ia], xb[ia]) - _compare(spec, xa[idis], xb[idis])
                p = _two_sided_p(null, diff)
                null_mean = float(null.mean())
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
            log.warning("subgroup %s failed: %s", spec.label, err)
            out.append(SubgroupResult(**base, agree=np.nan, disagree=np.nan, diff=np.nan,
                                      p_value=np.nan, status="error",
                                      reason=f"{type(err).__name__}: {err}"))
            continue
        base["n_permutations"] = n_permutations
        out.append(SubgroupResult(**base, agree=s_ag, disagree=s_dis, diff=diff, p_value=p,
                                  status="ok", null_mean=null_mean))
    return out


def results_frame(results: Sequence[SubgroupResult], **keys: object) -> pd.DataFrame:
    """Tidy rows of ``results``, with constant columns ``keys`` (e.g. model_a, model_b) added."""
    rows = [{**keys, **asdict(r)} for r in results]
    for row in rows:
        row["params"] = ",".join(f"{k}={v}" for k, v in sorted(row["params"].items()))
    return pd.DataFrame(rows)
