"""The representational targets of SPEC §8: clean vs inverted-image similarity (2), inverted-
image similarity against epsilon (3) and similarity on the agree/disagree subsets (6).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.engine.spec import MeasureSpec
from analysis.reproduction.matrices import (clean_matrix, inversion_untestable, inverted_matrix,
                                            models_at)
from analysis.reproduction.stats import difference, summarise, verdict
from analysis.reproduction.study import (FAILS, HOLDS, REP_MEASURES, TITLES, UNTESTABLE,
                                         ReproConfig, StudyData, TargetResult)
from analysis.reproduction.subgroups import subgroup_similarity

__all__ = ["target2", "target3", "target6"]


def target2(study: StudyData, cfg: ReproConfig, e0: float) -> TargetResult:
    """Clean-image linear CKA among eps=0 models exceeds their inverted-image CKA."""
    group = models_at(study.models, e0)
    cka = MeasureSpec("linear_cka")
    clean = summarise(clean_matrix(study, group, cka), cfg, 21)
    figs: dict[str, Any] = {"eps": e0, "clean_linear_cka": clean[0]}
    why = inversion_untestable(study)
    if why:
        return TargetResult(2, TITLES[2], UNTESTABLE, "the inverted-image half of this target "
                            "relies on inversion. " + why, figs)
    inv = summarise(inverted_matrix(study, "inverted", group, cka), cfg, 22)
    figs["inverted_linear_cka"] = inv[0]
    figs["clean_minus_inverted"] = d = difference(clean, inv)
    return verdict(2, figs, d, "clean-image CKA among eps=0 models exceeds their inverted-image "
                   "CKA", expect=+1)


def target3(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    """Inverted-image similarity is higher at the largest eps than at eps 0, for every measure."""
    why = inversion_untestable(study)
    figs: dict[str, Any] = {"inversion_convergence": study.inversion_summary}
    if why:
        return TargetResult(3, TITLES[3], UNTESTABLE, why, figs)
    verdicts = []
    high, low = models_at(study.models, emax), models_at(study.models, e0)
    for i, spec in enumerate(REP_MEASURES):
        hi = summarise(inverted_matrix(study, "inverted", high, spec), cfg, 30 + i)
        lo = summarise(inverted_matrix(study, "inverted", low, spec), cfg, 40 + i)
        d = difference(hi, lo)
        figs[spec.label] = {f"eps={emax:g}": hi[0], f"eps={e0:g}": lo[0], "difference": d}
        verdicts.append(verdict(3, {}, d, f"inverted {spec.label} is higher at eps={emax:g} "
                                f"than at eps={e0:g}", expect=+1))
    status = HOLDS if all(v.status == HOLDS for v in verdicts) else (
        UNTESTABLE if all(v.status == UNTESTABLE for v in verdicts) else FAILS)
    return TargetResult(3, TITLES[3], status, "; ".join(v.reason for v in verdicts), figs)


def target6(study: StudyData, cfg: ReproConfig, emax: float) -> TargetResult:
    """Among eps_max models, similarity on the disagree subset stays close to the agree
    subset's, after the permutation null's size effect is taken off."""
    group = models_at(study.models, emax)
    ids = [m.id for m in group]
    per_measure: dict[str, dict[str, np.ndarray]] = {
        s.label: {k: np.full((len(ids), len(ids)), np.nan)
                  for k in ("agree", "disagree", "adjusted", "p")} for s in cfg.subgroup_measures}
    notes: list[str] = []
    for i, a in enumerate(ids):
        for j in range(i + 1, len(ids)):
            b = ids[j]
            res = subgroup_similarity(
                study.clean[a]["features"], study.clean[b]["features"],
                study.clean[a]["logits"], study.clean[b]["logits"],
                measures=cfg.subgroup_measures, n_permutations=cfg.n_permutations,
                seed=cfg.seed + 7919 * i + j)
            for spec, r in zip(cfg.subgroup_measures, res):
                if r.status != "ok":
                    notes.append(f"{a}/{b} {spec.label}: {r.status} ({r.reason})")
                    continue
                M = per_measure[spec.label]
                M["agree"][i, j] = M["agree"][j, i] = r.agree
                M["disagree"][i, j] = M["disagree"][j, i] = r.disagree
                adj = r.diff - (r.null_mean if np.isfinite(r.null_mean) else 0.0)
                M["adjusted"][i, j] = M["adjusted"][j, i] = adj
                M["p"][i, j] = M["p"][j, i] = r.p_value
    figs: dict[str, Any] = {"eps": emax, "skipped": notes}
    tested, failed = [], []
    for k, spec in enumerate(cfg.subgroup_measures):
        M = per_measure[spec.label]
        adj = summarise(M["adjusted"], cfg, 70 + k)
        p = M["p"][np.triu_indices(len(ids), 1)]
        p = p[~np.isnan(p)]
        figs[spec.label] = {"agree": summarise(M["agree"], cfg, 80 + k)[0],
                            "disagree": summarise(M["disagree"], cfg, 90 + k)[0],
                            "size_adjusted_drop": adj[0],
                            "pairs_p_below_0.05": int((p < 0.05).sum()),
                            "pairs_tested": int(p.size)}
        if adj[0]["ci95"] is None:
            continue
        tested.append(spec.label)
        if adj[0]["ci95"][1] > cfg.subgroup_close:
            failed.append(f"{spec.label} drops by {adj[0]['mean']:.3f} (95% CI upper "
                          f"{adj[0]['ci95'][1]:.3f} > {cfg.subgroup_close})")
    if not tested:
        return TargetResult(6, TITLES[6], UNTESTABLE, "no pair had agree and disagree subsets "
                            "large enough for any measure", figs)
    if failed:
        return TargetResult(6, TITLES[6], FAILS, "disagree-subset similarity is clearly lower: "
                            + "; ".join(failed), figs)
    return TargetResult(6, TITLES[6], HOLDS, f"disagree-subset similarity stays within "
                        f"{cfg.subgroup_close} of the agree subset (size-adjusted, 95% CI) for "
                        f"{', '.join(tested)}", figs)
