"""The report's tables: pair rows joined with their models, grouped, with SPEC §10 intervals.

Everything here is cheap aggregation of ``pairs.parquet`` and ``models.parquet``; nothing is
recomputed (STYLE rule 15). The groups: ``eps_group`` (``standard-standard``, ``robust-robust
eps=<e>``, ``cross-eps``) and ``arch_group`` (``different-arch``: the headline;
``same-arch-different-seed``: the baseline; ``same-arch-same-seed``: only across eps), never pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.measures import MEASURES, MeasureInputError, fort_bounds
from analysis.reproduction.stats import LEVEL, PairSet, estimate
from trainables.tracking import arch_label

__all__ = ["GROUP_KEYS", "KIND", "MeasureInfo", "measure_info", "measure_order", "names",
           "annotate", "final_ids", "ordered_pairs", "group_interval", "summarise",
           "fort_reference", "interval_text", "eps_text"]

def eps_text(eps: float) -> str:
    """An epsilon for a reader: ``0.1``, ``0.5``, ``3``; a long decimal that is k/255 of the pixel
    range as ``8/255`` (the L-inf convention; ``0.0313725`` reads as noise)."""
    txt = f"{float(eps):g}"
    k = float(eps) * 255
    if len(txt) > 5 and round(k) > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return txt


GROUP_KEYS = ["dataset", "input_set", "measure", "params", "eps_group", "arch_group"]
#: Pair kind of each arch group for the intervals: pairs of different architectures are the
#: headline ("cross"); same-architecture pairs (across seeds, or across eps) the baseline.
KIND = {"different-arch": "cross", "same-arch-different-seed": "intra",
        "same-arch-same-seed": "intra"}
#: The paper's measures first (SPEC §3.1), then the other representational ones, then agreement.
PREFERRED = ("linear_cka_debiased", "linear_cka", "procrustes_sim", "knn_jaccard", "rtd",
             "agreement", "jsd_sim", "cohen_kappa", "transfer_target", "transfer_seed")


@dataclass(frozen=True)
class MeasureInfo:
    """How a measure is shown: its axis word, direction and range (from the registry).

    Attributes:
        word: ``similarity``, ``agreement`` or ``distance`` (the y label of its panel).
        higher_is_more_similar: False for distances (RTD, GULP, ...).
        lo, hi: the declared range (may be infinite).
    """

    word: str
    higher_is_more_similar: bool
    lo: float
    hi: float

    @property
    def axis(self) -> str:
        return self.word if self.higher_is_more_similar else "distance (lower = more similar)"


#: Pair quantities shown with their own axis words (inversion transfer: a fraction of A's
#: inverted images, whether or not the measure registry knows them).
OWN_AXIS = {"transfer_target": MeasureInfo("fraction B labels as the target", True, 0.0, 1.0),
            "transfer_seed": MeasureInfo("fraction B labels as the seed", True, 0.0, 1.0)}


def measure_info(name: str) -> MeasureInfo:
    """The registry's metadata of ``name``; a measure not registered here (e.g. one a newer
    engine computed) is shown as a "value" with an open range."""
    if name in OWN_AXIS:
        return OWN_AXIS[name]
    m = MEASURES.get(name)
    if m is None:
        return MeasureInfo("value", True, -np.inf, np.inf)
    word = "agreement" if m.kind == "functional" else "similarity"
    if not m.higher_is_more_similar:
        word = "distance"
    return MeasureInfo(word, m.higher_is_more_similar, float(m.range[0]), float(m.range[1]))


def measure_order(name: str) -> tuple[int, str]:
    """Sort key: the paper's measures first, representational before functional."""
    if name in PREFERRED:
        return (PREFERRED.index(name), name)
    m = MEASURES.get(name)
    return (len(PREFERRED) + (m is not None and m.kind == "functional"), name)


def names(models: pd.DataFrame) -> pd.Series:
    """run id -> the readable name ``arch eps seed`` (``resnet18 ε0.1 s1``); the width joins the
    arch only where the sweep trains one architecture at several widths."""
    widths = models.groupby("arch")["width"].nunique()

    def one(r) -> str:
        arch = arch_label(r.arch, r.width) if widths.get(r.arch, 1) > 1 else r.arch
        return f"{arch} ε{eps_text(r.eps)} s{int(r.seed)}"

    return pd.Series([one(r) for r in models.itertuples(index=False)], index=models["run_id"],
                     dtype=object)


