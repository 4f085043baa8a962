"""Figures, tables and one self-contained HTML report, from the result table + run metadata.

Reads only ``pairs.parquet``, ``models.parquet`` and ``skipped.json`` of ``reports/<sweep>/``;
nothing is recomputed (STYLE rule 15). Writes into ``reports/<sweep>/report/``:

- ``heatmap_<input_set>_<measure>.png``: models ordered by (eps, arch, seed), eps groups
  separated by lines; symmetric measures are mirrored, the diagonal is left blank;
- ``groups_<input_set>.png``: box + strip plots of pair values by eps group and arch group;
- ``vs_eps_<input_set>.png``: mean over same-eps pairs vs eps, cross-architecture pairs (the
  headline) and same-architecture pairs across seeds beside them, never pooled, with the 95%
  intervals of ``analysis.reproduction.stats`` (SPEC §10);
- ``fort_<input_set>.png`` + ``fort.csv``: agreement against the Fort et al. (2020) reference
  values computed from each pair's clean accuracies;
- ``summary.csv`` (the group statistics), ``pairs_grouped.csv``, and ``index.html`` (every
  figure embedded as base64 PNG: the file can be mailed or opened offline).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import shutil
import subprocess
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.engine.store import ResultStore  # noqa: E402
from analysis.measures import MeasureInputError, fort_bounds  # noqa: E402
from analysis.reproduction.stats import LEVEL, PairSet, estimate  # noqa: E402
from trainables.errors import UserError  # noqa: E402

__all__ = ["annotate", "summarise", "group_interval", "fort_reference", "build_report",
           "screenshot"]

log = logging.getLogger(__name__)

GROUP_KEYS = ["dataset", "input_set", "measure", "params", "eps_group", "arch_group"]
#: Pair kind of each arch group for the intervals: pairs of different architectures are the
#: headline ("cross"); same-architecture pairs (across seeds, or across eps) the baseline.
KIND = {"different-arch": "cross", "same-arch-different-seed": "intra",
        "same-arch-same-seed": "intra"}


def annotate(pairs: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Pair rows joined with both models' metadata, plus ``eps_group`` and ``arch_group``.

    eps_group: ``standard-standard`` (both eps 0), ``robust-robust eps=<e>`` (same eps > 0) or
    ``cross-eps``. arch_group: ``same-arch-different-seed``, ``same-arch-same-seed`` (only
    across eps) or ``different-arch``.
    """
    meta = models.set_index("run_id")[["label", "arch", "eps", "seed", "clean_acc", "num_classes"]]
    out = pairs.join(meta.add_suffix("_a"), on="model_a").join(meta.add_suffix("_b"), on="model_b")
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


def group_interval(rows: pd.DataFrame, kind: str) -> dict:
    """The SPEC §10 interval of one group of pair rows (``annotate``'s columns, status ok):
    the mean over architecture pairs of the mean over their model pairs, with the
    leave-one-architecture-out jackknife (``analysis.reproduction.stats.estimate``). A model is
    the cell (arch, (seed, eps)), so pairs across eps are pairs of different models."""
    ps = PairSet(symmetric=True)
    for r in rows.itertuples(index=False):
        ps.add("g", (r.arch_a, (r.seed_a, r.eps_a)), (r.arch_b, (r.seed_b, r.eps_b)), r.value)
    est = estimate(ps, {"g": 1}, kind=kind, level=LEVEL)
    return {"estimate": est.value if est.value is not None else np.nan,
            "ci_lo": est.lo if est.has_interval else np.nan,
            "ci_hi": est.hi if est.has_interval else np.nan, "n_archs": est.n_archs,
            "n_seeds": est.n_seeds, "method": est.method}


