"""Pair values of the study's models, gathered into ``PairSet``s (SPEC §10), and the per-model
figures the targets read (clean accuracy).

A pair value is computed from ``StudyData`` arrays, or taken from ``StudyData.known`` (the values
``pairs.parquet`` already holds), and remembered in ``StudyData.computed`` so the sensitivity
variants of target 8 reuse the main targets' values. A value that cannot be computed (an input
below the measure's meaningful N, a constant representation) is not a silent NaN: its one-line
reason comes back beside the PairSet and the target reports it.

Every model is a cell ``(arch, seed)`` of the grid; a condition (``"eps=0.1"``, ``"clean"``,
``"probe"``, ...) holds the pairs among one group of models, so the same cells appear in every
condition and a contrast between conditions is paired.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from analysis.engine.spec import MeasureSpec, spec_key
from analysis.measures import MeasureInputError, compare
from analysis.reproduction.stats import PairSet
from analysis.reproduction.study import INVERSION_NOT_DISCRIMINATIVE, ModelInfo, StudyData

__all__ = ["PairFn", "cell", "models_at", "by_eps", "pair_set", "accuracy", "agreement",
           "inversion_untestable", "clean_fn", "inverted_fn", "functional_fn", "input_rows"]

#: ``fn(id_a, id_b)`` -> the pair's value, or the reason it has none.
PairFn = Callable[[str, str], "float | str"]


def cell(m: ModelInfo) -> tuple[str, int]:
    """The model's cell of the grid: (architecture, seed)."""
    return (m.arch, m.seed)


def models_at(models: Sequence[ModelInfo], eps: float) -> list[ModelInfo]:
    """The models trained at ``eps``."""
    return [m for m in models if m.eps == eps]


def by_eps(models: Sequence[ModelInfo], eps_values: Sequence[float]) -> dict[str, list[ModelInfo]]:
    """Condition ``"eps=<e>"`` -> the models trained at e."""
    return {f"eps={e:g}": models_at(models, e) for e in eps_values}


def pair_set(conditions: Mapping[Hashable, Sequence[ModelInfo]],
             fn: Callable[[Hashable, str, str], float | str], *,
             symmetric: bool) -> tuple[PairSet, list[str]]:
    """The PairSet of ``fn`` over every pair of models within each condition.

    Args:
        conditions: condition -> its models (at most one model per cell).
        fn: ``fn(condition, id_a, id_b)`` -> value, or a string saying why there is none.
        symmetric: unordered pairs (one value per pair) or ordered ones (both orders).

    Returns:
        ``(pairs, skipped)``: skipped = ``"<reason> (<n> pairs)"`` per distinct reason.
    """
    ps, why = PairSet(symmetric=symmetric), Counter()
    for cond, group in conditions.items():
        for i, a in enumerate(group):
            for j, b in enumerate(group):
                if i == j or (symmetric and j < i):
                    continue
                v = fn(cond, a.id, b.id)
                if isinstance(v, str):
                    why[f"{cond}: {v}"] += 1
                else:
                    ps.add(cond, cell(a), cell(b), v)
    return ps, [f"{r} ({n} pair{'s' * (n > 1)})" for r, n in why.items()]


def accuracy(study: StudyData, mid: str) -> float:
    """The model's clean accuracy on the eval set."""
    c = study.clean[mid]
    return float((c["logits"].argmax(1) == c["labels"]).mean())


def agreement(study: StudyData, a: str, b: str) -> float:
    """Share of clean inputs on which the two models predict the same class."""
    pa, pb = (study.clean[x]["logits"].argmax(1) for x in (a, b))
    return float((pa == pb).mean())


def inversion_untestable(study: StudyData) -> str | None:
    """Why inversion cannot be evidence on this study (SPEC §9, or not run); None if it can."""
    if study.dataset in INVERSION_NOT_DISCRIMINATIVE:
        return INVERSION_NOT_DISCRIMINATIVE[study.dataset]
    if study.inverted is None:
        return "inversion was not run for this sweep"
    return None


def input_rows(study: StudyData, where: str) -> int:
    """N of an input set: eval inputs (``clean``) or inverted images per model."""
    if where == "clean":
        return int(next(iter(study.clean.values()))["labels"].size)
    inv = study.inverted if where == "inverted" else study.inverted_alt
    return int(next(iter(next(iter(inv.values())).values())).shape[0]) if inv else 0


def _remembered(study: StudyData, where: str, key: str, compute: Callable[[str, str], float], *,
                either_order: bool) -> PairFn:
    """A pair function over ``study.known`` first, then ``study.computed``, then ``compute``."""

    def fn(a: str, b: str) -> float | str:
        for table in (study.known, study.computed):
            v = table.get((where, key, a, b))
            if v is None and either_order:
                v = table.get((where, key, b, a))
            if v is not None:
                return v if isinstance(v, str) else float(v)
        try:
            v = float(compute(a, b))
        except MeasureInputError as err:  # too few rows, a constant input: named, not NaN
            v = str(err)
        study.computed[(where, key, a, b)] = v
        return v

    return fn


def clean_fn(study: StudyData, spec: MeasureSpec) -> PairFn:
    """A representational measure between two models' clean features (symmetric)."""
    feats = {i: c["features"] for i, c in study.clean.items()}
    return _remembered(study, "clean", spec_key(spec.name, spec.kwargs),
                       lambda a, b: compare(spec.name, feats[a], feats[b], **spec.kwargs),
                       either_order=True)


def inverted_fn(study: StudyData, where: str, spec: MeasureSpec) -> PairFn:
    """``where`` is "inverted" or "inverted_alt" (the sensitivity run). Ordered: the value of
    (a, b) is measure(f_a(inv_a), f_b(inv_a)), on row model a's inverted images."""
    inv = study.inverted if where == "inverted" else study.inverted_alt
    return _remembered(study, where, spec_key(spec.name, spec.kwargs),
                       lambda a, b: compare(spec.name, inv[a][a], inv[a][b], **spec.kwargs),
                       either_order=False)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _functional(study: StudyData, name: str, a: str, b: str) -> float:
    c = study.clean
    if name == "agreement":
        return agreement(study, a, b)
    if name == "jsd_sim":
        return compare(name, _softmax(c[a]["logits"].astype(np.float64)),
                       _softmax(c[b]["logits"].astype(np.float64)))
    return compare(name, c[a]["logits"].argmax(1), c[b]["logits"].argmax(1),
                   labels=c[a]["labels"])


def functional_fn(study: StudyData, name: str) -> PairFn:
    """A functional measure between two models on the clean inputs: ``agreement``, ``jsd_sim``
    (softmax of the logits) or ``normalized_disagreement`` (with the labels)."""
    return _remembered(study, "clean", f"{name}:functional",
                       lambda a, b: _functional(study, name, a, b), either_order=True)
