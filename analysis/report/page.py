"""``build_report``: the report page ``reports/<sweep>/report/index.html``, answer first.

First screen: the reproduction's verdict table (or, where it has not run, how to run it) and
small multiples of similarity and agreement vs eps. Then the Fort plot, the group statistics,
the heatmaps, the inversion section (when the sweep has inverted inputs), similarity over
training (when several epochs were analysed), the reproduction's details (rendered from
``reproduction.json`` by the same code that writes ``reproduction.md``), and the models.

Reads only ``pairs.parquet``, ``models.parquet``, ``skipped.json``, ``reproduction.json`` and
the cached inverted images; every figure is also a PNG + CSV beside the page.
"""

from __future__ import annotations

import html
import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.engine.store import ResultStore
from analysis.report import figures as fg
from analysis.report.epochs import section_html as epochs_section
from analysis.report.epochs import vs_epoch
from analysis.report import inversion as inv
from analysis.report.markup import CSS, figure, grid, note, section, table
from analysis.report.tables import (
    annotate,
    eps_text,
    final_ids,
    fort_reference,
    interval_text,
    measure_order,
    names,
    summarise,
)
from analysis.reproduction.document import to_html
from analysis.reproduction.stats import LEVEL
from analysis.reproduction.writer import render, verdict_table

__all__ = ["build_report", "VS_EPS_KEYS"]

log = logging.getLogger(__name__)

VS_EPS_KEYS = ["dataset", "input_set", "measure", "params", "pair_eps", "arch_group"]


@dataclass
class _Data:
    """What the page is built from (read once)."""

    sweep: str
    out_dir: Path
    rdir: Path
    pairs: pd.DataFrame
    models: pd.DataFrame
    skipped: dict[str, str]
    repro: dict[str, Any] | None
    repro_path: Path

    @property
    def order(self) -> pd.DataFrame:
        """The models in display order (eps, arch, seed) with their names."""
        return self.models.sort_values(["eps", "arch", "seed", "label"])[["run_id", "name", "eps"]]


def _load(out_dir: Path, sweep: str) -> _Data:
    rdir = out_dir / "report"
    rdir.mkdir(parents=True, exist_ok=True)
    skipped_path, repro_path = out_dir / "skipped.json", out_dir / "reproduction.json"
    models = pd.read_parquet(out_dir / "models.parquet")
    repro = json.loads(repro_path.read_text()) if repro_path.exists() else None
    return _Data(sweep, out_dir, rdir, ResultStore(out_dir / "pairs.parquet").load(), models,
                 json.loads(skipped_path.read_text()) if skipped_path.exists() else {}, repro,
                 repro_path)


def build_report(out_dir: str | Path, *, sweep: str, seed: int = 0) -> Path:
    """Write every figure/table of ``reports/<sweep>/report/`` and return ``index.html``.

    Args:
        out_dir: ``reports/<sweep>`` holding ``pairs.parquet`` and ``models.parquet`` (and,
            when the reproduction ran, ``reproduction.json``).
        sweep: sweep name (for titles).
        seed: seed of the strip-plot jitter.
    """
    d = _load(Path(out_dir), sweep)
    everything = annotate(d.pairs, d.models)
    everything.to_csv(d.rdir / "pairs_grouped.csv", index=False)
    by_epoch = vs_epoch(everything)
    by_epoch.to_csv(d.rdir / "vs_epoch.csv", index=False)
    epochs = epochs_section(by_epoch, d.rdir)
    # The sections show the final models; those at earlier epochs only the "over training" one.
    shown = final_ids(d.models)
    keep = d.pairs["model_a"].isin(shown) & d.pairs["model_b"].isin(shown)
    d.pairs, d.models, tidy = d.pairs[keep], d.models[d.models["run_id"].isin(shown)], \
        everything[keep]
    d.models = d.models.assign(name=names(d.models).to_numpy())
    summary = summarise(tidy)
    summary.to_csv(d.rdir / "summary.csv", index=False)
    vs_eps = summarise(tidy[tidy["pair_eps"].notna()], keys=VS_EPS_KEYS)
    vs_eps.to_csv(d.rdir / "vs_eps.csv", index=False)
    fort = fort_reference(tidy)
    parts = [_answer(d, vs_eps), _fort(fort, d.rdir), _statistics(tidy, summary, d.rdir, seed),
             _heatmaps(tidy, d), inv.section_html(tidy, d.pairs, d.models, d.order,
                                                  out_dir=d.out_dir, rdir=d.rdir),
             epochs, _details(d), _appendix(d)]
    index = d.rdir / "index.html"
    index.write_text(_page(d, [p for p in parts if p]))
    log.info("report written to %s", index)
    return index


