"""All-pairs engine: a serial engine and a Ray-actor engine over the same pair list (STYLE 13).

Work is split so that the per-model part is O(M) and the pair part is only the cheap compare:

1. *items*: one model's artifacts on one input array (``run_id@inputs``). Per measure spec,
   each item is turned into a prepared state once (``Measure.prepare``).
2. *pairs*: ``compare_states(state_a, state_b)`` for every planned pair. On a shared input set a
   symmetric measure needs each unordered pair once; a per-model (asymmetric) input set gives
   entry (i, j) = measure(model i on inputs_i, model j on inputs_i) for every i != j.

``SerialEngine`` runs in-process and uses the measure's vectorised ``pairwise_block`` on shared
blocks where the measure has one. ``RayEngine`` ``ray.put``s each item's input array once, lets
a fixed pool of actors prepare the states (each state lands in the object store once), then
tiles the pair list over the actors, which receive object refs only. Actors restart on failure
(``max_restarts``/``max_task_retries``); a tile whose actor is gone for good is re-queued.
Both engines emit tidy rows (see ``analysis.store.COLUMNS``); a failing comparison is a row
with ``status="error"`` and the message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.store import canonical_params, params_hash
from trainables.errors import ConfigError

__all__ = [
    "DEFAULT_MEASURES",
    "MeasureSpec",
    "parse_measure",
    "PairTask",
    "plan_pairs",
    "SerialEngine",
    "RayEngine",
    "make_engine",
]

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
Sink = Callable[[Rows], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MeasureSpec:
    """A registered measure plus its params (no arrays: labels come from the inputs)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def canonical(self) -> str:
        return canonical_params(self.kwargs)

    @property
    def hash(self) -> str:
        return params_hash(self.name, self.kwargs)

    def __str__(self) -> str:
        return self.name + "".join(f":{k}={v}" for k, v in self.params)


# The paper's set (SPEC §3.1, §3.3) plus biased linear CKA.
DEFAULT_MEASURES: tuple[MeasureSpec, ...] = (
    MeasureSpec("linear_cka_debiased"),
    MeasureSpec("linear_cka"),
    MeasureSpec("procrustes_sim"),
    MeasureSpec("knn_jaccard", (("k", 10),)),
    MeasureSpec("rtd"),
    MeasureSpec("agreement"),
    MeasureSpec("jsd_sim"),
    MeasureSpec("cohen_kappa"),
)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_measure(text: str) -> MeasureSpec:
    """Parse ``name[:key=value[:key=value...]]`` (values as JSON, else strings); validates.

    Raises:
        MeasureInputError: unknown measure (lists the known ones) or invalid params.
    """
    from analysis.measures._base import MeasureInputError, get_measure

    name, *parts = text.strip().split(":")
    measure = get_measure(name)
    params = []
    for part in parts:
        if "=" not in part:
            raise MeasureInputError(f"measure spec {text!r}: {part!r} is not key=value")
        key, raw = part.split("=", 1)
        params.append((key.strip(), _value(raw.strip())))
    if "labels" in dict(params):
        raise MeasureInputError(f"measure spec {text!r}: labels come from the input set")
    measure.resolve_params({**dict(params), **({"labels": np.zeros(0, np.int64)}
                                               if "labels" in measure.params else {})})
    return MeasureSpec(name, tuple(sorted(params)))


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
        return (self.model_a, self.model_b, self.input_set, spec.name, spec.hash,
                self.inputs_hash)


def item_id(run_id: str, inputs_hash: str) -> str:
    return f"{run_id}@{inputs_hash[:16]}"


def plan_pairs(blocks: Iterable[Any], specs: Sequence[MeasureSpec], *,
               done: set[tuple[str, ...]] | None = None) -> dict[MeasureSpec, list[PairTask]]:
    """The pairs to compute per measure spec, minus keys already stored (``done``).

    Args:
        blocks: ``analysis.extract.Block``-like objects (input_set, dataset, inputs_key, rows,
            cols, shared).
        specs: measures to compute.
        done: stored result keys (``analysis.store.KEY`` order); these pairs are skipped.

    Returns:
        spec -> list of ``PairTask``; symmetric measures on shared blocks get i < j only.
    """
    from analysis.measures._base import get_measure

    done = done or set()
    out: dict[MeasureSpec, list[PairTask]] = {}
    for spec in specs:
        symmetric = get_measure(spec.name).symmetric
        tasks = []
        for blk in blocks:
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


