"""The report's figures. Each is written as a PNG with the CSV of exactly what it draws beside it
(same stem), so every number on the page can be read back.

- ``small_multiples``: one panel per measure, each with its own y scale (distances labelled as
  such), x = eps, training epoch or a group, one line per series with its SPEC §10 interval;
- ``heatmap``: one measure on one input set, models ordered by (eps, arch, seed);
- ``groups_plot``: box + strip plots of pair values by eps group and arch group;
- ``fort_plot``: agreement against the Fort et al. (2020) reference values, zoomed to the data.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.report.tables import eps_text, measure_info, measure_order  # noqa: E402

__all__ = ["DPI", "save", "panel_title", "Series", "ARCH_SERIES", "small_multiples", "heatmap",
           "groups_plot", "fort_plot"]

DPI = 100
#: (legend text, colour, line style, marker) of one line of a small-multiples panel.
Series = tuple[str, str, str, str]
ARCH_SERIES: dict[str, Series] = {
    "different-arch": ("cross-architecture pairs", "#1f5fa8", "-", "o"),
    "same-arch-different-seed": ("same architecture, across seeds", "#d9731a", "--", "s"),
}
_SHORT_GROUP = {"standard-standard": "std-std", "cross-eps": "cross-eps"}
_SHORT_ARCH = {"different-arch": "cross-arch", "same-arch-different-seed": "same-arch",
               "same-arch-same-seed": "same cell"}


def save(fig, path: Path, data: pd.DataFrame) -> Path:
    """Write ``path`` (PNG) and ``path.with_suffix('.csv')`` (the data drawn); close the figure."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    data.to_csv(path.with_suffix(".csv"), index=False)
    return path


def panel_title(measure: str, params: str = "{}") -> str:
    """``knn_jaccard k=10``; a distance says so (``rtd (distance)``)."""
    p = json.loads(params) if params and params != "{}" else {}
    extra = " ".join(f"{k}={v}" for k, v in p.items())
    dist = "" if measure_info(measure).higher_is_more_similar else " (distance)"
    return f"{measure}{' ' + extra if extra else ''}{dist}"


def _panels(n: int, *, ncols: int, w: float, h: float, title: str):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    return fig, list(axes.flat[:n])


def _ylim(ax, est: np.ndarray, lo: np.ndarray, hi: np.ndarray, measure: str) -> None:
    """Fit the estimates and their intervals, but never beyond the measure's possible range nor
    far beyond the estimates (1.5 times their spread each side): a wide interval of a small grid
    is cut at the panel's edge, and the estimates stay readable."""
    est, lo, hi = est[np.isfinite(est)], lo[np.isfinite(lo)], hi[np.isfinite(hi)]
    if not est.size:
        return
    c_lo, c_hi = float(est.min()), float(est.max())
    reach = 1.5 * max(c_hi - c_lo, 0.05 * max(abs(c_lo), abs(c_hi)), 1e-3)
    a = max(float(lo.min()) if lo.size else c_lo, c_lo - reach)
    b = min(float(hi.max()) if hi.size else c_hi, c_hi + reach)
    info = measure_info(measure)
    pad = max(0.08 * (b - a), 1e-3)
    ax.set_ylim(max(a - pad, info.lo - pad), min(b + pad, info.hi + pad))


def _series_line(ax, s: pd.DataFrame, xpos: np.ndarray, style: Series) -> None:
    text, colour, ls, marker = style
    est = s["estimate"].to_numpy(float)
    err = np.array([est - s["ci_lo"].to_numpy(float), s["ci_hi"].to_numpy(float) - est])
    ax.errorbar(xpos, est, yerr=np.nan_to_num(err), color=colour, linestyle=ls, marker=marker,
                ms=4, lw=1.4, capsize=3, elinewidth=1, label=text)


