"""SPEC §8's eight reproduction targets, evaluated on arrays: ``evaluate_targets(study)``.

Pure functions: a ``StudyData`` (each model's clean features and logits, inverted-image features,
probe results, robust accuracies) goes in, eight ``TargetResult`` verdicts with their figures
come out. No models, no MLflow, no files: ``analysis.reproduce`` gathers the arrays and writes the
report.

Statistics. Every group figure is a mean over model pairs with a 95% percentile bootstrap
interval that resamples *models* (architecture x seed cells), not pairs, because pairs sharing a
model are not independent; a difference between two groups resamples each group independently.
A target "holds" only when the figures say so at that confidence; a point estimate in the
expected direction whose interval crosses zero is reported as "does not hold" with that reason.

Pair values already computed elsewhere (the analysis table ``pairs.parquet``) can be handed in
as ``StudyData.known``; a matrix entry found there is used instead of being recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.probes import ProbeConfig, ProbeResult
from analysis.subgroups import MeasureSpec, subgroup_similarity
from trainables.errors import ConfigError

__all__ = ["ReproConfig", "ModelInfo", "StudyData", "TargetResult", "evaluate_targets",
           "spec_key", "HOLDS", "FAILS", "UNTESTABLE", "TITLES", "REP_MEASURES",
           "INVERSION_NOT_DISCRIMINATIVE"]

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "cannot be tested on this data"

# SPEC §9: inversion does not discriminate on these datasets; its results are never evidence.
INVERSION_NOT_DISCRIMINATIVE = {
    "digits": "SPEC §9: on the embedded digits data image inversion is not discriminative (standard "
              "models' inversions already look like the target digit and transfer to other models "
              "as well as robust models' do, also when upsampled), so inverted-image similarity "
              "says nothing about the hypothesis here. Run a CIFAR-10 or ImageNet-100 sweep "
              "(`make cluster-submit SPEC=sweeps/cifar10_l2.yaml`, then `make reproduce`) to test it."
}

TITLES = {
    1: "Accuracy-robustness trade-off (sanity)",
    2: "Regular-data similarity is already high (Jones's confound)",
    3: "Inverted-image similarity rises with epsilon",
    4: "Prediction agreement does not converge with epsilon",
    5: "Agreement stays between the Fort reference curves",
    6: "Disagreement is not explained by representational dissimilarity",
    7: "Retraining the linear head raises agreement (held-out)",
    8: "Sensitivity: the orderings of targets 3 and 4 do not flip",
}

REP_MEASURES = (MeasureSpec("linear_cka"), MeasureSpec("procrustes_sim"),
                MeasureSpec("knn_jaccard", {"k": 10}))


@dataclass(frozen=True)
class ReproConfig:
    """What the reproduction runs and how its statistics are drawn.

    Attributes:
        seed: seeds bootstraps, permutations and attacks.
        n_bootstrap: bootstrap draws per interval.
        n_permutations: membership permutations per subgroup measure and pair.
        subgroup_measures: measures on the agree/disagree subsets (target 6).
        subgroup_close: largest size-adjusted mean drop (agree - disagree, similarity units) that
            still counts as "close" for target 6.
        k_values: k-NN Jaccard k for the sensitivity check (k >= N - 1 is skipped and said so).
        inversion_iterations: iterations of the main inversion (SPEC: 1,000).
        inversion_iterations_alt: the sensitivity run (SPEC: 2,000); None skips it.
        inversion_targets: targets per model (None = the whole eval set).
        inversion_check_targets, inversion_check_iterations: targets per model and iterations
            where inversion cannot be tested on the dataset (SPEC §9, e.g. digits) and
            ``inversion_targets`` is None: the run is then only a check that the optimiser
            converges, so a small batch and a short run are enough (1,000 iterations on 64
            digits images cost 1-9 s per model on one idle CPU core).
        probes: probe settings (target 7).
        attack_steps, attack_restarts: PGD for robust accuracy at the largest epsilon (target 1).
    """

    seed: int = 0
    n_bootstrap: int = 1000
    n_permutations: int = 100
    subgroup_measures: tuple[MeasureSpec, ...] = REP_MEASURES
    subgroup_close: float = 0.1
    k_values: tuple[int, ...] = (10, 100, 500)
    inversion_iterations: int = 1000
    inversion_iterations_alt: int | None = 2000
    inversion_targets: int | None = None
    inversion_check_targets: int = 32
    inversion_check_iterations: int = 200
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    attack_steps: int = 20
    attack_restarts: int = 1

    def __post_init__(self) -> None:
        if self.n_bootstrap < 100:
            raise ConfigError(f"n_bootstrap must be >= 100, got {self.n_bootstrap!r}")
        if self.n_permutations < 0:
            raise ConfigError(f"n_permutations must be >= 0, got {self.n_permutations!r}")
        for name in ("inversion_check_targets", "inversion_check_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ModelInfo:
    """One model of the study: id (run id), label, arch, eps (training), seed."""

    id: str
    label: str
    arch: str
    eps: float
    seed: int


@dataclass
class StudyData:
    """Everything the targets need, as arrays (no models, no MLflow).

    Attributes:
        dataset, num_classes: the dataset.
        models: the models (one dataset, one threat model).
        clean: id -> {"features" (N, D), "logits" (N, C), "labels" (N,)} on the clean eval set.
        robust_acc: id -> robust accuracy at the largest training eps (same attack for all).
        inverted: row id -> {col id -> (T, D_col) features on row's inverted images}; None if
            inversion was not run. ``inverted_alt`` is the same for the sensitivity run.
        inversion_summary: row id -> convergence summary (median / p90 / frac below threshold).
        probes: "eps=<e>" -> ProbeResult of that epsilon's backbones.
        known: pair values computed before, ``(where, spec_key(...), id_a, id_b) -> value`` with
            ``where`` in {"clean", "inverted", "inverted_alt"}; matrices take an entry from here
            instead of recomputing it (a symmetric measure on clean inputs in either order).
    """

    dataset: str
    num_classes: int
    models: list[ModelInfo]
    clean: dict[str, dict[str, np.ndarray]]
    robust_acc: dict[str, float] = field(default_factory=dict)
    inverted: dict[str, dict[str, np.ndarray]] | None = None
    inverted_alt: dict[str, dict[str, np.ndarray]] | None = None
    inversion_summary: dict[str, dict[str, float]] = field(default_factory=dict)
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    known: dict[tuple[str, str, str, str], float] = field(default_factory=dict)


@dataclass
class TargetResult:
    """One SPEC §8 target: verdict, why, and the figures behind it."""

    number: int
    title: str
    status: str
    reason: str
    figures: dict[str, Any]


# --- statistics --------------------------------------------------------------------------------


def _boot_draws(V: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of a pair matrix, resampling models; V (M, M) NaN where not a pair."""
    m = V.shape[0]
    s = rng.integers(0, m, size=(n_boot, m))
    W = V[s[:, :, None], s[:, None, :]]  # (B, M, M)
    W = np.where(s[:, :, None] == s[:, None, :], np.nan, W)  # a model with itself is no pair
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(W.reshape(n_boot, -1), axis=1)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _summ(V: np.ndarray, cfg: ReproConfig, salt: int) -> tuple[dict[str, Any], np.ndarray]:
    rng = np.random.default_rng([cfg.seed, salt])
    vals = V[~np.isnan(V)]
    if vals.size == 0:
        return {"mean": None, "ci95": None, "n_models": int(V.shape[0]), "n_pairs": 0}, np.array([])
    draws = _boot_draws(V, cfg.n_bootstrap, rng)
    draws = draws[~np.isnan(draws)]
    symmetric = np.allclose(V, V.T, equal_nan=True)  # count unordered pairs once
    return {"mean": float(vals.mean()), "ci95": _ci(draws), "n_models": int(V.shape[0]),
            "n_pairs": int(vals.size // 2 if symmetric else vals.size)}, draws


def _ci(draws: np.ndarray) -> list[float] | None:
    if draws.size == 0:
        return None
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def _diff(hi: tuple[dict, np.ndarray], lo: tuple[dict, np.ndarray]) -> dict[str, Any]:
    """Difference of two group means with an interval from independent bootstraps."""
    (a, da), (b, db) = hi, lo
    if a["mean"] is None or b["mean"] is None or da.size == 0 or db.size == 0:
        return {"mean": None, "ci95": None}
    n = min(da.size, db.size)
    return {"mean": a["mean"] - b["mean"], "ci95": _ci(da[:n] - db[:n])}


# --- pair matrices ---------------------------------------------------------------------------


def _group(models: Sequence[ModelInfo], eps: float) -> list[ModelInfo]:
    return [m for m in models if m.eps == eps]


def _matrix(ids: Sequence[str], fn, *, symmetric: bool) -> np.ndarray:
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


def spec_key(name: str, params: Mapping[str, Any]) -> str:
    """``name:<canonical JSON of the params with defaults filled in>``: equal for specs that
    compute the same thing (``knn_jaccard`` with ``{"k": 10}`` and ``{"k": 10, "center": True}``).

    Raises:
        MeasureInputError: unknown measure or invalid params (label-aware measures need labels).
    """
    from analysis.measures._base import get_measure
    from analysis.store import canonical_params

    return f"{name}:{canonical_params(get_measure(name).resolve_params(dict(params)))}"


def _known_or(study: StudyData, where: str, spec: MeasureSpec, compute, *, either_order: bool):
    """A pair function that takes ``study.known`` values first and computes the rest."""
    key = spec_key(spec.name, spec.params)

    def fn(a: str, b: str) -> float:
        v = study.known.get((where, key, a, b))
        if v is None and either_order:
            v = study.known.get((where, key, b, a))
        return compute(a, b) if v is None else float(v)

    return fn


def _compare(spec: MeasureSpec, a: np.ndarray, b: np.ndarray) -> float:
    from analysis.measures import compare

    return float(compare(spec.name, a, b, **dict(spec.params)))


def _agreement(study: StudyData, a: str, b: str) -> float:
    pa, pb = (study.clean[x]["logits"].argmax(1) for x in (a, b))
    return float((pa == pb).mean())


def _acc(study: StudyData, mid: str) -> float:
    c = study.clean[mid]
    return float((c["logits"].argmax(1) == c["labels"]).mean())


def _fort(acc_a: float, acc_b: float, num_classes: int) -> tuple[float, float]:
    from analysis.probes import _fort_agreement

    return _fort_agreement(acc_a, acc_b, num_classes)


# --- the eight targets ---------------------------------------------------------------------------


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
        _target1(study, cfg),
        _target2(study, cfg, eps_values[0]),
        _target3(study, cfg, eps_values[0], eps_values[-1]),
        _target4(study, cfg, eps_values[0], eps_values[-1]),
        _target5(study, cfg, eps_values),
        _target6(study, cfg, eps_values[-1]),
        _target7(study, cfg, eps_values[0], eps_values[-1]),
        _target8(study, cfg, eps_values[0], eps_values[-1]),
    ]


def _seed_stats(values: list[float], cfg: ReproConfig, salt: int) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"mean": float(v.mean()), "n_seeds": int(v.size), "ci95": None}
    if v.size >= 2:
        rng = np.random.default_rng([cfg.seed, salt])
        out["ci95"] = _ci(v[rng.integers(0, v.size, size=(cfg.n_bootstrap, v.size))].mean(1))
    return out


def _target1(study: StudyData, cfg: ReproConfig) -> TargetResult:
    rows, bad = {}, []
    for ai, arch in enumerate(sorted({m.arch for m in study.models})):
        eps_list = sorted({m.eps for m in study.models if m.arch == arch})
        clean, robust = [], []
        for ei, e in enumerate(eps_list):
            ms = [m for m in study.models if m.arch == arch and m.eps == e]
            clean.append(_seed_stats([_acc(study, m.id) for m in ms], cfg, 1000 * ai + ei))
            rob = [study.robust_acc[m.id] for m in ms if m.id in study.robust_acc]
            robust.append(_seed_stats(rob, cfg, 1000 * ai + ei + 500) if rob else None)
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


def _inversion_untestable(study: StudyData) -> str | None:
    if study.dataset in INVERSION_NOT_DISCRIMINATIVE:
        return INVERSION_NOT_DISCRIMINATIVE[study.dataset]
    if study.inverted is None:
        return "inversion was not run for this sweep"
    return None


def _clean_matrix(study: StudyData, group: list[ModelInfo], spec: MeasureSpec) -> np.ndarray:
    ids = [m.id for m in group]
    feats = {i: study.clean[i]["features"] for i in ids}
    fn = _known_or(study, "clean", spec, lambda a, b: _compare(spec, feats[a], feats[b]),
                   either_order=True)
    return _matrix(ids, fn, symmetric=True)


def _inv_matrix(study: StudyData, where: str, group: list[ModelInfo],
                spec: MeasureSpec) -> np.ndarray:
    """``where`` is "inverted" or "inverted_alt" (the sensitivity run)."""
    inv = study.inverted if where == "inverted" else study.inverted_alt
    ids = [m.id for m in group]
    # Row model's inverted images: entry (i, j) = measure(f_i(inv_i), f_j(inv_i)); asymmetric.
    fn = _known_or(study, where, spec, lambda a, b: _compare(spec, inv[a][a], inv[a][b]),
                   either_order=False)
    return _matrix(ids, fn, symmetric=False)


def _target2(study: StudyData, cfg: ReproConfig, e0: float) -> TargetResult:
    group = _group(study.models, e0)
    cka = MeasureSpec("linear_cka")
    clean = _summ(_clean_matrix(study, group, cka), cfg, 21)
    figs: dict[str, Any] = {"eps": e0, "clean_linear_cka": clean[0]}
    why = _inversion_untestable(study)
    if why:
        return TargetResult(2, TITLES[2], UNTESTABLE, "the inverted-image half of this target "
                            "relies on inversion. " + why, figs)
    inv = _summ(_inv_matrix(study, "inverted", group, cka), cfg, 22)
    figs["inverted_linear_cka"] = inv[0]
    figs["clean_minus_inverted"] = d = _diff(clean, inv)
    return _verdict(2, figs, d, "clean-image CKA among eps=0 models exceeds their inverted-image "
                    "CKA", expect=+1)


def _verdict(n: int, figs: dict[str, Any], d: dict[str, Any], claim: str, *,
             expect: int) -> TargetResult:
    """'holds' when the difference's 95% interval lies on the ``expect`` side of zero."""
    if d["mean"] is None or d["ci95"] is None:
        return TargetResult(n, TITLES[n], UNTESTABLE, "a group has fewer than two models", figs)
    lo, hi = d["ci95"]
    txt = f"difference {d['mean']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]"
    if (expect > 0 and lo > 0) or (expect < 0 and hi < 0):
        return TargetResult(n, TITLES[n], HOLDS, f"{claim}: {txt}", figs)
    side = "right direction but the interval includes 0" if d["mean"] * expect > 0 else \
        "opposite direction"
    return TargetResult(n, TITLES[n], FAILS, f"not shown that {claim}: {txt} ({side})", figs)


def _target3(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    why = _inversion_untestable(study)
    figs: dict[str, Any] = {"inversion_convergence": study.inversion_summary}
    if why:
        return TargetResult(3, TITLES[3], UNTESTABLE, why, figs)
    verdicts = []
    for i, spec in enumerate(REP_MEASURES):
        hi = _summ(_inv_matrix(study, "inverted", _group(study.models, emax), spec), cfg, 30 + i)
        lo = _summ(_inv_matrix(study, "inverted", _group(study.models, e0), spec), cfg, 40 + i)
        d = _diff(hi, lo)
        figs[spec.label] = {f"eps={emax:g}": hi[0], f"eps={e0:g}": lo[0], "difference": d}
        verdicts.append(_verdict(3, {}, d, f"inverted {spec.label} is higher at eps={emax:g} "
                                 f"than at eps={e0:g}", expect=+1))
    status = HOLDS if all(v.status == HOLDS for v in verdicts) else (
        UNTESTABLE if all(v.status == UNTESTABLE for v in verdicts) else FAILS)
    return TargetResult(3, TITLES[3], status, "; ".join(v.reason for v in verdicts), figs)


def _agreement_summ(study: StudyData, group: list[ModelInfo], cfg: ReproConfig, salt: int):
    return _summ(_matrix([m.id for m in group], lambda a, b: _agreement(study, a, b),
                         symmetric=True), cfg, salt)


def _target4(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    hi = _agreement_summ(study, _group(study.models, emax), cfg, 51)
    lo = _agreement_summ(study, _group(study.models, e0), cfg, 52)
    d = _diff(hi, lo)
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


def _target5(study: StudyData, cfg: ReproConfig, eps_values: list[float]) -> TargetResult:
    figs: dict[str, Any] = {}
    outside, total, edge = [], 0, 0
    # Agreement moves in steps of one input (1/N), and Fort's minimum disagreement is a model
    # value, not a hard limit (it can sit a hair above |acc_a - acc_b|): a pair within one
    # input of a curve counts as on it, and is reported as such.
    n_inputs = next(iter(study.clean.values()))["labels"].size if study.clean else 1
    tol = 1.0 / max(n_inputs, 1)
    for k, e in enumerate(eps_values):
        group = _group(study.models, e)
        ids = [m.id for m in group]
        pos = np.full((len(ids), len(ids)), np.nan)
        n_in = n_strict = n = 0
        for i, a in enumerate(ids):
            for j in range(i + 1, len(ids)):
                b = ids[j]
                agr = _agreement(study, a, b)
                flo, fhi = _fort(_acc(study, a), _acc(study, b), study.num_classes)
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
                              "pairs": n, "relative_position": _summ(pos, cfg, 60 + k)[0]}
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


def _target6(study: StudyData, cfg: ReproConfig, emax: float) -> TargetResult:
    group = _group(study.models, emax)
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
        adj = _summ(M["adjusted"], cfg, 70 + k)
        p = M["p"][np.triu_indices(len(ids), 1)]
        p = p[~np.isnan(p)]
        figs[spec.label] = {"agree": _summ(M["agree"], cfg, 80 + k)[0],
                            "disagree": _summ(M["disagree"], cfg, 90 + k)[0],
                            "size_adjusted_drop": adj[0],
                            "pairs_p_below_0.05": int((p < 0.05).sum()), "pairs_tested": int(p.size)}
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


def _probe_summary(res: ProbeResult, ids: list[str], cfg: ReproConfig, salt: int):
    pos = {m: i for i, m in enumerate(ids)}
    P = np.full((len(ids), len(ids)), np.nan)
    H = P.copy()
    for r in res.pairs.itertuples():
        i, j = pos[r.model_a], pos[r.model_b]
        P[i, j] = P[j, i] = r.probe_agreement
        H[i, j] = H[j, i] = r.head_agreement
    p, h = _summ(P, cfg, salt), _summ(H, cfg, salt + 1)
    acc_change = [float(res.probe_acc[m].mean() - res.head_acc[m]) for m in ids]
    return {"probe_agreement": p[0], "head_agreement": h[0], "difference": _diff(p, h),
            "probe_acc": {m: float(res.probe_acc[m].mean()) for m in ids},
            "head_acc": res.head_acc, "mean_acc_change": float(np.mean(acc_change)),
            "fort_from_probe_acc": res.pairs[["model_a", "model_b", "probe_agreement",
                                              "fort_lower", "fort_upper"]].to_dict("records"),
            "eval_inputs": int(res.eval_ids.size), "probes_per_model": res.config.num_probes}


def _target7(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    key = f"eps={emax:g}"
    if key not in study.probes:
        return TargetResult(7, TITLES[7], UNTESTABLE, "probes were not trained", {})
    figs: dict[str, Any] = {}
    for k, e in enumerate((emax, e0)):
        name = f"eps={e:g}"
        if name in study.probes:
            ids = [m.id for m in _group(study.models, e)]
            figs[name] = _probe_summary(study.probes[name], ids, cfg, 100 + 10 * k)
    d = figs[key]["difference"]
    v = _verdict(7, figs, d, f"retrained heads of eps={emax:g} backbones agree more than the "
                 f"original heads on held-out inputs", expect=+1)
    v.reason += f"; mean probe accuracy change {figs[key]['mean_acc_change']:+.4f}"
    return v


def _order_sign(hi: tuple[dict, np.ndarray], lo: tuple[dict, np.ndarray]) -> int | None:
    if hi[0]["mean"] is None or lo[0]["mean"] is None:
        return None
    return int(np.sign(hi[0]["mean"] - lo[0]["mean"]))


def _target8(study: StudyData, cfg: ReproConfig, e0: float, emax: float) -> TargetResult:
    checks: dict[str, Any] = {}
    flips: list[str] = []
    # Target 4's ordering, separately within each seed.
    ref = _order_sign(_agreement_summ(study, _group(study.models, emax), cfg, 0),
                      _agreement_summ(study, _group(study.models, e0), cfg, 0))
    per_seed = {}
    for s in sorted({m.seed for m in study.models}):
        ms = [m for m in study.models if m.seed == s]
        sign = _order_sign(_agreement_summ(study, _group(ms, emax), cfg, 0),
                           _agreement_summ(study, _group(ms, e0), cfg, 0))
        per_seed[f"seed={s}"] = sign
        if sign is not None and ref is not None and sign != ref:
            flips.append(f"target 4 ordering flips for seed {s}")
    tested_seed = [v for v in per_seed.values() if v is not None]
    checks["target4_sign_all_seeds"] = ref
    checks["target4_sign_per_seed"] = per_seed
    if len(tested_seed) < 2:
        checks["target4_seed_check"] = "needs >= 2 seeds with >= 2 models at both eps"
    why = _inversion_untestable(study)
    if why:
        checks["target3_checks"] = f"{UNTESTABLE}: {why}"
    else:
        n = next(iter(study.inverted.values()))
        n_rows = next(iter(n.values())).shape[0]
        signs = {}
        for k in cfg.k_values:
            for center in (True, False):
                name = f"knn_jaccard(k={k},center={center})"
                if k >= n_rows - 1:
                    signs[name] = f"skipped: k >= N - 1 = {n_rows - 1}"
                    continue
                spec = MeasureSpec("knn_jaccard", {"k": k, "center": center})
                hi, lo = (_inv_matrix(study, "inverted", _group(study.models, e), spec)
                          for e in (emax, e0))
                signs[name] = _order_sign(_summ(hi, cfg, 0), _summ(lo, cfg, 0))
        if study.inverted_alt is not None:
            cka = MeasureSpec("linear_cka")
            for tag, where in (("main", "inverted"), ("alt", "inverted_alt")):
                signs[f"linear_cka iterations={tag}"] = _order_sign(
                    _summ(_inv_matrix(study, where, _group(study.models, emax), cka), cfg, 0),
                    _summ(_inv_matrix(study, where, _group(study.models, e0), cka), cfg, 0))
        checks["target3_signs"] = signs
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
