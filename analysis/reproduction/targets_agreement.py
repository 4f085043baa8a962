"""The agreement targets of SPEC §8: agreement against epsilon (4), agreement between the Fort
et al. reference curves (5) and agreement after retraining the linear head (7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.reproduction.matrices import accuracy, agreement, agreement_summary, models_at
from analysis.reproduction.probes import ProbeResult, fort_agreement
from analysis.reproduction.stats import difference, summarise, verdict
from analysis.reproduction.study import (FAILS, HOLDS, TITLES, UNTESTABLE, ReproConfig, StudyData,
                                         TargetResult)

__all__ = ["target4", "target5", "target7"]


def target4(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    """Prediction agreement among eps_max models is not higher than among eps=0 models."""
    hi = agreement_summary(study, models_at(study.models, emax), cfg, 51)
    lo = agreement_summary(study, models_at(study.models, e0), cfg, 52)
    d = difference(hi, lo)
    figs = {f"agreement eps={emax:g}": hi[0], f"agreement eps={e0:g}": lo[0], "difference": d}
    if d["ci95"] is None:
        return TargetResult(4, TITLES[4], UNTESTABLE, "a group has fewer than two models", figs)
    lo_ci, hi_ci = d["ci95"]
    txt = f"robust minus standard agreement {d['mean']:+.4f}, 95% CI [{lo_ci:+.4f}, {hi_ci:+.4f}]"
    if lo_ci > 0:
        return TargetResult(4, TITLES[4], FAILS, f"agreement is higher among robust models: {txt}",
                            figs)
    extra = ("lower among robust models, as the paper reports" if hi_ci < 0 else
             "not significantly different")
    return TargetResult(4, TITLES[4], HOLDS, f"agreement does not rise with eps ({extra}): {txt}",
                        figs)


def target5(study: StudyData, cfg: ReproConfig, eps_values: list[float]) -> TargetResult:
    """Every pair's agreement lies between the Fort et al. curves of its two accuracies."""
    figs: dict[str, Any] = {}
    outside, total, edge = [], 0, 0
    # Agreement moves in steps of one input (1/N), and Fort's minimum disagreement is a model
    # value, not a hard limit (it can sit a hair above |acc_a - acc_b|): a pair within one
    # input of a curve counts as on it, and is reported as such.
    n_inputs = next(iter(study.clean.values()))["labels"].size if study.clean else 1
    tol = 1.0 / max(n_inputs, 1)
    for k, e in enumerate(eps_values):
        group = models_at(study.models, e)
        ids = [m.id for m in group]
        pos = np.full((len(ids), len(ids)), np.nan)
        n_in = n_strict = n = 0
        for i, a in enumerate(ids):
            for j in range(i + 1, len(ids)):
                b = ids[j]
                agr = agreement(study, a, b)
                flo, fhi = fort_agreement(accuracy(study, a), accuracy(study, b),
                                          study.num_classes)
                n += 1
                strict = flo - 1e-9 <= agr <= fhi + 1e-9
                inside = flo - tol - 1e-12 <= agr <= fhi + tol + 1e-12
                n_in += inside
                n_strict += strict
                if not inside:
                    outside.append(f"{a}/{b} at eps={e:g}: {agr:.5f} not in [{flo:.5f}, "
                                   f"{fhi:.5f}] +- 1/N")
                pos[i, j] = pos[j, i] = (agr - flo) / (fhi - flo) if fhi > flo else np.nan
        figs[f"eps={e:g}"] = {"pairs_within": n_in, "pairs_strictly_within": n_strict,
                              "pairs": n, "relative_position": summarise(pos, cfg, 60 + k)[0]}
        total += n
        edge += n_in - n_strict
    figs["tolerance"] = tol
    figs["note"] = ("relative_position: 0 = independent-errors agreement, 1 = maximum agreement "
                    "the two accuracies allow (Fort et al. 2020, App. D); pairs_within allows "
                    "one input (1/N) beyond a curve, pairs_strictly_within none")
    if total == 0:
        return TargetResult(5, TITLES[5], UNTESTABLE, "no model pairs", figs)
    if outside:
        return TargetResult(5, TITLES[5], FAILS, f"{len(outside)} of {total} pairs outside the "
                            "curves by more than one input: " + "; ".join(outside[:5]), figs)
    why = f"all {total} pairs lie between the curves"
    if edge:
        why += (f" ({edge} of them beyond a curve by less than one input, 1/N = {tol:.5f}: "
                "at the curve within the resolution of N inputs)")
    return TargetResult(5, TITLES[5], HOLDS, why, figs)


def _probe_summary(res: ProbeResult, ids: list[str], cfg: ReproConfig, salt: int):
    """Probe vs original-head agreement of one epsilon's backbones, with their accuracies."""
    pos = {m: i for i, m in enumerate(ids)}
    P = np.full((len(ids), len(ids)), np.nan)
    H = P.copy()
    for r in res.pairs.itertuples():
        i, j = pos[r.model_a], pos[r.model_b]
        P[i, j] = P[j, i] = r.probe_agreement
        H[i, j] = H[j, i] = r.head_agreement
    p, h = summarise(P, cfg, salt), summarise(H, cfg, salt + 1)
    acc_change = [float(res.probe_acc[m].mean() - res.head_acc[m]) for m in ids]
    return {"probe_agreement": p[0], "head_agreement": h[0], "difference": difference(p, h),
            "probe_acc": {m: float(res.probe_acc[m].mean()) for m in ids},
            "head_acc": res.head_acc, "mean_acc_change": float(np.mean(acc_change)),
            "fort_from_probe_acc": res.pairs[["model_a", "model_b", "probe_agreement",
                                              "fort_lower", "fort_upper"]].to_dict("records"),
            "eval_inputs": int(res.eval_ids.size), "probes_per_model": res.config.num_probes}


def target7(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    """Retrained linear heads of eps_max backbones agree more than the original heads
    (held-out inputs)."""
    key = f"eps={emax:g}"
    if key not in study.probes:
        return TargetResult(7, TITLES[7], UNTESTABLE, "probes were not trained", {})
    figs: dict[str, Any] = {}
    for k, e in enumerate((emax, e0)):
        name = f"eps={e:g}"
        if name in study.probes:
            ids = [m.id for m in models_at(study.models, e)]
            figs[name] = _probe_summary(study.probes[name], ids, cfg, 100 + 10 * k)
    d = figs[key]["difference"]
    v = verdict(7, figs, d, f"retrained heads of eps={emax:g} backbones agree more than the "
                f"original heads on held-out inputs", expect=+1)
    v.reason += f"; mean probe accuracy change {figs[key]['mean_acc_change']:+.4f}"
    return v