def small_multiples(table: pd.DataFrame, *, x: str, series: str, title: str, path: Path,
                    xlabel: str, styles: Mapping[object, Series] | None = None,
                    ncols: int = 4, size: tuple[float, float] = (3.35, 2.05)) -> Path:
    """One panel per (measure, params), its own y scale; x = ``table[x]`` (numbers, or strings
    shown as categories), one line per ``table[series]`` value with its interval.

    Args:
        table: ``summarise`` rows (``measure``, ``params``, x, series, ``estimate``, ``ci_lo``,
            ``ci_hi``, ...); rows without an estimate are left out.
        styles: series value -> (legend text, colour, line style, marker); default
            ``ARCH_SERIES``; series without a style get the colour cycle.
    """
    styles = dict(ARCH_SERIES if styles is None else styles)
    table = table[np.isfinite(table["estimate"].astype(float))]
    keys = sorted({(m, p) for m, p in zip(table["measure"], table["params"], strict=True)},
                  key=lambda k: (measure_order(k[0]), k[1]))
    fig, axes = _panels(len(keys), ncols=ncols, w=size[0], h=size[1], title=title)
    cats = None if pd.api.types.is_numeric_dtype(table[x]) else list(dict.fromkeys(table[x]))
    xs = np.arange(len(cats)) if cats else np.sort(table[x].astype(float).unique())
    span = (xs.max() - xs.min()) if len(xs) > 1 else 1.0
    order = list(styles) + sorted(set(table[series]) - set(styles), key=str)
    for k, (ax, (measure, params)) in enumerate(zip(axes, keys, strict=True)):
        sub = table[(table["measure"] == measure) & (table["params"] == params)]
        live = [g for g in order if (sub[series] == g).any()]
        for j, g in enumerate(live):
            s = sub[sub[series] == g]
            s = s.assign(_x=s[x].map({c: i for i, c in enumerate(cats)}) if cats
                         else s[x].astype(float)).sort_values("_x")
            shift = (j - (len(live) - 1) / 2) * 0.025 * span  # bars side by side, not on top
            style = styles.get(g) or (str(g), f"C{order.index(g) % 10}", "-", "o")
            _series_line(ax, s, s["_x"].to_numpy(float) + shift, style)
        _ylim(ax, sub["estimate"].to_numpy(float), sub["ci_lo"].to_numpy(float),
              sub["ci_hi"].to_numpy(float), measure)
        ax.set_title(textwrap.fill(panel_title(measure, params), 38), fontsize=9)
        ax.set_ylabel(measure_info(measure).axis, fontsize=8)
        ax.set_xticks(xs, cats if cats else [eps_text(v) for v in xs], fontsize=8,
                      rotation=20 if cats else 0)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.25)
        if k >= len(keys) - min(ncols, len(keys)):
            ax.set_xlabel(xlabel, fontsize=8)
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="outside upper right", ncols=len(handles),
               fontsize=8.5, frameon=False)
    return save(fig, path, table)


