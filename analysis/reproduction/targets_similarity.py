"""The representational targets of SPEC §8: clean vs inverted-image similarity (2), inverted-
image similarity against epsilon (3) and similarity on the agree/disagree subsets (6).

Each measure gets its own verdict on cross-architecture pairs (the headline) and on
same-architecture pairs across seeds (beside it); debiased linear CKA is the primary measure
(``analysis.reproduction.predictions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.engine.spec import MeasureSpec
from analysis.reproduction.matrices import (by_eps, cell, clean_fn, inversion_untestable,
                                            inverted_fn, models_at, pair_set)
from analysis.reproduction.predictions import SIMILARITY_MEASURES, SUBGROUP_CLOSE, declared
from analysis.reproduction.stats import PairSet, Prediction, estimate
from analysis.reproduction.study import (UNTESTABLE, ModelInfo, ReproConfig, StudyData,
                                         TargetResult)
from analysis.reproduction.subgroups import SubgroupResult, subgroup_similarity
from analysis.reproduction.verdict import Entry, headline, judge, untested

__all__ = ["target2", "target3", "target6", "inverted_contrast", "subgroup_label"]


def target2(study: StudyData, cfg: ReproConfig, e0: float) -> TargetResult:
    """Clean-image similarity among eps=0 models exceeds their inverted-image similarity."""
    group = models_at(study.models, e0)
    d = declared(2)
    figs: dict[str, Any] = {"eps": e0}
    clean: dict[str, tuple[PairSet, list[str]]] = {}
    for spec in SIMILARITY_MEASURES[:2]:  # the clean half is valid on its own: always shown
        fn = clean_fn(study, spec)
        clean[spec.label] = pair_set({"clean": group}, lambda c, a, b: fn(a, b), symmetric=True)
        figs[f"clean {spec.label}"] = {k: estimate(clean[spec.label][0], {"clean": 1}, kind=k,
                                                   level=cfg.level).to_dict()
                                       for k in ("cross", "intra")}
    why = inversion_untestable(study)
    if why:
        return untested(2, UNTESTABLE, "the inverted-image half of this target relies on "
                        "inversion. " + why, figs)
    entries: list[Entry] = []
    for spec in SIMILARITY_MEASURES[:2]:
        inv = inverted_fn(study, "inverted", spec)
        ips, skipped = pair_set({"inverted": group}, lambda c, a, b: inv(a, b), symmetric=False)
        # inverted pairs are ordered; both orders of a pair fall in its architecture pair
        ps = PairSet(symmetric=True, rows=[*clean[spec.label][0].rows, *ips.rows])
        entries += judge(ps, {"clean": 1, "inverted": -1}, spec.label,
                         d.predictions[spec.label], level=cfg.level)
        figs.setdefault("skipped", []).extend(clean[spec.label][1] + skipped)
    return headline(2, entries, figs)


def inverted_contrast(study: StudyData, cfg: ReproConfig, models: Sequence[ModelInfo],
                      e0: float, emax: float, spec: MeasureSpec, *, where: str = "inverted",
                      kinds: Sequence[str] = ("cross", "intra"),
                      label: str | None = None) -> tuple[list[Entry], list[str]]:
    """Target 3's quantity for one measure: inverted-image similarity at emax minus at e0
    (paired cells, ordered pairs), judged against target 3's prediction.

    Returns:
        ``(entries, skipped)``.
    """
    fn = inverted_fn(study, where, spec)
    ps, skipped = pair_set(by_eps(models, (e0, emax)), lambda c, a, b: fn(a, b), symmetric=False)
    pred = declared(3).predictions.get(spec.label) or Prediction(f"eps_max - eps_0 ({spec.label})",
                                                                 +1)
    return judge(ps, {f"eps={emax:g}": 1, f"eps={e0:g}": -1}, label or spec.label, pred,
                 level=cfg.level, kinds=kinds), skipped


def target3(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    """Inverted-image similarity is higher at the largest eps than at eps 0."""
    why = inversion_untestable(study)
    figs: dict[str, Any] = {"inversion_convergence": study.inversion_summary}
    if why:
        return untested(3, UNTESTABLE, why, figs)
    entries: list[Entry] = []
    for spec in SIMILARITY_MEASURES:
        got, skipped = inverted_contrast(study, cfg, study.models, e0, emax, spec)
        entries += got
        if skipped:
            figs.setdefault("skipped", []).extend(skipped)
    note = ("SPEC §8: a null or reversed result on one dataset is an accepted outcome (the paper "
            "reports this as dataset dependent)")
    return headline(3, entries, figs, note=note)


def subgroup_label(spec: MeasureSpec) -> str:
    """A subgroup measure's name in target 6 (RTD is read as -RTD, a similarity)."""
    return "-rtd" if spec.name == "rtd" else spec.label


def _oriented(spec: MeasureSpec, r: SubgroupResult) -> tuple[float, float, float]:
    """(agree, disagree, size-adjusted drop) with higher = more similar (-RTD for RTD)."""
    sign = -1.0 if spec.name == "rtd" else 1.0
    null = r.null_mean if np.isfinite(r.null_mean) else 0.0
    return sign * r.agree, sign * r.disagree, sign * (r.diff - null)


def target6(study: StudyData, cfg: ReproConfig, emax: float) -> TargetResult:
    """Among eps_max models, similarity on the disagree subset stays close to the agree
    subset's, after the permutation null's size effect is taken off."""
    group = models_at(study.models, emax)
    specs = cfg.subgroup_measures
    sets = {subgroup_label(s): {k: PairSet(symmetric=True) for k in ("adjusted", "agree",
                                                                     "disagree")}
            for s in specs}
    notes: list[str] = []
    p_low = {subgroup_label(s): [0, 0] for s in specs}
    for i, a in enumerate(group):
        for j in range(i + 1, len(group)):
            b = group[j]
            res = subgroup_similarity(
                study.clean[a.id]["features"], study.clean[b.id]["features"],
                study.clean[a.id]["logits"], study.clean[b.id]["logits"], measures=specs,
                n_permutations=cfg.n_permutations, seed=cfg.seed + 7919 * i + j)
            for spec, r in zip(specs, res, strict=True):
                lab = subgroup_label(spec)
                if r.status != "ok":
                    notes.append(f"{a.id}/{b.id} {lab}: {r.status} ({r.reason})")
                    continue
                for k, v in zip(("agree", "disagree", "adjusted"), _oriented(spec, r),
                                strict=True):
                    sets[lab][k].add("subsets", cell(a), cell(b), v)
                if np.isfinite(r.p_value):
                    p_low[lab][0] += int(r.p_value < 0.05)
                    p_low[lab][1] += 1
    figs: dict[str, Any] = {"eps": emax, "too_small_or_failed": notes,
                            "measures": [str(s) for s in specs]}
    entries: list[Entry] = []
    for spec in specs:
        lab = subgroup_label(spec)
        pred = Prediction(f"size-adjusted drop ({lab})", -1, SUBGROUP_CLOSE)
        entries += judge(sets[lab]["adjusted"], {"subsets": 1}, lab, pred, level=cfg.level)
        figs[lab] = {k: estimate(sets[lab][k], {"subsets": 1}, level=cfg.level).to_dict()
                     for k in ("agree", "disagree")}
        figs[lab].update({"pairs_p_below_0.05": p_low[lab][0], "pairs_tested": p_low[lab][1]})
    note = (f"{len(notes)} (pair, measure) subsets were too small or failed and are listed in "
            "the figures" if notes else "")
    return headline(6, entries, figs, note=note)
