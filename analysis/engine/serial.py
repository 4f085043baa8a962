"""The serial pair engine: in-process, the reference every parallel path must equal (STYLE 13).

Work is split so that the per-model part is O(M) and the pair part only the cheap compare: per
measure spec, each item (one model's artifacts on one input array) is turned into a prepared
state once (``Measure.prepare``), then ``compare_states`` runs for every planned pair. On
shared blocks the measure's vectorised ``pairwise_block`` is used where it has one. Rows go to
the caller's sink (``analysis.engine.store.COLUMNS``); a failing comparison is a row with
``status="error"`` and the message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from analysis.engine.compare import (EngineStats, Extras, Items, Progress, Rows, Sink,
                                     compare_pair, emit_rows, engine_backend, has_block,
                                     load_item, measure_arrays, prepare_state, result_row)
from analysis.engine.plan import PairTask
from analysis.engine.spec import MeasureSpec
from analysis.measures import check_backend, get_measure

__all__ = ["SerialEngine"]


class SerialEngine:
    """In-process engine; the reference every parallel path must equal.

    Args:
        use_blocks: use ``pairwise_block`` on shared blocks when the measure has one.
        chunk_s: hand rows to the sink at least this often (seconds) on the pair-by-pair path.
        backend, device: ``numpy`` / ``torch`` / ``auto`` on ``cpu`` / ``cuda`` / ``cuda:N``
            (``analysis.measures._backend``), resolved per measure (``engine_backend``); the
            states of one input array live on that device while its pairs are computed.
    """

    def __init__(self, *, use_blocks: bool = True, chunk_s: float = 2.0, backend: str = "numpy",
                 device: str | None = None):
        self.use_blocks, self.chunk_s = use_blocks, chunk_s
        self.backend, self.device = backend, device
        check_backend(backend, device)  # a bad backend or a missing GPU stops here, not per pair
        self.stats = EngineStats()

    def run(self, plan: Mapping[MeasureSpec, list[PairTask]], items: Items, *,
            sink: Sink, progress: Progress | None = None,
            extras: Extras | None = None) -> EngineStats:
        """Compute every planned pair; rows go to ``sink``.

        Args:
            plan: ``plan_pairs``' output.
            items: item id -> its arrays, or the path of its cached ``.npz``.
            sink: takes each chunk of result rows.
            progress: ``progress(done, total)``.
            extras: inputs hash -> arrays shared by the items on those inputs (the inverted
                set's ``seed_labels``), for measures whose ``labels_from`` names one.
        """
        total = sum(len(v) for v in plan.values())
        done = 0
        for spec, tasks in plan.items():
            t_spec = time.perf_counter()
            used = engine_backend(spec.name, self.backend, self.device)
            self.stats.backends[str(spec)] = str(used)
            # group by inputs (a per-model set has one inputs hash per row model): only one
            # group's states live at a time
            groups: dict[str, list[PairTask]] = {}
            for t in tasks:
                groups.setdefault(t.inputs_hash, []).append(t)
            for group in groups.values():
                for rows in self._run_group(spec, group, items, (extras or {}).get(
                        group[0].inputs_hash)):
                    done += len(rows)
                    emit_rows(self.stats, rows, sink, progress, done, total)
            self.stats.per_measure_s[str(spec)] = time.perf_counter() - t_spec
        return self.stats

    def _run_group(self, spec: MeasureSpec, group: list[PairTask], items: Items,
                   extras: Mapping | None) -> Iterator[Rows]:
        """Rows of one input array's pairs, yielded in chunks (progress + periodic flushes)."""
        ids = list(dict.fromkeys([t.a for t in group] + [t.b for t in group]))
        t0 = time.perf_counter()
        states, extra = {}, {}
        backend = engine_backend(spec.name, self.backend, self.device)
        for i in ids:
            X, extra = measure_arrays(spec.name, load_item(items[i]), extras)
            states[i] = prepare_state(spec.name, spec.kwargs, X, extra, backend)
        self.stats.prepare_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.use_blocks and group[0].shared and len(ids) > 2 and \
                has_block(spec.name, backend) and \
                not any("__error__" in s for s in states.values()):
            try:
                mat = get_measure(spec.name).pairwise_block([states[i] for i in ids],
                                                            **spec.kwargs, **extra)
            except Exception:  # noqa: BLE001 - fall back to pairs, which record the error
                mat = None
            if mat is not None:
                pos = {i: k for k, i in enumerate(ids)}
                each = (time.perf_counter() - t0) / len(group)
                self.stats.compare_s += time.perf_counter() - t0
                yield [result_row(t, spec, float(mat[pos[t.a], pos[t.b]]), "", each)
                       for t in group]
                return
        rows: Rows = []
        last = time.perf_counter()
        for t in group:
            t1 = time.perf_counter()
            value, error = compare_pair(spec.name, spec.kwargs, states[t.a], states[t.b], extra,
                                        (t.model_a, t.model_b))
            rows.append(result_row(t, spec, value, error, time.perf_counter() - t1))
            if time.perf_counter() - last > self.chunk_s:
                self.stats.compare_s += time.perf_counter() - last
                yield rows
                rows, last = [], time.perf_counter()
        self.stats.compare_s += time.perf_counter() - last
        if rows:
            yield rows