def heatmap(rows: pd.DataFrame, order: pd.DataFrame, *, title: str, path: Path,
            measure: str) -> Path:
    """One measure's model x model matrix. Rows are ``model_a`` (its inputs, for per-model
    sets), columns ``model_b``; symmetric values are mirrored, the diagonal left blank; distances
    use the reversed colour map, so darker is more similar everywhere.

    Args:
        rows: ``annotate`` rows of one (dataset, input set, measure, params), status ok.
        order: ``run_id`` and ``name`` of the models, in display order (eps, arch, seed).
    """
    order = order[order["run_id"].isin(set(rows["model_a"]) | set(rows["model_b"]))]
    ids, labels = order["run_id"].tolist(), order["name"].tolist()
    mat = rows.pivot_table(index="model_a", columns="model_b", values="value", aggfunc="mean")
    mat = mat.reindex(index=ids, columns=ids)
    mat = mat.combine_first(mat.T)  # symmetric measures are stored once per unordered pair
    n = len(ids)
    side = max(3.2, 0.19 * n)
    fig, ax = plt.subplots(figsize=(side + 1.6, side + 1.1))
    cmap = "viridis" if measure_info(measure).higher_is_more_similar else "viridis_r"
    im = ax.imshow(mat.to_numpy(dtype=float), cmap=cmap)
    fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    fs = max(4.5, min(8.0, 150 / max(n, 1)))
    ax.set_xticks(range(n), labels, rotation=90, fontsize=fs)
    ax.set_yticks(range(n), labels, fontsize=fs)
    eps = order["eps"].to_numpy()
    for k in np.flatnonzero(eps[1:] != eps[:-1]) + 0.5:  # group separators between eps values
        ax.axhline(k, color="white", lw=1.5)
        ax.axvline(k, color="white", lw=1.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("model b", fontsize=8)
    ax.set_ylabel("model a (its inputs, for per-model sets)", fontsize=8)
    data = mat.set_axis(labels, axis=0).set_axis(labels, axis=1).rename_axis("model").reset_index()
    return save(fig, path, data)


def _category(r) -> str:
    group = str(r.eps_group)
    eps = _SHORT_GROUP.get(group) or (
        f"rob ε{eps_text(float(group.split('=', 1)[1]))}" if group.startswith("robust-robust eps=")
        else group)
    return f"{eps}\n{_SHORT_ARCH.get(r.arch_group, r.arch_group)}"


def groups_plot(tidy: pd.DataFrame, *, title: str, path: Path, seed: int) -> Path:
    """Box + strip plots of every pair's value by (eps group, arch group), one panel per measure
    (its own y scale); the CSV holds the pairs drawn."""
    ok = tidy[tidy["status"] == "ok"]
    keys = sorted(set(zip(ok["measure"], ok["params"], strict=True)),
                  key=lambda k: (measure_order(k[0]), k[1]))
    fig, axes = _panels(len(keys), ncols=2, w=6.4, h=2.5, title=title)
    rng = np.random.default_rng(seed)
    for ax, (measure, params) in zip(axes, keys, strict=True):
        sub = ok[(ok["measure"] == measure) & (ok["params"] == params)]
        cats = sorted(set(zip(sub["eps_group"], sub["arch_group"], strict=True)))
        data = [sub[(sub["eps_group"] == e) & (sub["arch_group"] == a)]["value"].to_numpy()
                for e, a in cats]
        ax.boxplot(data, showfliers=False, widths=0.6)
        for k, ((_, a), v) in enumerate(zip(cats, data, strict=True), start=1):
            colour = ARCH_SERIES.get(a, ("", "grey", "", ""))[1]
            ax.plot(k + rng.uniform(-0.15, 0.15, v.size), v, "o", ms=2.5, alpha=0.6, color=colour)
        ax.set_xticks(range(1, len(cats) + 1),
                      [_category(pd.Series({"eps_group": e, "arch_group": a})) for e, a in cats],
                      fontsize=7)
        ax.set_title(panel_title(measure, params), fontsize=9)
        ax.set_ylabel(measure_info(measure).axis, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    cols = ["measure", "params", "eps_group", "arch_group", "name_a", "name_b", "value"]
    return save(fig, path, ok.reindex(columns=cols))


def _zoom(values: Sequence[np.ndarray]) -> tuple[float, float]:
    v = np.concatenate([np.asarray(x, dtype=float) for x in values])
    v = v[np.isfinite(v)]
    a, b = float(v.min()), float(v.max())
    pad = max(0.06 * (b - a), 0.002)
    return a - pad, min(b + pad, 1.0 + pad)


def fort_plot(fort: pd.DataFrame, *, title: str, path: Path) -> Path:
    """Left: agreement of every same-eps pair vs eps, its mean, and the mean Fort reference
    values; right: observed agreement vs each pair's reference values. Both axes zoomed to the
    data (agreement of trained models sits close to 1)."""
    same = fort[fort["pair_eps"].notna()]
    by = same.groupby("pair_eps")[["value", "fort_upper", "fort_lower"]].mean().sort_index()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    ax1.plot(same["pair_eps"], same["value"], "o", ms=3, alpha=0.45, color="grey",
             label="agreement of a pair")
    ax1.plot(by.index, by["value"], "-o", color="k", label="mean agreement")
    ax1.plot(by.index, by["fort_upper"], "--", color="#2a9d3a", label="Fort: minimum disagreement")
    ax1.plot(by.index, by["fort_lower"], "--", color="#c0392b", label="Fort: independent errors")
    ax1.set_ylim(*_zoom([same["value"], by["fort_upper"], by["fort_lower"]]))
    ax1.set_xticks(by.index, [eps_text(v) for v in by.index])
    ax1.set_xlabel("training eps (both models)")
    ax1.set_ylabel("agreement (clean inputs)")
    ax1.legend(fontsize=8)
    ax2.plot(fort["fort_lower"], fort["value"], "o", ms=3.5, alpha=0.6, color="#c0392b",
             label="vs independent-errors value")
    ax2.plot(fort["fort_upper"], fort["value"], "x", ms=4, alpha=0.6, color="#2a9d3a",
             label="vs minimum-disagreement value")
    lim = _zoom([fort["value"], fort["fort_lower"], fort["fort_upper"]])
    ax2.plot(lim, lim, ":", color="grey", label="observed = reference")
    ax2.set_xlim(*lim)
    ax2.set_ylim(*lim)
    ax2.set_xlabel("Fort reference value of the pair")
    ax2.set_ylabel("observed agreement")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    cols = ["dataset", "input_set", "name_a", "name_b", "eps_a", "eps_b", "clean_acc_a",
            "clean_acc_b", "value", "fort_lower", "fort_upper", "within"]
    return save(fig, path, fort.reindex(columns=cols))