# --- items: the arrays one measure needs from one model on one input array -------------------


def measure_arrays(name: str, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """The input a measure takes (features / predicted labels / probs) and its label param."""
    from analysis.measures._base import get_measure

    m = get_measure(name)
    which = {"features": "features", "labels": "preds", "probs": "probs"}[m.input]
    extra = {"labels": arrays["labels"]} if "labels" in m.params else {}
    return arrays[which], extra


def _load_item(source: Mapping[str, np.ndarray] | str | os.PathLike) -> Mapping[str, np.ndarray]:
    if isinstance(source, Mapping):
        return source
    with np.load(Path(source), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _row(t: PairTask, spec: MeasureSpec, value: float | None, error: str, elapsed: float):
    ok = error == "" and value is not None and math.isfinite(value)
    if error == "" and not ok:
        error = f"measure returned a non-finite value ({value!r})"
    return {"model_a": t.model_a, "model_b": t.model_b, "input_set": t.input_set,
            "measure": spec.name, "params": spec.canonical, "value": value if ok else math.nan,
            "status": "ok" if ok else "error", "error": error, "params_hash": spec.hash,
            "inputs_hash": t.inputs_hash, "dataset": t.dataset, "elapsed_s": float(elapsed)}


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _prepare(name: str, params: dict, X: np.ndarray, extra: dict) -> dict:
    """Measure.prepare, with a failure returned as ``{"__error__": msg}`` (never raised)."""
    from analysis.measures._base import get_measure

    try:
        return get_measure(name).prepare(np.asarray(X), **params, **extra)
    except Exception as exc:  # noqa: BLE001 - becomes error rows of every pair of this item
        return {"__error__": _err(exc)}


def _compare(name: str, params: dict, sa: dict, sb: dict, extra: dict,
             who: tuple[str, str]) -> tuple[float | None, str]:
    """compare_states, with a failure (or a failed prepare) returned as an error message."""
    from analysis.measures._base import get_measure

    for s, model in ((sa, who[0]), (sb, who[1])):
        if "__error__" in s:
            return None, f"prepare failed for {model}: {s['__error__']}"
    try:
        return get_measure(name).compare_states(sa, sb, **params, **extra), ""
    except Exception as exc:  # noqa: BLE001 - recorded as an error row
        return None, _err(exc)


def _has_block(name: str) -> bool:
    from analysis.measures._base import Measure, get_measure

    return type(get_measure(name))._block is not Measure._block


@dataclass
class EngineStats:
    pairs: int = 0
    errors: int = 0
    prepare_s: float = 0.0
    compare_s: float = 0.0
    per_measure_s: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    requeued_tiles: int = 0


class SerialEngine:
    """In-process engine; the reference every parallel path must equal.

    Args:
        use_blocks: use ``pairwise_block`` on shared blocks when the measure has one.
        chunk_s: hand rows to the sink at least this often (seconds) on the pair-by-pair path.
    """

    def __init__(self, *, use_blocks: bool = True, chunk_s: float = 2.0):
        self.use_blocks, self.chunk_s = use_blocks, chunk_s
        self.stats = EngineStats()

    def run(self, plan: Mapping[MeasureSpec, list[PairTask]],
            items: Mapping[str, Mapping[str, np.ndarray] | str | os.PathLike], *,
            sink: Sink, progress: Progress | None = None) -> EngineStats:
        total = sum(len(v) for v in plan.values())
        done = 0
        for spec, tasks in plan.items():
            t_spec = time.perf_counter()
            # group by inputs (a per-model set has one inputs hash per row model): only one
            # group's states live at a time
            groups: dict[str, list[PairTask]] = {}
            for t in tasks:
                groups.setdefault(t.inputs_hash, []).append(t)
            for group in groups.values():
                for rows in self._run_group(spec, group, items):
                    done += len(rows)
                    self.stats.pairs += len(rows)
                    self.stats.errors += sum(r["status"] == "error" for r in rows)
                    sink(rows)
                    if progress:
                        progress(done, total)
            self.stats.per_measure_s[str(spec)] = time.perf_counter() - t_spec
        return self.stats

    def _run_group(self, spec: MeasureSpec, group: list[PairTask], items) -> Iterator[Rows]:
        """Rows of one input array's pairs, yielded in chunks (progress + periodic flushes)."""
        ids = list(dict.fromkeys([t.a for t in group] + [t.b for t in group]))
        t0 = time.perf_counter()
        states, extra = {}, {}
        for i in ids:
            X, extra = measure_arrays(spec.name, _load_item(items[i]))
            states[i] = _prepare(spec.name, spec.kwargs, X, extra)
        self.stats.prepare_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.use_blocks and group[0].shared and len(ids) > 2 and _has_block(spec.name) and \
                not any("__error__" in s for s in states.values()):
            try:
                from analysis.measures._base import get_measure

                mat = get_measure(spec.name).pairwise_block([states[i] for i in ids],
                                                            **spec.kwargs, **extra)
            except Exception:  # noqa: BLE001 - fall back to pairs, which record the error
                mat = None
            if mat is not None:
                pos = {i: k for k, i in enumerate(ids)}
                each = (time.perf_counter() - t0) / len(group)
                self.stats.compare_s += time.perf_counter() - t0
                yield [_row(t, spec, float(mat[pos[t.a], pos[t.b]]), "", each) for t in group]
                return
        rows: Rows = []
        last = time.perf_counter()
        for t in group:
            t1 = time.perf_counter()
            value, error = _compare(spec.name, spec.kwargs, states[t.a], states[t.b], extra,
                                    (t.model_a, t.model_b))
            rows.append(_row(t, spec, value, error, time.perf_counter() - t1))
            if time.perf_counter() - last > self.chunk_s:
                self.stats.compare_s += time.perf_counter() - last
                yield rows
                rows, last = [], time.perf_counter()
        self.stats.compare_s += time.perf_counter() - last
        if rows:
            yield rows


def _limit_threads(n: int) -> int:
    """Cap this process's BLAS / OpenMP / torch thread pools at ``n`` (an actor's CPU share).

    Ray already sets ``OMP_NUM_THREADS`` for its workers (1 for actors of <= 1 CPU; OpenBLAS
    follows it), but not when the variable is set in the driver's environment, which workers
    inherit: then every actor's BLAS uses every core of the node and two actors on two cores
    run four compute threads. The cap makes the share explicit whatever the environment.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)  # libraries loaded after this point
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        log.warning("threadpoolctl is missing: BLAS threads of this actor are not capped")
    else:
        threadpool_limits(limits=n)  # libraries already loaded (numpy's OpenBLAS)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n


class _PairWorker:
    """Ray actor body: prepares states and compares tiles of pairs (imports measures once).

    Args:
        threads: BLAS/OpenMP threads for this actor (its CPU share, at least 1).
    """

    def __init__(self, threads: int = 1) -> None:
        import analysis.measures  # noqa: F401 - registers every measure in this process

        self.pid = os.getpid()
        self.threads = _limit_threads(threads)

    def ping(self) -> int:
        """Returns the actor's pid once its imports are done (used to wait for a warm pool)."""
        return self.pid

    def prepare(self, name: str, params: dict, X: np.ndarray, labels: np.ndarray | None):
        return _prepare(name, params, X, {} if labels is None else {"labels": labels})

    def run_tile(self, name: str, params: dict, labels: np.ndarray | None,
                 tasks: list[tuple[int, Any, Any, str, str]]):
        """Compare one tile; ``tasks`` = (index, state ref a, state ref b, model a, model b)."""
        import ray

        extra = {} if labels is None else {"labels": labels}
        refs = list(dict.fromkeys([r for _, a, b, _, _ in tasks for r in (a, b)]))
        states = dict(zip(refs, ray.get(refs), strict=True))
        out = []
        for idx, a, b, ma, mb in tasks:
            t0 = time.perf_counter()
            value, error = _compare(name, params, states[a], states[b], extra, (ma, mb))
            out.append((idx, value, error, time.perf_counter() - t0))
        return self.pid, out


def _tiles(tasks: list[PairTask], target: int) -> list[list[int]]:
    """Square-ish tiles of the pair list (row chunk x col chunk within one input array), so an
    actor fetches ~2*sqrt(target) states for ~target pairs."""
    side = max(1, math.isqrt(max(1, target)))
    rows_of: dict[str, dict[str, int]] = {}
    cols_of: dict[str, dict[str, int]] = {}
    buckets: dict[tuple[str, int, int], list[int]] = {}
    for i, t in enumerate(tasks):
        r = rows_of.setdefault(t.inputs_hash, {}).setdefault(t.model_a, len(rows_of[t.inputs_hash]))
        c = cols_of.setdefault(t.inputs_hash, {}).setdefault(t.model_b, len(cols_of[t.inputs_hash]))
        buckets.setdefault((t.inputs_hash, r // side, c // side), []).append(i)
    tiles: list[list[int]] = []
    for idx in buckets.values():  # a per-model set has one row per inputs: split long rows
        tiles.extend(idx[k:k + target] for k in range(0, len(idx), target))
    return tiles


class RayEngine:
    """Ray-actor engine: a fixed pool of restartable actors, tiles of pairs, object refs only.

    Args:
        actors: pool size (>= 1). Each actor reserves ``num_cpus`` (default: 1, or less when
            the cluster has fewer CPUs than actors, so the pool always starts).
        tile_pairs: pairs per tile (default: total / (8 * actors), clipped to [1, 512]).
        max_restarts, max_task_retries: Ray actor fault tolerance.
        inflight: tiles queued per actor at once.
        threads: BLAS/OpenMP threads per actor (default: its CPU reservation rounded down,
            at least 1), so the pool never runs more compute threads than it reserved.

    ``run`` starts the pool and stops it afterwards, unless the pool was started beforehand
    with ``start()`` (or ``with RayEngine(...) as engine:``): then it is reused across runs
    and ``close()`` stops it. Actor start-up (a process, numpy and the measures imported)
    costs about a second per actor, which dominates small runs.
    """

    def __init__(self, *, actors: int = 2, tile_pairs: int | None = None, max_restarts: int = 4,
                 max_task_retries: int = 4, inflight: int = 2, num_cpus: float | None = None,
                 threads: int | None = None):
        if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
            raise ConfigError(f"actors must be an integer >= 1, got actors={actors!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ConfigError(f"threads must be an integer >= 1 or None, got threads={threads!r}")
        self.n, self.tile_pairs, self.inflight = actors, tile_pairs, inflight
        self.max_restarts, self.max_task_retries, self.num_cpus = max_restarts, max_task_retries, num_cpus
        self.threads = threads
        self.actors: list[Any] = []
        self.stats = EngineStats()
        self._pids: dict[int, int] = {}

    def start(self) -> RayEngine:
        """Start the pool (if not running) and wait until every actor has its imports done."""
        if not self.actors:
            self._start()
        return self

    def close(self) -> None:
        """Stop the pool (no-op when it is not running)."""
        self._stop()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running actors (as last seen), for CPU accounting."""
        return list(self._pids.values())

    def __enter__(self) -> RayEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        import ray

        if not ray.is_initialized():
            raise ConfigError("the Ray engine needs a running Ray (ray.init); use actors=0 for serial")
        cpus = self.num_cpus
        if cpus is None:
            avail = ray.cluster_resources().get("CPU", 1.0)
            cpus = min(1.0, avail / self.n)
        threads = self.threads or max(1, int(cpus))
        cls = ray.remote(num_cpus=cpus, max_restarts=self.max_restarts,
                         max_task_retries=self.max_task_retries)(_PairWorker)
        self.actors = [cls.remote(threads) for _ in range(self.n)]
        self._pids = dict(enumerate(ray.get([a.ping.remote() for a in self.actors])))

    def _stop(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        self._pids = {}

    def run(self, plan: Mapping[MeasureSpec, list[PairTask]],
            items: Mapping[str, Mapping[str, np.ndarray] | str | os.PathLike], *,
            sink: Sink, progress: Progress | None = None) -> EngineStats:
        total = sum(len(v) for v in plan.values())
        if total == 0:
            return self.stats
        owned = not self.actors  # a pool started by start() outlives this run
        if owned:
            self._start()
        try:
            done = 0
            for spec, tasks in plan.items():
                if tasks:
                    t0 = time.perf_counter()
                    done = self._run_spec(spec, tasks, items, sink, progress, done, total)
                    self.stats.per_measure_s[str(spec)] = time.perf_counter() - t0
        finally:
            if owned:
                self._stop()
        return self.stats

    def _prepare_all(self, spec: MeasureSpec, tasks: list[PairTask], items):
        import ray

        inputs_of = {}
        for t in tasks:
            inputs_of[t.a] = inputs_of[t.b] = t.inputs_hash
        labels: dict[str, Any] = {}
        states: dict[str, Any] = {}
        t0 = time.perf_counter()
        for k, (iid, inputs_hash) in enumerate(inputs_of.items()):
            X, extra = measure_arrays(spec.name, _load_item(items[iid]))
            if "labels" in extra and inputs_hash not in labels:
                labels[inputs_hash] = ray.put(np.asarray(extra["labels"]))
            x_ref = ray.put(np.asarray(X))  # each item's array enters the object store once
            states[iid] = self.actors[k % self.n].prepare.remote(
                spec.name, spec.kwargs, x_ref, labels.get(inputs_hash))
        ray.wait(list(states.values()), num_returns=len(states), fetch_local=False)
        self.stats.prepare_s += time.perf_counter() - t0
        return states, labels

    def _run_spec(self, spec, tasks, items, sink, progress, done, total) -> int:
        import ray
        from collections import deque

        states, labels = self._prepare_all(spec, tasks, items)
        target = self.tile_pairs or min(512, max(1, len(tasks) // (8 * self.n)))
        queue = deque((tile, 0) for tile in _tiles(tasks, target))
        slots = [0] * self.n
        dead: set[int] = set()
        inflight: dict[Any, tuple[int, list[int], int]] = {}
        t0 = time.perf_counter()
        while queue or inflight:
            live = [a for a in range(self.n) if a not in dead]
            for a in live:
                while queue and slots[a] < self.inflight:
                    tile, attempts = queue.popleft()
                    args = [(i, states[tasks[i].a], states[tasks[i].b], tasks[i].model_a,
                             tasks[i].model_b) for i in tile]
                    ref = self.actors[a].run_tile.remote(
                        spec.name, spec.kwargs, labels.get(tasks[tile[0]].inputs_hash), args)
                    inflight[ref] = (a, tile, attempts)
                    slots[a] += 1
            if not inflight:  # every actor is gone for good: the rest become error rows
                rows = [_row(tasks[i], spec, None, "no live actor left to compute this pair", 0.0)
                        for tile, _ in queue for i in tile]
                queue.clear()
                done += len(rows)
                self._emit(rows, sink, progress, done, total)
                break
            ready, _ = ray.wait(list(inflight), num_returns=1)
            a, tile, attempts = inflight.pop(ready[0])
            slots[a] -= 1
            try:
                pid, out = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - actor lost beyond its restarts
                log.warning("tile of %d pairs failed on actor %d (%s); re-queued", len(tile), a,
                            _err(exc))
                dead.add(a)
                self.stats.requeued_tiles += 1
                if attempts < 2:
                    queue.append((tile, attempts + 1))
                else:
                    rows = [_row(tasks[i], spec, None, _err(exc), 0.0) for i in tile]
                    done += len(rows)
                    self._emit(rows, sink, progress, done, total)
                continue
            if self._pids.get(a, pid) != pid:
                self.stats.restarts += 1
                log.info("actor %d was restarted (pid %d -> %d)", a, self._pids[a], pid)
            self._pids[a] = pid
            rows = [_row(tasks[i], spec, v, e, el) for i, v, e, el in out]
            done += len(rows)
            self._emit(rows, sink, progress, done, total)
        self.stats.compare_s += time.perf_counter() - t0
        del states, labels  # frees this measure's states in the object store
        return done

    def _emit(self, rows: Rows, sink: Sink, progress: Progress | None, done: int, total: int):
        self.stats.pairs += len(rows)
        self.stats.errors += sum(r["status"] == "error" for r in rows)
        sink(rows)
        if progress:
            progress(done, total)


def make_engine(actors: int | None, **kw: Any):
    """``SerialEngine`` for ``actors`` None/0, else a ``RayEngine`` with that many actors."""
    if actors is None or actors == 0:
        return SerialEngine(**kw)
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 0:
        raise ConfigError(f"actors must be an integer >= 0 (0 = serial), got actors={actors!r}")
    return RayEngine(actors=actors)
