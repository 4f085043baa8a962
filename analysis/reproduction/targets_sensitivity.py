"""SPEC §8 target 8: the verdicts of targets 3 and 4 do not flip under the sensitivity variants.

Each variant re-evaluates target 3 or 4 *per measure* with the same declared prediction, on
cross-architecture pairs: k in {10, 100, 500} and centring on/off for k-NN Jaccard (target 3, as
far as N allows), inversion with the alternative iteration count (target 3, every measure), and
every seed on its own (targets 3 and 4, every measure). A flip is a variant whose verdict is the
opposite of the main verdict of the same target and measure (holds vs does not hold); one
measure's verdict is never compared with another's (SPEC §10).

Verdict: any flip -> does not hold; else, if some variants cannot run -> partially tested (naming
what could not run); else, if no main verdict involved is decisive -> inconclusive (nothing to
flip); else holds.
"""

from __future__ import annotations

from typing import Any

from analysis.engine.spec import MeasureSpec
from analysis.reproduction.matrices import input_rows, inversion_untestable
from analysis.reproduction.predictions import AGREEMENT_MEASURES, SIMILARITY_MEASURES, declared
from analysis.reproduction.stats import FAILS, HOLDS, INCONCLUSIVE, PARTIAL
from analysis.reproduction.study import TITLES, ReproConfig, StudyData, TargetResult
from analysis.reproduction.targets_agreement import agreement_contrast
from analysis.reproduction.targets_similarity import inverted_contrast
from analysis.reproduction.verdict import Entry

__all__ = ["target8"]

KNN_MAIN = SIMILARITY_MEASURES[3]  # knn_jaccard(k=10), centring on: target 3's own setting


def _variant(name: str, target: int, main_status: str | None, e: Entry) -> dict[str, Any]:
    flip = main_status is not None and {main_status, e["status"]} == {HOLDS, FAILS}
    return {"name": name, "target": target, "measure": e["measure"], "status": e["status"],
            "main": main_status, "flip": flip, "estimate": e["estimate"]}


def _main(result: TargetResult | None) -> dict[str, str]:
    """measure -> the main (cross-architecture) verdict of target 3 or 4."""
    if result is None:
        return {}
    return {e["measure"]: e["status"] for e in result.measures if e["kind"] == "cross"}


def _target4_variants(study: StudyData, cfg: ReproConfig, e0: float, emax: float,
                      main: dict[str, str], seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for s in seeds:
        ms = [m for m in study.models if m.seed == s]
        for name in AGREEMENT_MEASURES:
            (e,) = agreement_contrast(study, cfg, ms, e0, emax, name, kinds=("cross",))
            out.append(_variant(f"seed {s} alone (target 4)", 4, main.get(name), e))
    return out


def _target3_variants(study: StudyData, cfg: ReproConfig, e0: float, emax: float,
                      main: dict[str, str], seeds: list[int],
                      not_run: list[str]) -> list[dict[str, Any]]:
    out = []
    n = input_rows(study, "inverted")
    for k in cfg.k_values:
        if k >= n - 1:
            not_run.append(f"knn_jaccard k={k} (target 3): N = {n} inverted images per model, "
                           f"so k = {k} cannot run (k must be < N - 1)")
            continue
        for center in (True, False):
            spec = MeasureSpec("knn_jaccard", {"k": k, "center": center})
            if spec.kwargs == {**KNN_MAIN.kwargs, "center": True}:
                continue  # the main setting itself
            (e,), _ = inverted_contrast(study, cfg, study.models, e0, emax, spec,
                                        kinds=("cross",))
            out.append(_variant(f"k={k}, centring {'on' if center else 'off'} (target 3)", 3,
                                main.get(KNN_MAIN.label), e))
    if study.inverted_alt is None:
        not_run.append("inversion with the alternative iteration count (target 3): not run "
                       "(ReproConfig.inversion_iterations_alt is None)")
    else:
        for spec in SIMILARITY_MEASURES:
            (e,), _ = inverted_contrast(study, cfg, study.models, e0, emax, spec,
                                        where="inverted_alt", kinds=("cross",))
            out.append(_variant(f"inversion {cfg.inversion_iterations_alt} iterations "
                                "(target 3)", 3, main.get(spec.label), e))
    for s in seeds:
        ms = [m for m in study.models if m.seed == s]
        for spec in SIMILARITY_MEASURES:
            (e,), _ = inverted_contrast(study, cfg, ms, e0, emax, spec, kinds=("cross",))
            out.append(_variant(f"seed {s} alone (target 3)", 3, main.get(spec.label), e))
    return out


def target8(study: StudyData, cfg: ReproConfig, e0: float, emax: float, *,
            main: dict[int, TargetResult]) -> TargetResult:
    """The verdicts of targets 3 and 4 under every sensitivity variant, per measure."""
    main3, main4 = _main(main.get(3)), _main(main.get(4))
    seeds = sorted({m.seed for m in study.models})
    not_run: list[str] = []
    if len(seeds) < 2:
        not_run.append(f"each seed alone: the sweep has one seed ({seeds})")
    variants = _target4_variants(study, cfg, e0, emax, main4, seeds if len(seeds) > 1 else [])
    why = inversion_untestable(study)
    if why:
        not_run.append("every target-3 variant (k in "
                       f"{{{', '.join(str(k) for k in cfg.k_values)}}}, centring on/off, "
                       f"inversion {cfg.inversion_iterations} vs {cfg.inversion_iterations_alt} "
                       f"iterations, each seed alone): inversion cannot be tested on this data "
                       f"(see target 3)")
    else:
        variants += _target3_variants(study, cfg, e0, emax, main3,
                                      seeds if len(seeds) > 1 else [], not_run)
    return _result(variants, not_run, main3, main4)


def _result(variants: list[dict[str, Any]], not_run: list[str], main3: dict[str, str],
            main4: dict[str, str]) -> TargetResult:
    flips = [v for v in variants if v["flip"]]
    decisive = [f"target {t} {m}: {s}" for t, mm in ((3, main3), (4, main4))
                for m, s in mm.items() if s in (HOLDS, FAILS)]
    ran = f"{len(variants)} variant{'s' * (len(variants) != 1)}"
    if flips:
        status = FAILS
        reason = f"{len(flips)} of {ran} flip the main verdict: " + "; ".join(
            f"{v['name']} {v['measure']}: {v['status']} (main: {v['main']})" for v in flips)
    elif not_run:
        status = PARTIAL
        reason = f"no flip among the {ran} that ran; could not run: " + "; ".join(not_run)
    elif not decisive:
        status = INCONCLUSIVE
        reason = (f"no main verdict of targets 3 or 4 is decisive, so none of the {ran} can flip "
                  "one")
    else:
        status = HOLDS
        reason = f"no flip among {ran} (decisive main verdicts: {'; '.join(decisive)})"
    if status == PARTIAL and variants and not decisive:
        reason += ("; every main verdict involved is inconclusive, so a flip was not possible "
                   "(holds vs does not hold needs a decisive main verdict)")
    figs = {"variants_run": len(variants), "flips": len(flips), "not_run": not_run,
            "main_verdicts": {"target 3": main3, "target 4": main4}}
    return TargetResult(8, TITLES[8], status, reason, prediction=declared(8).to_dict(),
                        variants=variants, figures=figs)
