"""Similarity over training: pair values against the training epoch, one line per eps group.

An analysis by epoch (``python -m analysis run SWEEP --epochs all``) compares each trial's model
at every logged epoch with the other models at that epoch. `analysis.report.vs_epoch` summarises
those pairs into ``vs_epoch.csv`` (keys `EPOCH_KEYS`); `vs_epoch_figure` draws it: one panel per
measure (its own y scale), x = training epoch, one line per eps group for cross-architecture
pairs (solid) and same-architecture pairs across seeds (dotted), never pooled, with the SPEC §10
estimate and its 95% interval (``analysis.report.group_interval``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["EPOCH_KEYS", "same_epoch_pairs", "vs_epoch_figure"]

# The groups of vs_epoch.csv: pairs of two models trained at the same eps (pair_eps) and taken
# at the same training epoch (pair_epoch), cross- and same-architecture pairs apart (arch_group).
EPOCH_KEYS = ["dataset", "input_set", "measure", "params", "pair_eps", "pair_epoch",
              "arch_group"]
#: The arch groups drawn, and their line styles.
_STYLES = (("different-arch", "-", ""), ("same-arch-different-seed", ":", " (same arch)"))


def same_epoch_pairs(tidy: pd.DataFrame) -> pd.DataFrame:
    """The pairs (of `analysis.report.annotate`) whose models share their eps and their epoch."""
    return tidy[tidy["pair_eps"].notna() & tidy["pair_epoch"].notna()]


def vs_epoch_figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """One panel per measure: mean over same-eps, same-epoch pairs vs training epoch.

    Args:
        table: rows of ``vs_epoch.csv`` for one dataset and input set (``pair_epoch``,
            ``pair_eps``, ``arch_group``, ``measure``, ``estimate``, ``ci_lo``, ``ci_hi``).
        title: the figure's title.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    measures = sorted(table["measure"].unique())
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.4), squeeze=False)
    for ax, name in zip(axes[0], measures, strict=True):
        sub = table[table["measure"] == name]
        for k, (eps, by_eps) in enumerate(sub.groupby("pair_eps", sort=True)):
            for group, style, tag in _STYLES:
                s = by_eps[by_eps["arch_group"] == group].sort_values("pair_epoch")
                if s.empty:
                    continue
                err = np.nan_to_num(np.array([s["estimate"] - s["ci_lo"],
                                              s["ci_hi"] - s["estimate"]], dtype=float))
                ax.errorbar(s["pair_epoch"], s["estimate"], yerr=err, marker="o", capsize=3,
                            linestyle=style, color=f"C{k}", label=f"eps={eps:g}{tag}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training epoch (both models)")
        ax.set_ylabel("mean over same-eps pairs (95% CI, SPEC §10)", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