def summarise(tidy: pd.DataFrame, *, keys: list[str] | None = None) -> pd.DataFrame:
    """Per group: n pairs (ok), n errors, mean, std, median over pairs, and the SPEC §10
    estimate with its interval, n_archs, n_seeds and method (``group_interval``); groups are
    split by ``arch_group`` whenever it is a key, so cross- and same-architecture pairs are
    never pooled."""
    keys = keys or GROUP_KEYS
    rows = []
    for key, grp in tidy.groupby(keys, sort=True, dropna=False):
        label = dict(zip(keys, key, strict=True))
        okrows = grp[grp["status"] == "ok"]
        ok = okrows["value"].to_numpy(dtype=np.float64)
        kind = KIND.get(label.get("arch_group"), "cross")
        rows.append({**label, "n": int(ok.size),
                     "n_error": int((grp["status"] == "error").sum()),
                     "mean": float(ok.mean()) if ok.size else np.nan,
                     "std": float(ok.std(ddof=1)) if ok.size > 1 else np.nan,
                     "median": float(np.median(ok)) if ok.size else np.nan,
                     **group_interval(okrows, kind)})
    return pd.DataFrame(rows, columns=[*keys, "n", "n_error", "mean", "std", "median",
                                       "estimate", "ci_lo", "ci_hi", "n_archs", "n_seeds",
                                       "method"])


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


