"""The agreement targets of SPEC §8: agreement against epsilon (4), agreement between the Fort
et al. reference curves (5) and agreement after retraining the linear head (7).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.reproduction.matrices import (accuracy, agreement, by_eps, cell, functional_fn,
                                            input_rows, models_at, pair_set)
from analysis.reproduction.predictions import AGREEMENT_MEASURES, declared
from analysis.reproduction.probes import ProbeResult, fort_agreement
from analysis.reproduction.stats import FAILS, HOLDS, INCONCLUSIVE, Estimate, PairSet, estimate
from analysis.reproduction.study import (TITLES, UNTESTABLE, ModelInfo, ReproConfig, StudyData,
                                         TargetResult)
from analysis.reproduction.verdict import Entry, entry, headline, judge, key_of, untested, why

__all__ = ["target4", "target5", "target7", "agreement_contrast"]


def agreement_contrast(study: StudyData, cfg: ReproConfig, models: Sequence[ModelInfo],
                       e0: float, emax: float, name: str, *,
                       kinds: Sequence[str] = ("cross", "intra")) -> list[Entry]:
    """Target 4's quantity for one functional measure: its value at emax minus at e0 (paired
    cells), judged against target 4's prediction for that measure."""
    fn = functional_fn(study, name)
    ps, _ = pair_set(by_eps(models, (e0, emax)), lambda c, a, b: fn(a, b), symmetric=True)
    return judge(ps, {f"eps={emax:g}": 1, f"eps={e0:g}": -1}, name,
                 declared(4).predictions[name], level=cfg.level, kinds=kinds)


def target4(study: StudyData, cfg: ReproConfig, eps_values: Sequence[float]) -> TargetResult:
    """Prediction agreement among eps_max models is not higher than among eps=0 models (lower,
    as the paper reports); JSDSim and the normalised disagreement beside it; the trend."""
    e0, emax = eps_values[0], eps_values[-1]
    entries: list[Entry] = []
    for name in AGREEMENT_MEASURES:
        entries += agreement_contrast(study, cfg, study.models, e0, emax, name)
    fn = functional_fn(study, "agreement")
    ps, _ = pair_set(by_eps(study.models, eps_values), lambda c, a, b: fn(a, b), symmetric=True)
    trend = [{"eps": e, "measure": "agreement", "kind": k,
              "estimate": estimate(ps, {f"eps={e:g}": 1}, kind=k, level=cfg.level).to_dict()}
             for e in eps_values for k in ("cross", "intra")]
    return headline(4, entries, {"eps": [e0, emax]}, trend=trend)


def _position(study: StudyData, a: str, b: str, tol: float, counts: dict[str, int],
              outside: list[str]) -> float | str:
    """One pair's relative position between the Fort curves, or why it has none; counts the
    pairs within the curves (to one input of resolution, and strictly)."""
    agr = agreement(study, a, b)
    acc_a, acc_b = accuracy(study, a), accuracy(study, b)
    flo, fhi = fort_agreement(acc_a, acc_b, study.num_classes)
    counts["pairs"] += 1
    if not np.isfinite(flo) or not fhi > flo:
        counts["undefined"] += 1
        return (f"bounds undefined for {a}/{b} (accuracies {acc_a:.3f}, {acc_b:.3f}: at or below "
                f"chance 1/{study.num_classes}, or the curves coincide)")
    strict = flo - 1e-9 <= agr <= fhi + 1e-9
    inside = flo - tol - 1e-12 <= agr <= fhi + tol + 1e-12
    counts["pairs_within"] += inside
    counts["pairs_strictly_within"] += strict
    if not inside:
        outside.append(f"{a}/{b}: {agr:.5f} not in [{flo:.5f}, {fhi:.5f}] +- 1/N")
    return (agr - flo) / (fhi - flo)


def _inside(lower: str, upper: str) -> str:
    """An eps group's verdict from its two one-sided verdicts (r > 0 and r < 1)."""
    if FAILS in (lower, upper):
        return FAILS
    return HOLDS if lower == upper == HOLDS else INCONCLUSIVE


