"""SPEC §8's eight reproduction targets, evaluated on arrays: ``evaluate_targets(study)``.

Pure functions: a ``StudyData`` (each model's clean features and logits, inverted-image features,
probe results, robust accuracies) goes in, eight ``TargetResult`` verdicts with their figures
come out. No models, no MLflow, no files: ``analysis.reproduction.run`` gathers the arrays and
``analysis.reproduction.writer`` writes the report. Target 1 (accuracy sanity) is here; the
representational targets 2, 3, 6 are in ``targets_similarity``, the agreement targets 4, 5, 7 in
``targets_agreement``, the sensitivity checks (8) in ``targets_sensitivity``; the statistics in
``stats`` and the declared predictions in ``predictions``.

Pair values already computed elsewhere (the analysis table ``pairs.parquet``) can be handed in
as ``StudyData.known``; a value found there is used instead of being recomputed.
"""

from __future__ import annotations

from typing import Any

from analysis.reproduction.matrices import accuracy
from analysis.reproduction.predictions import declared
from analysis.reproduction.stats import Estimate, decide, seed_interval
from analysis.reproduction.study import (FAILS, HOLDS, INCONCLUSIVE, TITLES, UNTESTABLE,
                                         ReproConfig, StudyData, TargetResult)
from analysis.reproduction.targets_agreement import target4, target5, target7
from analysis.reproduction.targets_sensitivity import target8
from analysis.reproduction.targets_similarity import target2, target3, target6
from analysis.reproduction.verdict import untested

__all__ = ["evaluate_targets", "target1"]


def evaluate_targets(study: StudyData, *, config: ReproConfig | None = None) -> list[TargetResult]:
    """Evaluate SPEC §8's targets 1-8 on ``study`` (pure: arrays in, verdicts out).

    Args:
        study: the sweep's arrays (one dataset and threat model).
        config: statistics and sensitivity settings.

    Returns:
        Eight TargetResults, numbered 1-8.
    """
    cfg = config or ReproConfig()
    eps_values = sorted({m.eps for m in study.models})
    if len(eps_values) < 2:
        reason = f"the sweep has one epsilon ({eps_values}); every target compares epsilons"
        return [untested(n, UNTESTABLE, reason) for n in TITLES]
    e0, emax = eps_values[0], eps_values[-1]
    results = [
        target1(study, cfg),
        target2(study, cfg, e0),
        target3(study, cfg, e0, emax),
        target4(study, cfg, eps_values),
        target5(study, cfg, eps_values),
        target6(study, cfg, emax),
        target7(study, cfg, e0, emax),
    ]
    results.append(target8(study, cfg, e0, emax, main={r.number: r for r in results}))
    return results


def _per_seed(study: StudyData, arch: str, eps: float, robust: bool) -> dict[int, float]:
    """seed -> the architecture's clean accuracy (or robust accuracy at eps_max) at ``eps``."""
    out = {}
    for m in study.models:
        if m.arch == arch and m.eps == eps:
            if not robust:
                out[m.seed] = accuracy(study, m.id)
            elif m.id in study.robust_acc:
                out[m.seed] = float(study.robust_acc[m.id])
    return out


def _change(study: StudyData, arch: str, a: float, b: float, robust: bool,
            level: float) -> Estimate:
    """Seed-paired change of accuracy from eps ``a`` to ``b`` (seeds present at both)."""
    va, vb = _per_seed(study, arch, a, robust), _per_seed(study, arch, b, robust)
    return seed_interval([vb[s] - va[s] for s in sorted(set(va) & set(vb))], level=level)


Found = list[tuple[str, dict[str, Any]]]  # (what, {"status", "estimate"})


