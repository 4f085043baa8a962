"""The reproduction's statistics (SPEC §10): model-resampling bootstraps and verdicts.

Every group figure is a mean over model pairs with a 95% percentile bootstrap interval that
resamples *models* (architecture x seed cells), not pairs, because pairs sharing a model are not
independent; a difference between two groups resamples each group independently. A target
"holds" only when the figures say so at that confidence; a point estimate in the expected
direction whose interval crosses zero is reported as "does not hold" with that reason.

A *summary* is ``(figures, draws)``: ``figures`` = ``{"mean", "ci95", "n_models", "n_pairs"}``
and ``draws`` the bootstrap means behind the interval. Each call takes a ``salt``, so every
figure of the report draws from its own generator ``default_rng([cfg.seed, salt])``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from analysis.reproduction.study import FAILS, HOLDS, TITLES, UNTESTABLE, ReproConfig, TargetResult

__all__ = ["boot_draws", "summarise", "ci95", "difference", "seed_stats", "verdict",
           "order_sign"]

Summary = tuple[dict[str, Any], np.ndarray]


def boot_draws(V: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of a pair matrix, resampling models; V (M, M) NaN where not a pair."""
    m = V.shape[0]
    s = rng.integers(0, m, size=(n_boot, m))
    W = V[s[:, :, None], s[:, None, :]]  # (B, M, M)
    W = np.where(s[:, :, None] == s[:, None, :], np.nan, W)  # a model with itself is no pair
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw of one model has no pair: NaN
        return np.nanmean(W.reshape(n_boot, -1), axis=1)


def summarise(V: np.ndarray, cfg: ReproConfig, salt: int) -> Summary:
    """Mean of a pair matrix (NaN = no pair) and its model bootstrap."""
    rng = np.random.default_rng([cfg.seed, salt])
    vals = V[~np.isnan(V)]
    if vals.size == 0:
        return {"mean": None, "ci95": None, "n_models": int(V.shape[0]), "n_pairs": 0}, np.array([])
    draws = boot_draws(V, cfg.n_bootstrap, rng)
    draws = draws[~np.isnan(draws)]
    symmetric = np.allclose(V, V.T, equal_nan=True)  # count unordered pairs once
    return {"mean": float(vals.mean()), "ci95": ci95(draws), "n_models": int(V.shape[0]),
            "n_pairs": int(vals.size // 2 if symmetric else vals.size)}, draws


def ci95(draws: np.ndarray) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the draws (None without draws)."""
    if draws.size == 0:
        return None
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def difference(hi: Summary, lo: Summary) -> dict[str, Any]:
    """Difference of two group means with an interval from independent bootstraps."""
    (a, da), (b, db) = hi, lo
    if a["mean"] is None or b["mean"] is None or da.size == 0 or db.size == 0:
        return {"mean": None, "ci95": None}
    n = min(da.size, db.size)
    return {"mean": a["mean"] - b["mean"], "ci95": ci95(da[:n] - db[:n])}


def seed_stats(values: list[float], cfg: ReproConfig, salt: int) -> dict[str, Any]:
    """Mean over seeds of one value per seed, with a bootstrap over the seeds (two or more)."""
    v = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"mean": float(v.mean()), "n_seeds": int(v.size), "ci95": None}
    if v.size >= 2:
        rng = np.random.default_rng([cfg.seed, salt])
        out["ci95"] = ci95(v[rng.integers(0, v.size, size=(cfg.n_bootstrap, v.size))].mean(1))
    return out


def verdict(n: int, figs: dict[str, Any], d: dict[str, Any], claim: str, *,
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


def order_sign(hi: Summary, lo: Summary) -> int | None:
    """Sign of ``hi``'s mean minus ``lo``'s (None when either has no pairs)."""
    if hi[0]["mean"] is None or lo[0]["mean"] is None:
        return None
    return int(np.sign(hi[0]["mean"] - lo[0]["mean"]))