def annotate(pairs: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Pair rows joined with both models' metadata, plus ``eps_group``, ``arch_group``,
    ``pair_eps`` / ``pair_epoch`` (the models' common eps / training epoch, NaN when they differ)
    and ``name_a`` / ``name_b`` (``names``)."""
    meta = models.set_index("run_id").reindex(
        columns=["label", "arch", "eps", "seed", "clean_acc", "num_classes", "epoch"])
    meta["name"] = names(models)
    out = pairs.join(meta.add_suffix("_a"), on="model_a").join(meta.add_suffix("_b"), on="model_b")
    out["pair_epoch"] = out["epoch_a"].where(out["epoch_a"] == out["epoch_b"])
    same_eps = np.isclose(out["eps_a"].astype(float), out["eps_b"].astype(float))
    eps_txt = out["eps_a"].map(lambda e: f"robust-robust eps={e:g}")
    out["eps_group"] = np.where(same_eps, np.where(out["eps_a"] > 0, eps_txt, "standard-standard"),
                                "cross-eps")
    same_arch = out["arch_a"] == out["arch_b"]
    out["arch_group"] = np.where(same_arch, np.where(out["seed_a"] != out["seed_b"],
                                                     "same-arch-different-seed",
                                                     "same-arch-same-seed"), "different-arch")
    out["pair_eps"] = np.where(same_eps, out["eps_a"].astype(float), np.nan)
    return out


def final_ids(models: pd.DataFrame) -> set[str]:
    """Ids of the trials' final models (``models.parquet`` column ``final`` of an analysis by
    epoch); all models where the column is absent, or where no model is final."""
    final = models.reindex(columns=["final"])["final"].fillna(True).astype(bool)
    return set(models["run_id"][final]) or set(models["run_id"])


def ordered_pairs(rows: pd.DataFrame) -> bool:
    """True when the rows hold ordered pairs (both (a, b) and (b, a) stored: per-model input sets
    such as inverted images, or an asymmetric measure); rows without model ids count as
    unordered."""
    if "model_a" not in rows or "model_b" not in rows:
        return False
    fwd = set(zip(rows["model_a"], rows["model_b"], strict=True))
    return any((b, a) in fwd for a, b in fwd)


def group_interval(rows: pd.DataFrame, kind: str, *, symmetric: bool | None = None) -> dict:
    """The SPEC §10 interval of one group of pair rows (``annotate``'s columns, status ok):
    the mean over architecture pairs of the mean over their model pairs, with the
    leave-one-architecture-out jackknife (``analysis.reproduction.stats.estimate``). A model is
    the cell (arch, (seed, eps)), so pairs across eps are pairs of different models. Ordered
    pairs (``symmetric=False``; default: detected from the rows) keep (A, B) and (B, A) apart."""
    ps = PairSet(symmetric=not ordered_pairs(rows) if symmetric is None else symmetric)
    for r in rows.itertuples(index=False):
        ps.add("g", (r.arch_a, (r.seed_a, r.eps_a)), (r.arch_b, (r.seed_b, r.eps_b)), r.value)
    est = estimate(ps, {"g": 1}, kind=kind, level=LEVEL)
    return {"estimate": est.value if est.value is not None else np.nan,
            "ci_lo": est.lo if est.has_interval else np.nan,
            "ci_hi": est.hi if est.has_interval else np.nan, "n_archs": est.n_archs,
            "n_seeds": est.n_seeds, "method": est.method}


SUMMARY_COLUMNS = ["n", "n_error", "mean", "std", "median", "estimate", "ci_lo", "ci_hi",
                   "n_archs", "n_seeds", "method"]


def summarise(tidy: pd.DataFrame, *, keys: list[str] | None = None) -> pd.DataFrame:
    """Per group: n pairs (ok), n errors, mean, std, median over pairs, and the SPEC §10
    estimate with its interval, n_archs, n_seeds and method (``group_interval``); groups are
    split by ``arch_group`` whenever it is a key, so cross- and same-architecture pairs are
    never pooled."""
    keys = keys or GROUP_KEYS
    ordered = {k: ordered_pairs(g) for k, g in tidy.groupby(["input_set", "measure"], sort=False)}
    rows = []
    for key, grp in tidy.groupby(keys, sort=True, dropna=False):
        label = dict(zip(keys, key, strict=True))
        okrows = grp[grp["status"] == "ok"]
        ok = okrows["value"].to_numpy(dtype=np.float64)
        kind = KIND.get(label.get("arch_group"), "cross")
        first = grp.iloc[0]
        rows.append({**label, "n": int(ok.size),
                     "n_error": int((grp["status"] == "error").sum()),
                     "mean": float(ok.mean()) if ok.size else np.nan,
                     "std": float(ok.std(ddof=1)) if ok.size > 1 else np.nan,
                     "median": float(np.median(ok)) if ok.size else np.nan,
                     **group_interval(okrows, kind, symmetric=not ordered[
                         (first["input_set"], first["measure"])])})
    return pd.DataFrame(rows, columns=[*keys, *SUMMARY_COLUMNS])


def interval_text(r, fmt: str = "{:.3f}") -> str:
    """``0.912 [0.850, 0.974] 3x2 loao-jackknife`` for a ``summarise`` row (blank without pairs)."""
    if not np.isfinite(r["estimate"]):
        return ""
    ci = (f" [{fmt.format(r['ci_lo'])}, {fmt.format(r['ci_hi'])}]"
          if np.isfinite(r["ci_lo"]) else " (no interval)")
    return f"{fmt.format(r['estimate'])}{ci} {int(r['n_archs'])}x{int(r['n_seeds'])}"


def fort_reference(tidy: pd.DataFrame) -> pd.DataFrame:
    """Agreement rows with the two Fort reference values and whether the value lies between."""
    # Fort et al.'s values come from clean accuracies: they are references for clean inputs only
    agree = tidy[(tidy["measure"] == "agreement") & (tidy["status"] == "ok")
                 & (tidy["input_set"] == "clean")].copy()
    if agree.empty or agree["clean_acc_a"].isna().all():
        return agree.assign(fort_upper=np.nan, fort_lower=np.nan, within=False)
    upper, lower = [], []
    for acc_a, acc_b, c in zip(agree["clean_acc_a"], agree["clean_acc_b"], agree["num_classes_a"],
                               strict=True):
        try:  # one call per pair (M^2 scalars): the loop is over pairs, not samples
            b = fort_bounds(float(acc_a), float(acc_b), int(c))
            upper.append(b.max_agreement)
            lower.append(b.independent_agreement)
        except (MeasureInputError, TypeError, ValueError):  # missing or chance-level accuracy
            upper.append(np.nan)
            lower.append(np.nan)
    agree["fort_upper"], agree["fort_lower"] = upper, lower
    agree["within"] = (agree["value"] <= agree["fort_upper"] + 1e-12) & (
        agree["value"] >= agree["fort_lower"] - 1e-12)
    return agree