def _arch_verdict(study: StudyData, arch: str, eps_list: list[float], cfg: ReproConfig,
                  rows: dict[str, Any]) -> tuple[Found, list[str], Found]:
    """(violations, open questions, end-to-end estimates) of one architecture."""
    d = declared(1)
    bad: Found = []
    open_: list[str] = []
    ends: Found = []
    for what, robust in (("clean_acc", False), ("robust_acc", True)):
        pred = d.predictions[what]
        if robust and not any(_per_seed(study, arch, e, True) for e in eps_list):
            open_.append(f"{arch}: no robust accuracy measured")
            continue
        steps = []
        for a, b in zip(eps_list, eps_list[1:]):
            est = _change(study, arch, a, b, robust, cfg.level)
            steps.append({"from": a, "to": b, **est.to_dict()})
            if decide(est, pred) == FAILS:  # a step significantly against the prediction
                bad.append((f"{arch}: {what} {'falls' if robust else 'rises'} significantly from "
                            f"eps {a:g} to {b:g} ({est.text()})",
                            {"status": FAILS, "estimate": est.to_dict()}))
        end = _change(study, arch, eps_list[0], eps_list[-1], robust, cfg.level)
        rows[arch][f"{what}_steps"] = steps
        rows[arch][f"{what}_end_to_end"] = end.to_dict()
        ends.append((f"{arch}: {what} eps {eps_list[0]:g} -> {eps_list[-1]:g}",
                     {"status": decide(end, pred), "estimate": end.to_dict()}))
        if not end.has_interval:
            open_.append(f"{arch}: {what} end-to-end has no seed interval ({end.note})")
        elif decide(end, pred) != HOLDS:
            open_.append(f"{arch}: {what} end-to-end change {end.text()} is not wholly "
                         f"{'above' if robust else 'below'} 0")
    return bad, open_, ends


def target1(study: StudyData, cfg: ReproConfig) -> TargetResult:
    """Per architecture, clean accuracy falls and robust accuracy at eps_max rises with eps,
    judged with seed intervals (a wobble inside the seed noise is "monotone within noise")."""
    if not study.robust_acc:
        return untested(1, UNTESTABLE, "no robust accuracies were measured")
    rows: dict[str, Any] = {}
    bad: Found = []
    open_: list[str] = []
    ends: Found = []
    for arch in sorted({m.arch for m in study.models}):
        eps_list = sorted({m.eps for m in study.models if m.arch == arch})
        rows[arch] = {"eps": eps_list,
                      "clean_acc": [_per_seed(study, arch, e, False) for e in eps_list],
                      "robust_acc_at_eps_max": [_per_seed(study, arch, e, True)
                                                for e in eps_list]}
        b, o, e = _arch_verdict(study, arch, eps_list, cfg, rows)
        bad, open_, ends = bad + b, open_ + o, ends + e
    if bad:
        status, reason, pick = FAILS, "; ".join(t for t, _ in bad), bad[0]
    elif open_:
        status, reason = INCONCLUSIVE, "not shown for every architecture: " + "; ".join(open_)
        pick = _weakest(ends)
    else:
        status, pick = HOLDS, _weakest(ends)
        reason = ("for every architecture clean accuracy falls and robust accuracy at the largest "
                  "eps rises from eps_0 to eps_max (seed intervals wholly on the predicted side), "
                  "and no step goes the other way beyond the seed noise (monotone within noise)")
    key = {"measure": pick[0], "kind": "seeds", **pick[1]["estimate"]} if pick else None
    measures = [{"measure": n, "kind": "seeds", **v} for n, v in ends]
    return TargetResult(1, TITLES[1], status, reason, prediction=declared(1).to_dict(), key=key,
                        measures=measures, figures=rows)


def _weakest(ends: Found) -> tuple[str, dict[str, Any]] | None:
    """The end-to-end estimate closest to (or across) its boundary: what the verdict rests on."""
    def slack(x: tuple[str, dict[str, Any]]) -> float:
        ci = x[1]["estimate"]["ci"]
        if not ci:
            return float("-inf")
        return ci[0] if "robust_acc" in x[0] else -ci[1]
    return min(ends, key=slack) if ends else None
