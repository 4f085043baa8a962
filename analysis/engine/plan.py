"""Pair planning: which (model a, model b) comparisons each measure spec needs, minus those the
result store already holds.

On a shared input set a symmetric measure needs each unordered pair once; a per-model
(asymmetric) input set gives entry (i, j) = measure(model i on inputs_i, model j on inputs_i)
for every i != j. Pairs name their two *items* (one model's artifacts on one input array,
``run_id@inputs16``), whose prepared states the engines look up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.engine.spec import MeasureSpec
from analysis.measures import get_measure

__all__ = ["PairTask", "item_id", "plan_pairs"]


@dataclass(frozen=True)
class PairTask:
    """One comparison: items ``a`` and ``b`` (states looked up by item id) and the row fields."""

    a: str
    b: str
    model_a: str
    model_b: str
    input_set: str
    inputs_hash: str
    dataset: str
    shared: bool = True

    def key(self, spec: MeasureSpec) -> tuple[str, ...]:
        """The result key of this pair under ``spec`` (``analysis.engine.store.KEY`` order)."""
        return (self.model_a, self.model_b, self.input_set, spec.name, spec.hash,
                self.inputs_hash)


def item_id(run_id: str, inputs_hash: str) -> str:
    """The id of one model's artifacts on one input array: ``<run_id>@<inputs_hash[:16]>``."""
    return f"{run_id}@{inputs_hash[:16]}"


def plan_pairs(blocks: Iterable[Any], specs: Sequence[MeasureSpec], *,
               done: set[tuple[str, ...]] | None = None) -> dict[MeasureSpec, list[PairTask]]:
    """The pairs to compute per measure spec, minus keys already stored (``done``).

    Args:
        blocks: ``analysis.inputs.Block``s (or objects with its fields input_set, dataset,
            inputs_key, rows, cols, shared).
        specs: measures to compute.
        done: stored result keys (``analysis.engine.store.KEY`` order); these pairs are skipped.

    Returns:
        spec -> list of ``PairTask``; symmetric measures on shared blocks get i < j only; a
        measure declared for some input sets only (``Measure.input_sets``, e.g. the inversion
        transfer) gets no pairs on the others.
    """
    done = done or set()
    out: dict[MeasureSpec, list[PairTask]] = {}
    for spec in specs:
        measure = get_measure(spec.name)
        symmetric = measure.symmetric
        tasks = []
        for blk in blocks:
            if measure.input_sets is not None and blk.input_set not in measure.input_sets:
                continue
            order = {r: i for i, r in enumerate(blk.cols)}
            for a in blk.rows:
                for b in blk.cols:
                    if a == b or (blk.shared and symmetric and order[b] < order[a]):
                        continue
                    t = PairTask(item_id(a, blk.inputs_key), item_id(b, blk.inputs_key), a, b,
                                 blk.input_set, blk.inputs_key, blk.dataset, blk.shared)
                    if t.key(spec) not in done:
                        tasks.append(t)
        out[spec] = tasks
    return out