def _png(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _heatmap(tidy: pd.DataFrame, models: pd.DataFrame, title: str, path: Path) -> Path:
    order = models.sort_values(["eps", "arch", "seed", "label"])
    order = order[order["run_id"].isin(set(tidy["model_a"]) | set(tidy["model_b"]))]
    labels = order["label"].tolist()
    mat = tidy.pivot_table(index="label_a", columns="label_b", values="value", aggfunc="mean")
    mat = mat.reindex(index=labels, columns=labels)
    mat = mat.combine_first(mat.T)  # symmetric measures are stored once per unordered pair
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.32 * n, 1.5 + 0.32 * n))
    im = ax.imshow(mat.to_numpy(dtype=float), cmap="viridis")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    eps = order["eps"].to_numpy()
    for k in np.flatnonzero(eps[1:] != eps[:-1]) + 0.5:  # group separators between eps values
        ax.axhline(k, color="white", lw=1.5)
        ax.axvline(k, color="white", lw=1.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("model b (column)")
    ax.set_ylabel("model a (row: its inputs for per-model sets)")
    return _png(fig, path)


def _groups_plot(tidy: pd.DataFrame, title: str, path: Path, seed: int) -> Path:
    measures = sorted(tidy["measure"].unique())
    fig, axes = plt.subplots(len(measures), 1, figsize=(9, 2.6 * len(measures)), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, name in zip(axes[:, 0], measures, strict=True):
        sub = tidy[(tidy["measure"] == name) & (tidy["status"] == "ok")]
        cats = sorted(sub[["eps_group", "arch_group"]].drop_duplicates().itertuples(index=False))
        data = [sub[(sub.eps_group == e) & (sub.arch_group == a)]["value"].to_numpy()
                for e, a in cats]
        if data:
            ax.boxplot(data, showfliers=False)
            for k, v in enumerate(data, start=1):  # strip: every pair as a jittered dot
                ax.plot(k + rng.uniform(-0.15, 0.15, v.size), v, "o", ms=3, alpha=0.6)
            ax.set_xticks(range(1, len(cats) + 1), [f"{e}\n{a}" for e, a in cats], fontsize=7)
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig, path)


def _vs_eps_plot(summary_eps: pd.DataFrame, title: str, path: Path) -> Path:
    measures = sorted(summary_eps["measure"].unique())
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, name in enumerate(measures):
        for group, style in (("different-arch", "-"), ("same-arch-different-seed", ":")):
            s = summary_eps[(summary_eps["measure"] == name)
                            & (summary_eps["arch_group"] == group)].sort_values("pair_eps")
            if s.empty:
                continue
            err = np.nan_to_num(np.array([s["estimate"] - s["ci_lo"], s["ci_hi"] - s["estimate"]],
                                         dtype=float))  # no interval: a bare point
            ax.errorbar(s["pair_eps"], s["estimate"], yerr=err, marker="o", capsize=3,
                        linestyle=style, color=f"C{k}",
                        label=name + ("" if group == "different-arch" else " (same arch)"))
    ax.set_xlabel("training eps (both models)")
    ax.set_ylabel("mean over same-eps pairs (95% CI, SPEC §10)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig, path)


def _fort_plot(fort: pd.DataFrame, title: str, path: Path) -> Path:
    same = fort[fort["pair_eps"].notna()]
    by = same.groupby("pair_eps")[["value", "fort_upper", "fort_lower"]].mean().sort_index()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(same["pair_eps"], same["value"], "o", alpha=0.5, label="pair agreement")
    ax1.plot(by.index, by["value"], "-o", color="k", label="mean agreement")
    ax1.plot(by.index, by["fort_upper"], "--", label="Fort: min-disagreement (upper)")
    ax1.plot(by.index, by["fort_lower"], "--", label="Fort: independent errors (lower)")
    ax1.set_xlabel("training eps (both models)")
    ax1.set_ylabel("agreement")
    ax1.legend(fontsize=7)
    ax2.plot(fort["fort_lower"], fort["value"], "o", alpha=0.6, label="vs independent-errors")
    ax2.plot(fort["fort_upper"], fort["value"], "x", alpha=0.6, label="vs min-disagreement")
    lim = [0, 1]
    ax2.plot(lim, lim, ":", color="grey")
    ax2.set_xlabel("Fort reference value")
    ax2.set_ylabel("observed agreement")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig, path)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"/>' \
           f"<figcaption>{html.escape(path.name)}</figcaption></figure>"


def _table(frame: pd.DataFrame, *, floatfmt: str = "{:.3f}") -> str:
    return frame.to_html(index=False, border=0, classes="tbl", na_rep="",
                         float_format=lambda v: floatfmt.format(v))


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:32px}
img{max-width:100%;border:1px solid #eee}figure{margin:12px 0}figcaption{color:#777;font-size:11px}
.tbl{border-collapse:collapse;font-size:12px}.tbl td,.tbl th{padding:3px 8px;border-bottom:1px solid #eee}
.note{background:#f6f6f6;padding:8px 12px;font-size:13px}"""


def build_report(out_dir: str | Path, *, sweep: str, seed: int = 0) -> Path:
    """Write every figure/table of ``reports/<sweep>/report/`` and return ``index.html``.

    Args:
        out_dir: ``reports/<sweep>`` holding ``pairs.parquet`` and ``models.parquet``.
        sweep: sweep name (for titles).
        seed: seed of the strip-plot jitter.
    """
    out_dir = Path(out_dir)
    rdir = out_dir / "report"
    rdir.mkdir(parents=True, exist_ok=True)
    pairs = ResultStore(out_dir / "pairs.parquet").load()
    models = pd.read_parquet(out_dir / "models.parquet")
    skipped_path = out_dir / "skipped.json"
    skipped = json.loads(skipped_path.read_text()) if skipped_path.exists() else {}
    tidy = annotate(pairs, models)
    tidy.to_csv(rdir / "pairs_grouped.csv", index=False)
    summary = summarise(tidy)
    summary.to_csv(rdir / "summary.csv", index=False)
    same = tidy[tidy["pair_eps"].notna()]
    vs_eps = summarise(same, keys=["dataset", "input_set", "measure", "params", "pair_eps",
                                   "arch_group"])
    vs_eps.to_csv(rdir / "vs_eps.csv", index=False)
    fort = fort_reference(tidy)
    fort_cols = ["dataset", "input_set", "label_a", "label_b", "eps_a", "eps_b", "clean_acc_a",
                 "clean_acc_b", "value", "fort_lower", "fort_upper", "within"]
    fort.reindex(columns=fort_cols).to_csv(rdir / "fort.csv", index=False)

    sections = [_section(dataset, iset, sub, models=models, rdir=rdir, seed=seed,
                         summary=summary, vs_eps=vs_eps, fort=fort)
                for (dataset, iset), sub in tidy.groupby(["dataset", "input_set"], sort=True)]
    page = _page(sweep, pairs, models, skipped, sections)
    index = rdir / "index.html"
    index.write_text(page)
    log.info("report written to %s", index)
    return index


def _section(dataset: str, iset: str, sub: pd.DataFrame, *, models: pd.DataFrame, rdir: Path,
             seed: int, summary: pd.DataFrame, vs_eps: pd.DataFrame, fort: pd.DataFrame) -> str:
    """The HTML section of one (dataset, input set): heatmaps, group plots, vs-eps, Fort."""
    figs = []
    for (measure, params), msub in sub.groupby(["measure", "params"], sort=True):
        ok = msub[msub["status"] == "ok"]
        if ok.empty:
            continue
        tag = f"{iset}_{measure}" + ("" if params == "{}" else f"_{zlib.crc32(params.encode()):x}")
        label = measure if params == "{}" else f"{measure} {params}"
        figs.append(_heatmap(ok, models, f"{label} on {iset} ({dataset})",
                             rdir / f"heatmap_{dataset}_{tag}.png"))
    figs.append(_groups_plot(sub, f"pair values by group, {iset} ({dataset})",
                             rdir / f"groups_{dataset}_{iset}.png", seed))
    ve = vs_eps[(vs_eps["dataset"] == dataset) & (vs_eps["input_set"] == iset)]
    if not ve.empty:
        figs.append(_vs_eps_plot(ve, f"similarity / agreement vs eps, {iset} ({dataset})",
                                 rdir / f"vs_eps_{dataset}_{iset}.png"))
    fsub = fort[(fort["dataset"] == dataset) & (fort["input_set"] == iset)]
    fort_html = ""
    if not fsub.empty and fsub["fort_upper"].notna().any():
        figs.append(_fort_plot(fsub, f"agreement vs Fort et al. reference values, {iset}",
                               rdir / f"fort_{dataset}_{iset}.png"))
        fort_html = (f"<p class='note'>{int(fsub['within'].sum())} of {len(fsub)} pairs "
                     f"lie between the Fort reference values.</p>")
    ssub = summary[(summary["dataset"] == dataset) & (summary["input_set"] == iset)]
    return (f"<h2>{html.escape(iset)} inputs ({html.escape(dataset)})</h2>"
            + fort_html + "".join(_img(p) for p in figs)
            + "<h3>Summary by group</h3>"
            + _table(ssub.drop(columns=["dataset", "input_set"])))


def _page(sweep: str, pairs: pd.DataFrame, models: pd.DataFrame, skipped: dict[str, str],
          sections: list[str]) -> str:
    """The whole HTML page: the models, the skipped runs, the sections, failed comparisons."""
    n_err = int((pairs["status"] == "error").sum())
    errors = pairs[pairs["status"] == "error"][["model_a", "model_b", "input_set", "measure",
                                                "error"]].head(50)
    skipped_html = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                           for k, v in skipped.items()) or "<li>none</li>"
    mcols = ["label", "arch", "width", "dataset", "threat_model", "eps", "seed", "clean_acc",
             "robust_acc", "run_id"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>unisweep report: "
            f"{html.escape(sweep)}</title><style>{_CSS}</style></head><body>"
            f"<h1>unisweep report: {html.escape(sweep)}</h1>"
            f"<p class='note'>{len(models)} models, {len(pairs)} comparisons "
            f"({n_err} failed). Values come from <code>pairs.parquet</code>; nothing here is "
            f"recomputed. Heatmaps: models ordered by eps, arch, seed; white lines separate eps "
            f"groups. Intervals (SPEC §10): {100 * LEVEL:.0f}% leave-one-architecture-out "
            f"jackknife of the mean over architecture pairs (columns estimate, ci_lo, ci_hi, "
            f"n_archs, n_seeds, method; method none = the grid cannot give one); pairs of "
            f"different architectures and of the same architecture are never pooled."
            f"</p><h2>Models</h2>"
            + _table(models.sort_values(["eps", "arch", "seed"])[mcols])
            + f"<h2>Skipped runs</h2><ul>{skipped_html}</ul>" + "".join(sections)
            + (f"<h2>Failed comparisons (first 50 of {n_err})</h2>" + _table(errors)
               if n_err else "")
            + "</body></html>")


BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def screenshot(html_path: str | Path, png_path: str | Path, *, width: int = 1280,
               height: int = 4000, timeout_s: float = 120.0) -> Path:
    """Render the report in headless Chromium and save a PNG (the browser check of the report).

    Raises:
        UserError: no Chromium on this machine (install it with ``apt-get install chromium``),
            or the browser failed (its stderr is quoted).
    """
    browser = next((b for b in (shutil.which(n) for n in BROWSERS) if b), None)
    if browser is None:
        raise UserError(f"no headless Chromium found (looked for {list(BROWSERS)}); install it "
                        f"with `apt-get install chromium` to check the report in a browser")
    png_path = Path(png_path).resolve()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", f"--screenshot={png_path}",
           Path(html_path).resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0 or not png_path.exists():
        raise UserError(f"{browser} could not render {html_path}: {proc.stderr.strip()[-500:]}")
    return png_path
