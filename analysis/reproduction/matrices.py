"""Pair matrices of the study's models, computed from ``StudyData`` arrays (or taken from
``StudyData.known``, the values ``pairs.parquet`` already holds), and the per-model figures the
targets read: clean accuracy and prediction agreement.

A matrix is ``(M, M)`` float64 over the ids of a group of models, NaN where there is no pair (the
diagonal; the lower triangle is mirrored for symmetric ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from analysis.engine.spec import MeasureSpec, spec_key
from analysis.measures import compare
from analysis.reproduction.stats import Summary, summarise
from analysis.reproduction.study import (
    INVERSION_NOT_DISCRIMINATIVE,
    ModelInfo,
    ReproConfig,
    StudyData,
)

__all__ = ["models_at", "pair_matrix", "known_or", "measure_value", "agreement", "accuracy",
           "inversion_untestable", "clean_matrix", "inverted_matrix", "agreement_summary"]

PairFn = Callable[[str, str], float]


def models_at(models: Sequence[ModelInfo], eps: float) -> list[ModelInfo]:
    """The models trained at ``eps``."""
    return [m for m in models if m.eps == eps]


def pair_matrix(ids: Sequence[str], fn: PairFn, *, symmetric: bool) -> np.ndarray:
    """``(M, M)`` with entry (i, j) = ``fn(ids[i], ids[j])``, NaN on the diagonal."""
    m = len(ids)
    V = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(m):
            if i == j or (symmetric and j < i):
                continue
            V[i, j] = fn(ids[i], ids[j])
            if symmetric:
                V[j, i] = V[i, j]
    return V


def known_or(study: StudyData, where: str, spec: MeasureSpec, compute: PairFn, *,
             either_order: bool) -> PairFn:
    """A pair function that takes ``study.known`` values first and computes the rest."""
    key = spec_key(spec.name, spec.kwargs)

    def fn(a: str, b: str) -> float:
        v = study.known.get((where, key, a, b))
        if v is None and either_order:
            v = study.known.get((where, key, b, a))
        return compute(a, b) if v is None else float(v)

    return fn


def measure_value(spec: MeasureSpec, a: np.ndarray, b: np.ndarray) -> float:
    """The measure of ``spec`` between two models' (N, D) features."""
    return float(compare(spec.name, a, b, **spec.kwargs))


def agreement(study: StudyData, a: str, b: str) -> float:
    """Share of clean inputs on which the two models predict the same class."""
    pa, pb = (study.clean[x]["logits"].argmax(1) for x in (a, b))
    return float((pa == pb).mean())


def accuracy(study: StudyData, mid: str) -> float:
    """The model's clean accuracy on the eval set."""
    c = study.clean[mid]
    return float((c["logits"].argmax(1) == c["labels"]).mean())


def inversion_untestable(study: StudyData) -> str | None:
    """Why inversion cannot be evidence on this study (SPEC §9, or not run); None if it can."""
    if study.dataset in INVERSION_NOT_DISCRIMINATIVE:
        return INVERSION_NOT_DISCRIMINATIVE[study.dataset]
    if study.inverted is None:
        return "inversion was not run for this sweep"
    return None


def clean_matrix(study: StudyData, group: list[ModelInfo], spec: MeasureSpec) -> np.ndarray:
    """The measure between the group's clean features (symmetric)."""
    ids = [m.id for m in group]
    feats = {i: study.clean[i]["features"] for i in ids}
    fn = known_or(study, "clean", spec, lambda a, b: measure_value(spec, feats[a], feats[b]),
                  either_order=True)
    return pair_matrix(ids, fn, symmetric=True)


def inverted_matrix(study: StudyData, where: str, group: list[ModelInfo],
                    spec: MeasureSpec) -> np.ndarray:
    """``where`` is "inverted" or "inverted_alt" (the sensitivity run)."""
    inv = study.inverted if where == "inverted" else study.inverted_alt
    ids = [m.id for m in group]
    # Row model's inverted images: entry (i, j) = measure(f_i(inv_i), f_j(inv_i)); asymmetric.
    fn = known_or(study, where, spec, lambda a, b: measure_value(spec, inv[a][a], inv[a][b]),
                  either_order=False)
    return pair_matrix(ids, fn, symmetric=False)


def agreement_summary(study: StudyData, group: list[ModelInfo], cfg: ReproConfig,
                      salt: int) -> Summary:
    """Mean prediction agreement over the group's pairs, with its model bootstrap."""
    return summarise(pair_matrix([m.id for m in group], lambda a, b: agreement(study, a, b),
                                 symmetric=True), cfg, salt)