def target5(study: StudyData, cfg: ReproConfig, eps_values: Sequence[float]) -> TargetResult:
    """The mean relative position of each eps group's pairs lies between the Fort et al. curves
    (0 = independent errors, 1 = the maximum agreement the two accuracies allow)."""
    d = declared(5)
    lower, upper = d.predictions.values()
    # Agreement moves in steps of one input (1/N) and Fort's minimum disagreement is a model
    # value, not a hard limit: a pair within one input of a curve counts as on it.
    tol = 1.0 / max(input_rows(study, "clean"), 1) if study.clean else 1.0
    figs: dict[str, Any] = {"tolerance": tol}
    entries: list[Entry] = []
    for e in eps_values:
        counts = dict.fromkeys(("pairs", "pairs_within", "pairs_strictly_within", "undefined"), 0)
        outside: list[str] = []
        ps, skipped = pair_set(by_eps(study.models, (e,)), lambda c, a, b: _position(
            study, a, b, tol, counts, outside), symmetric=True)
        for kind in ("cross", "intra"):
            est = estimate(ps, {f"eps={e:g}": 1}, kind=kind, level=cfg.level)
            e_lo, e_hi = entry(f"relative_position eps={e:g}", kind, est, lower), \
                entry(f"relative_position eps={e:g}", kind, est, upper)
            entries.append({**e_lo, "status": _inside(e_lo["status"], e_hi["status"])})
        figs[f"eps={e:g}"] = {**counts, "outside_by_more_than_1/N": outside,
                              "bounds_undefined": skipped}
    if not any(f["pairs"] for k, f in figs.items() if k.startswith("eps=")):
        return untested(5, UNTESTABLE, "no model pairs", figs)
    return _target5_result(entries, figs)


def _target5_result(entries: list[Entry], figs: dict[str, Any]) -> TargetResult:
    """Holds when every eps group is inside [0, 1], does not hold when one lies outside."""
    d = declared(5)
    cross = [e for e in entries if e["kind"] == "cross"]
    status = (FAILS if any(e["status"] == FAILS for e in cross) else
              HOLDS if all(e["status"] == HOLDS for e in cross) else INCONCLUSIVE)
    head = next((e for e in reversed(cross) if e["status"] == status), cross[-1])
    est = Estimate.from_dict(head["estimate"])
    if status == HOLDS:
        said = "every eps group's interval lies inside [0, 1], between the two curves"
    elif status == FAILS:
        said = ("the whole interval lies below 0, under the independent-errors curve"
                if est.hi < 0 else "the whole interval lies above 1, over the maximum-agreement "
                                   "curve")
    else:
        said = why(INCONCLUSIVE, est, d.predictions["relative_position"]).replace(
            "contains 0", "reaches past 0 or 1")
    groups = ", ".join(f"{e['measure'].split()[-1]} {e['status']}" for e in cross)
    undefined = sum(f["undefined"] for k, f in figs.items() if k.startswith("eps="))
    reason = (f"{head['measure']} on cross-architecture pairs: {est.text()}: {said}. "
              f"Per eps group (cross-architecture): {groups}.")
    if undefined:
        reason += (f" {undefined} pair(s) have undefined bounds; they are named in the figures, "
                   "not counted as outside.")
    figs["note"] = ("relative_position: 0 = independent-errors agreement, 1 = maximum agreement "
                    "the two accuracies allow (Fort et al. 2020, App. D); pairs_within allows "
                    "one input (1/N) beyond a curve, pairs_strictly_within none")
    return TargetResult(5, TITLES[5], status, reason, prediction=d.to_dict(), key=key_of(head),
                        measures=entries, figures=figs)


def _probe_pairs(res: ProbeResult, models: dict[str, ModelInfo]) -> PairSet:
    """Probe and original-head agreement of the same pairs, as conditions "probe" / "head"."""
    ps = PairSet(symmetric=True)
    for r in res.pairs.itertuples():
        a, b = models[r.model_a], models[r.model_b]
        ps.add("probe", cell(a), cell(b), r.probe_agreement)
        ps.add("head", cell(a), cell(b), r.head_agreement)
    return ps


def _probe_figures(res: ProbeResult, ps: PairSet, ids: list[str], level: float) -> dict:
    acc_change = [float(res.probe_acc[m].mean() - res.head_acc[m]) for m in ids]
    return {**{f"{c}_agreement {k}": estimate(ps, {c: 1}, kind=k, level=level).to_dict()
               for c in ("probe", "head") for k in ("cross", "intra")},
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
        return untested(7, UNTESTABLE, "probes were not trained")
    models = {m.id: m for m in study.models}
    figs: dict[str, Any] = {}
    entries: list[Entry] = []
    for e in (emax, e0):
        name = f"eps={e:g}"
        if name not in study.probes:
            continue
        ps = _probe_pairs(study.probes[name], models)
        figs[name] = _probe_figures(study.probes[name], ps,
                                    [m.id for m in models_at(study.models, e)], cfg.level)
        if e == emax:
            entries = judge(ps, {"probe": 1, "head": -1}, declared(7).primary,
                            declared(7).prediction, level=cfg.level)
    note = f"mean probe accuracy change {figs[key]['mean_acc_change']:+.4f} (eps={emax:g})"
    return headline(7, entries, figs, note=note)
