"""Similarity over training: pair values against the training epoch, one line per eps group.

An analysis by epoch (``python -m analysis run SWEEP --epochs all``) compares each trial's model
at every logged epoch with the other models at that epoch. ``vs_epoch`` summarises those pairs
into ``vs_epoch.csv`` (keys ``EPOCH_KEYS``); ``section_html`` draws it: one panel per measure (its
own y scale), x = training epoch, one colour per eps, cross-architecture pairs solid and
same-architecture pairs across seeds dashed, never pooled, each with its SPEC §10 interval. The
section appears only when some (dataset, input set) has pairs at two epochs or more.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from analysis.report.figures import small_multiples
from analysis.report.markup import figure, note, section
from analysis.report.tables import summarise

__all__ = ["EPOCH_KEYS", "same_epoch_pairs", "vs_epoch", "section_html"]

#: The groups of vs_epoch.csv: pairs of two models trained at the same eps (pair_eps) and taken
#: at the same training epoch (pair_epoch), cross- and same-architecture pairs apart (arch_group).
EPOCH_KEYS = ["dataset", "input_set", "measure", "params", "pair_eps", "pair_epoch",
              "arch_group"]
#: The arch groups drawn: (line style, legend suffix).
_LINES = {"different-arch": ("-", ""), "same-arch-different-seed": ("--", " (same arch)")}


def same_epoch_pairs(tidy: pd.DataFrame) -> pd.DataFrame:
    """The pairs (of ``annotate``) whose models share their eps and their training epoch."""
    if "pair_epoch" not in tidy:
        return tidy.iloc[:0]
    return tidy[tidy["pair_eps"].notna() & tidy["pair_epoch"].notna()]


def vs_epoch(tidy: pd.DataFrame) -> pd.DataFrame:
    """``vs_epoch.csv``: per ``EPOCH_KEYS`` group the ``summarise`` statistics of the pairs of
    models trained at the same eps and taken at the same epoch."""
    return summarise(same_epoch_pairs(tidy), keys=EPOCH_KEYS)


def section_html(by_epoch: pd.DataFrame, rdir: Path) -> str:
    """The "over training" section: a figure per (dataset, input set) with two epochs or more
    ("" when there is none)."""
    parts = []
    for (dataset, iset), sub in by_epoch.groupby(["dataset", "input_set"], sort=True):
        sub = sub[sub["arch_group"].isin(list(_LINES))]
        if sub["pair_epoch"].nunique() < 2:
            continue
        eps_values = sorted(sub["pair_eps"].unique())
        line = [f"eps={e:g}{_LINES[a][1]}" for e, a in zip(sub["pair_eps"], sub["arch_group"],
                                                          strict=True)]
        styles = {f"eps={e:g}{tag}": (f"eps={e:g}{tag}", f"C{k}", ls, "o")
                  for k, e in enumerate(eps_values) for ls, tag in _LINES.values()}
        path = small_multiples(
            sub.assign(line=line), x="pair_epoch", series="line", styles=styles,
            xlabel="training epoch (both models)",
            path=rdir / (f"vs_epoch_{dataset}_{iset}".replace(" ", "") + ".png"),
            title=f"Similarity vs training epoch, {iset} inputs ({dataset}): pairs of the same "
                  "eps and epoch")
        parts.append(f"<h3>Over training: {html.escape(iset)} inputs ({html.escape(dataset)})"
                     "</h3>" + figure(path))
    if not parts:
        return ""
    intro = note("Pairs of models trained at the same eps, both taken at the same training epoch "
                 "(checkpoints logged with `train.checkpoint_every`, analysed with `--epochs`); "
                 "data: `vs_epoch.csv`.")
    return section("training", "Over training", intro + "".join(parts))