def _sets(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, input set) pairs in page order: clean first, then the others by name."""
    keys = set(zip(frame["dataset"], frame["input_set"], strict=True))
    return sorted(keys, key=lambda k: (k[0], k[1] != "clean", k[1]))


def _tag(*parts: str) -> str:
    return "_".join(p.replace(" ", "") for p in parts)


def _verdicts(d: _Data) -> str:
    """The verdict tables of the reproduction, or how to run it."""
    if d.repro is None:
        return note(f"**No reproduction verdicts yet**: the SPEC §8 targets have not been "
                    f"evaluated for this sweep. Run `make reproduce SWEEP={d.sweep}` (or "
                    f"`python -m analysis reproduce {d.sweep}`), then `make report "
                    f"SWEEP={d.sweep}` to show them here.", cls="warn")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.repro_path.stat().st_mtime))
    stale = ""
    if d.repro_path.stat().st_mtime < (d.out_dir / "pairs.parquet").stat().st_mtime:
        stale = (f" It is older than `pairs.parquet`: rerun `make reproduce SWEEP={d.sweep}` for "
                 "verdicts on the current table.")
    blocks = [b for g in d.repro["groups"] for b in verdict_table(g)]
    link = "<a href='#details'>reproduction details</a>"
    return (to_html(blocks) + note(
        f"From `reproduction.json` ({when}): reasons and estimates in the reproduction details "
        f"below and in `reproduction.md`; {100 * LEVEL:.0f}% leave-one-architecture-out "
        f"jackknife intervals (SPEC §10).{stale}").replace("reproduction details", link, 1))


def _answer(d: _Data, vs_eps: pd.DataFrame) -> str:
    """The first screen: verdicts, then similarity and agreement vs eps per input set."""
    figs = []
    for dataset, iset in _sets(vs_eps):
        sub = vs_eps[(vs_eps["dataset"] == dataset) & (vs_eps["input_set"] == iset)]
        png = d.rdir / f"vs_eps_{_tag(dataset, iset)}.png"
        path = fg.small_multiples(
            sub, x="pair_eps", series="arch_group", path=png,
            xlabel="training eps (both models)",
            title=f"Similarity and agreement vs eps, {iset} inputs ({dataset}): mean over "
                  f"same-eps pairs, {100 * LEVEL:.0f}% interval")
        figs.append(figure(path, "Each panel has its own y scale; distances (lower = more "
                                 "similar) are labelled so. A wide interval is cut at the "
                                 "panel's edge (its ends are in the CSV); a point without a bar "
                                 "has no interval."))
    return "<div class='answer'>" + _verdicts(d) + "".join(figs) + "</div>"


def _fort(fort: pd.DataFrame, rdir: Path) -> str:
    parts = []
    for dataset, iset in _sets(fort):
        fsub = fort[(fort["dataset"] == dataset) & (fort["input_set"] == iset)]
        if fsub["fort_upper"].isna().all():
            continue
        path = fg.fort_plot(fsub, path=rdir / f"fort_{_tag(dataset, iset)}.png",
                            title=f"Agreement vs the Fort et al. reference values, {iset} "
                                  f"inputs ({dataset})")
        parts.append(note(f"{int(fsub['within'].sum())} of {len(fsub)} pairs lie between the "
                          f"two reference values computed from their clean accuracies.")
                     + figure(path))
    fort.reindex(columns=["dataset", "input_set", "name_a", "name_b", "eps_a", "eps_b",
                          "clean_acc_a", "clean_acc_b", "value", "fort_lower", "fort_upper",
                          "within"]).to_csv(rdir / "fort.csv", index=False)
    return section("fort", "Agreement against the Fort reference values", "".join(parts)) \
        if parts else ""


def _statistics(tidy: pd.DataFrame, summary: pd.DataFrame, rdir: Path, seed: int) -> str:
    """Per input set: the group statistics as one compact table, and the box + strip plots."""
    parts = []
    arch_cols = ["different-arch", "same-arch-different-seed", "same-arch-same-seed"]
    for dataset, iset in _sets(summary):
        s = summary[(summary["dataset"] == dataset) & (summary["input_set"] == iset)]
        cols = [c for c in arch_cols if (s["arch_group"] == c).any()]
        rows = []
        for (measure, params, group), g in s.groupby(["measure", "params", "eps_group"]):
            cells = {r["arch_group"]: f"{interval_text(r)} ({int(r['n'])} pairs)"
                     for _, r in g.iterrows() if r["n"]}
            rows.append((measure_order(measure), fg.panel_title(measure, params), group,
                         *(cells.get(c, "") for c in cols)))
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        sub = tidy[(tidy["dataset"] == dataset) & (tidy["input_set"] == iset)]
        path = fg.groups_plot(sub, path=rdir / f"groups_{_tag(dataset, iset)}.png", seed=seed,
                              title=f"Every pair's value by group, {iset} inputs ({dataset})")
        parts.append(f"<h3>{html.escape(iset)} inputs ({html.escape(dataset)})</h3>"
                     + table(["measure", "eps group", *cols], [r[1:] for r in rows])
                     + figure(path))
    body = note("Each cell: the mean over architecture pairs of the mean over their model pairs "
                f"[{100 * LEVEL:.0f}% interval] architectures x seeds (SPEC §10; all columns in "
                "`summary.csv`). Cross-architecture pairs are the headline; same-architecture "
                "pairs across seeds the baseline, never pooled.") + "".join(parts)
    return section("statistics", "Group statistics", body)


def _heatmaps(tidy: pd.DataFrame, d: _Data) -> str:
    parts = []
    for dataset, iset in _sets(tidy):
        sub = tidy[(tidy["dataset"] == dataset) & (tidy["input_set"] == iset)
                   & (tidy["status"] == "ok")]
        figs = []
        keys = sorted(set(zip(sub["measure"], sub["params"], strict=True)),
                      key=lambda k: (measure_order(k[0]), k[1]))
        for measure, params in keys:
            rows = sub[(sub["measure"] == measure) & (sub["params"] == params)]
            tag = measure + ("" if params == "{}" else f"_{zlib.crc32(params.encode()):x}")
            figs.append(figure(fg.heatmap(
                rows, d.order, measure=measure, title=f"{fg.panel_title(measure, params)}, "
                f"{iset} ({dataset})", path=d.rdir / f"heatmap_{_tag(dataset, iset, tag)}.png")))
        parts.append(f"<h3>{html.escape(iset)} inputs ({html.escape(dataset)})</h3>" + grid(figs))
    body = note("Models ordered by eps, arch, seed; white lines separate eps groups. Rows are "
                "model a: for per-model input sets (inverted images) row a's inputs are shown "
                "to column b. Distances use the reversed colours: darker = more similar "
                "everywhere.") + "".join(parts)
    return section("heatmaps", "Heatmaps", body)


def _details(d: _Data) -> str:
    if d.repro is None:
        return ""
    return section("details", "Reproduction details",
                   "<div class='details'>" + render(d.repro, "html", verdicts=False, shift=1)
                   + "</div>")


def _appendix(d: _Data) -> str:
    """The models, the skipped runs and the failed comparisons."""
    m = d.models.sort_values(["eps", "arch", "seed"])
    rows = [(r.name, r.arch, f"{r.width:g}", r.dataset, r.threat_model, eps_text(r.eps), r.seed,
             "" if pd.isna(r.clean_acc) else f"{r.clean_acc:.4f}",
             "" if pd.isna(r.robust_acc) else f"{r.robust_acc:.4f}", r.run_id)
            for r in m.itertuples(index=False)]
    models = table(["model", "arch", "width", "dataset", "threat", "eps", "seed", "clean_acc",
                    "robust_acc", "run_id"], rows)
    skipped = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                      for k, v in d.skipped.items()) or "<li>none</li>"
    err = d.pairs[d.pairs["status"] == "error"]
    failed = ""
    if len(err):
        failed = (f"<h3>Failed comparisons (first 50 of {len(err)})</h3>" + table(
            ["model_a", "model_b", "input_set", "measure", "error"],
            err[["model_a", "model_b", "input_set", "measure", "error"]].head(50).values))
    return section("models", "Models", models + f"<h3>Skipped runs</h3><ul>{skipped}</ul>"
                   + failed)


def _page(d: _Data, parts: list[str]) -> str:
    n_err = int((d.pairs["status"] == "error").sum())
    links = [("fort", "Fort"), ("statistics", "group statistics"), ("heatmaps", "heatmaps"),
             ("inversion", "inversion"), ("training", "over training"),
             ("details", "reproduction details"), ("models", "models")]
    body = "".join(parts)
    nav = " ".join(f"<a href='#{a}'>{t}</a>" for a, t in links if f"id='{a}'" in body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>unisweep report: "
            f"{html.escape(d.sweep)}</title><style>{CSS}</style></head><body>"
            f"<h1>unisweep report: {html.escape(d.sweep)}</h1>"
            f"<nav>{len(d.models)} models, {len(d.pairs)} comparisons ({n_err} failed), from "
            f"<code>pairs.parquet</code>; nothing here is recomputed. Below: {nav}</nav>"
            + body + "</body></html>")
