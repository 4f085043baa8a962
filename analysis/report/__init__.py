"""The report of an analysed sweep: ``reports/<sweep>/report/index.html``, answer first.

- ``page``: ``build_report``, the page (verdicts and similarity vs eps on the first screen, then
  the Fort plot, group statistics, heatmaps, inversions, training curves, reproduction details);
- ``tables``: pair rows joined with their models, grouped, with SPEC §10 intervals;
- ``figures``: small multiples, heatmaps, group plots, the Fort plot (each a PNG + CSV);
- ``inversion``: clean vs inverted similarity, inversion transfer, each model's inversions;
- ``epochs``: similarity over training (``vs_epoch.csv``), when several epochs were analysed;
- ``markup``: the page's HTML pieces; ``browser``: headless Chromium (screenshot, DOM).

Reads only the stored tables and JSON (STYLE rule 15): nothing is recomputed.
"""

from __future__ import annotations

from analysis.report.browser import dump_dom, screenshot
from analysis.report.epochs import EPOCH_KEYS, same_epoch_pairs, vs_epoch
from analysis.report.page import build_report
from analysis.report.tables import annotate, fort_reference, group_interval, summarise

__all__ = ["build_report", "screenshot", "dump_dom", "annotate", "summarise", "group_interval",
           "fort_reference", "vs_epoch", "same_epoch_pairs", "EPOCH_KEYS"]
