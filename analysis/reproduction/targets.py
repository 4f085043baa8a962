"""SPEC §8's eight reproduction targets, evaluated on arrays: ``evaluate_targets(study)``.

Pure functions: a ``StudyData`` (each model's clean features and logits, inverted-image features,
probe results, robust accuracies) goes in, eight ``TargetResult`` verdicts with their figures
come out. No models, no MLflow, no files: ``analysis.reproduction.run`` gathers the arrays and
``analysis.reproduction.writer`` writes the report. Targets 1 (accuracy sanity) and 8
(sensitivity) are here; the representational targets 2, 3, 6 are in ``targets_similarity``, the
agreement targets 4, 5, 7 in ``targets_agreement``; the statistics in ``stats``.

Pair values already computed elsewhere (the analysis table ``pairs.parquet``) can be handed in
as ``StudyData.known``; a matrix entry found there is used instead of being recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from analysis.engine.spec import MeasureSpec
from analysis.reproduction.matrices import (accuracy, agreement_summary, inversion_untestable,
                                            inverted_matrix, models_at)
from analysis.reproduction.stats import order_sign, seed_stats, summarise
from analysis.reproduction.study import (FAILS, HOLDS, TITLES, UNTESTABLE, ReproConfig, StudyData,
                                         TargetResult)
from analysis.reproduction.targets_agreement import target4, target5, target7
from analysis.reproduction.targets_similarity import target2, target3, target6

__all__ = ["evaluate_targets", "target1", "target8"]


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
        return [TargetResult(n, TITLES[n], UNTESTABLE, reason, {}) for n in TITLES]
    return [
        target1(study, cfg),
        target2(study, cfg, eps_values[0]),
        target3(study, cfg, eps_values[0], eps_values[-1]),
        target4(study, cfg, eps_values[0], eps_values[-1]),
        target5(study, cfg, eps_values),
        target6(study, cfg, eps_values[-1]),
        target7(study, cfg, eps_values[0], eps_values[-1]),
        target8(study, cfg, eps_values[0], eps_values[-1]),
    ]


def target1(study: StudyData, cfg: ReproConfig) -> TargetResult:
    """Per architecture, clean accuracy falls and robust accuracy at eps_max rises with eps."""
    rows, bad = {}, []
    for ai, arch in enumerate(sorted({m.arch for m in study.models})):
        eps_list = sorted({m.eps for m in study.models if m.arch == arch})
        clean, robust = [], []
        for ei, e in enumerate(eps_list):
            ms = [m for m in study.models if m.arch == arch and m.eps == e]
            clean.append(seed_stats([accuracy(study, m.id) for m in ms], cfg, 1000 * ai + ei))
            rob = [study.robust_acc[m.id] for m in ms if m.id in study.robust_acc]
            robust.append(seed_stats(rob, cfg, 1000 * ai + ei + 500) if rob else None)
        rows[arch] = {"eps": eps_list, "clean_acc": clean, "robust_acc_at_eps_max": robust}
        c = [x["mean"] for x in clean]
        r = [x["mean"] for x in robust if x is not None]
        if any(b > a for a, b in zip(c, c[1:])):
            bad.append(f"{arch}: clean accuracy rises with eps ({_fmt_seq(c)})")
        if len(r) == len(eps_list) and any(b < a for a, b in zip(r, r[1:])):
            bad.append(f"{arch}: robust accuracy at eps_max falls with eps ({_fmt_seq(r)})")
    if not study.robust_acc:
        return TargetResult(1, TITLES[1], UNTESTABLE, "no robust accuracies were measured", rows)
    if bad:
        return TargetResult(1, TITLES[1], FAILS, "; ".join(bad), rows)
    return TargetResult(1, TITLES[1], HOLDS, "for every architecture clean accuracy is "
                        "non-increasing and robust accuracy at the largest eps non-decreasing in "
                        "the training eps (seed means)", rows)


def _fmt_seq(v: Sequence[float]) -> str:
    return " -> ".join(f"{x:.3f}" for x in v)


def target8(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    """The orderings of targets 4 (per seed) and 3 (per k, centering, iterations) do not flip."""
    checks: dict[str, Any] = {}
    flips: list[str] = []
    # Target 4's ordering, separately within each seed.
    ref = order_sign(agreement_summary(study, models_at(study.models, emax), cfg, 0),
                     agreement_summary(study, models_at(study.models, e0), cfg, 0))
    per_seed = {}
    for s in sorted({m.seed for m in study.models}):
        ms = [m for m in study.models if m.seed == s]
        sign = order_sign(agreement_summary(study, models_at(ms, emax), cfg, 0),
                          agreement_summary(study, models_at(ms, e0), cfg, 0))
        per_seed[f"seed={s}"] = sign
        if sign is not None and ref is not None and sign != ref:
            flips.append(f"target 4 ordering flips for seed {s}")
    tested_seed = [v for v in per_seed.values() if v is not None]
    checks["target4_sign_all_seeds"] = ref
    checks["target4_sign_per_seed"] = per_seed
    if len(tested_seed) < 2:
        checks["target4_seed_check"] = "needs >= 2 seeds with >= 2 models at both eps"
    why = inversion_untestable(study)
    if why:
        checks["target3_checks"] = f"{UNTESTABLE}: {why}"
    else:
        checks["target3_signs"] = signs = _target3_signs(study, cfg, e0, emax)
        got = {v for v in signs.values() if isinstance(v, int)}
        if len(got) > 1:
            flips.append(f"target 3 ordering flips across k / centering / iterations: {signs}")
    testable = len(tested_seed) >= 2 or not why
    if flips:
        return TargetResult(8, TITLES[8], FAILS, "; ".join(flips), checks)
    if not testable:
        return TargetResult(8, TITLES[8], UNTESTABLE, "fewer than two seeds, and the inversion "
                            "checks cannot run on this data", checks)
    scope = "seed check of target 4" + ("" if why else ", k / centering / iterations of target 3")
    note = "" if not why else " (k / centering / iteration checks of target 3 cannot be tested " \
                              "on this data; see target 3)"
    return TargetResult(8, TITLES[8], HOLDS, f"no ordering flips ({scope}){note}", checks)


def _target3_signs(study: StudyData, cfg: ReproConfig, e0: float,
                   emax: float) -> dict[str, int | str | None]:
    """Sign of target 3's eps_max - eps_0 difference per k-NN k and centering, and per
    inversion run (main, alt)."""
    n = next(iter(study.inverted.values()))
    n_rows = next(iter(n.values())).shape[0]
    high, low = models_at(study.models, emax), models_at(study.models, e0)
    signs: dict[str, int | str | None] = {}
    for k in cfg.k_values:
        for center in (True, False):
            name = f"knn_jaccard(k={k},center={center})"
            if k >= n_rows - 1:
                signs[name] = f"skipped: k >= N - 1 = {n_rows - 1}"
                continue
            spec = MeasureSpec("knn_jaccard", {"k": k, "center": center})
            hi, lo = (inverted_matrix(study, "inverted", g, spec) for g in (high, low))
            signs[name] = order_sign(summarise(hi, cfg, 0), summarise(lo, cfg, 0))
    if study.inverted_alt is not None:
        cka = MeasureSpec("linear_cka")
        for tag, where in (("main", "inverted"), ("alt", "inverted_alt")):
            signs[f"linear_cka iterations={tag}"] = order_sign(
                summarise(inverted_matrix(study, where, high, cka), cfg, 0),
                summarise(inverted_matrix(study, where, low, cka), cfg, 0))
    return signs
