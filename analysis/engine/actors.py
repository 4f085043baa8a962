"""The Ray-actor pair engine: the serial engine's pair list on a fixed pool of actors (STYLE 13).

``RayEngine`` ``ray.put``s each item's input array once, lets the actors prepare the states (each
state lands in the object store once), then tiles the pair list over the actors, which receive
object refs only. Actors restart on failure (``max_restarts``/``max_task_retries``); a tile whose
actor is gone for good is re-queued, and after two attempts its pairs become error rows. A test
asserts that its rows equal ``SerialEngine``'s. ``make_engine`` picks one of the two.

GPU actors (``gpus_per_actor`` > 0, fractions allowed: 0.25 packs four actors on one GPU) run
the torch backend on their GPU: states travel through the object store as numpy arrays and each
actor keeps the ones it has fetched on its device (``analysis.engine.state_cache``).

Ray is imported inside the methods that use it: the serial path (``actors=0``) and
``python -m analysis report`` need none.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from analysis.engine.compare import (EngineStats, Extras, Items, Progress, Rows, Sink,
                                     compare_pair, emit_rows, engine_backend, error_text,
                                     load_item, measure_arrays, prepare_state, result_row)
from analysis.engine.plan import PairTask
from analysis.engine.serial import SerialEngine
from analysis.engine.spec import MeasureSpec
from analysis.engine.state_cache import StateCache
from analysis.measures import check_backend, get_measure, portable_state
from trainables.errors import ConfigError, UserError

__all__ = ["RayEngine", "make_engine"]

log = logging.getLogger(__name__)


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
        backend, device: as for ``SerialEngine``; ``cuda`` is the actor's (first) Ray-assigned
            GPU.
        cache_bytes: budget of the live states kept on the device (``StateCache``).
        use_blocks: compare a tile in one vectorised pass where the measure has one on the
            states' backend (``Measure.cross_block``: the torch backend), else pair by pair.
    """

    def __init__(self, threads: int = 1, backend: str = "numpy", device: str = "cpu",
                 cache_bytes: int = 4 * 2**30, use_blocks: bool = True) -> None:
        # the measures are registered: this module imports them through analysis.engine.compare
        self.pid = os.getpid()
        self.threads = _limit_threads(threads)
        self.backend, self.device = backend, device
        self.cache = StateCache(device, cache_bytes)
        self.use_blocks = use_blocks
        try:
            check_backend(backend, device)  # this actor has the GPU it was given
            self.problem = ""
        except UserError as exc:
            self.problem = str(exc)

    def ping(self) -> tuple[int, str]:
        """(pid, problem) once the imports are done (used to wait for a warm pool); problem is
        why this actor cannot run its backend (no GPU), or empty."""
        return self.pid, self.problem

    def prepare(self, name: str, params: dict, X: np.ndarray, labels: np.ndarray | None):
        backend = engine_backend(name, self.backend, self.device)
        state = prepare_state(name, params, X, {} if labels is None else {"labels": labels},
                              backend)
        return portable_state(state)  # numpy arrays through the object store

    def run_tile(self, name: str, params: dict, labels: np.ndarray | None,
                 tasks: list[tuple[int, Any, Any, str, str]]):
        """Compare one tile; ``tasks`` = (index, state ref a, state ref b, model a, model b)."""
        import ray  # see the module docstring

        extra = {} if labels is None else {"labels": labels}
        refs = {r.hex(): r for _, a, b, _, _ in tasks for r in (a, b)}
        states = self.cache.get(f"{name}{sorted(params.items())}", list(refs),
                                lambda ids: ray.get([refs[i] for i in ids]))
        out = self._tile_block(name, params, extra, tasks, states) if self.use_blocks else None
        if out is not None:
            return self.pid, out
        out = []
        for idx, a, b, ma, mb in tasks:
            t0 = time.perf_counter()
            value, error = compare_pair(name, params, states[a.hex()], states[b.hex()], extra,
                                        (ma, mb))
            out.append((idx, value, error, time.perf_counter() - t0))
        return self.pid, out


    @staticmethod
    def _tile_block(name: str, params: dict, extra: dict, tasks: list, states: dict):
        """The tile's results from one ``cross_block`` (rows x cols of the tile), or None."""
        if any("__error__" in s for s in states.values()):
            return None  # the pair path writes the error rows
        rows = list(dict.fromkeys(a.hex() for _, a, _, _, _ in tasks))
        cols = list(dict.fromkeys(b.hex() for _, _, b, _, _ in tasks))
        t0 = time.perf_counter()
        try:
            mat = get_measure(name).cross_block([states[r] for r in rows],
                                                [states[c] for c in cols], **params, **extra)
        except Exception:  # noqa: BLE001 - the pair path records the error
            return None
        if mat is None:
            return None
        each = (time.perf_counter() - t0) / len(tasks)
        ri, ci = {r: i for i, r in enumerate(rows)}, {c: i for i, c in enumerate(cols)}
        return [(idx, float(mat[ri[a.hex()], ci[b.hex()]]), "", each)
                for idx, a, b, _, _ in tasks]


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
        backend, device: ``numpy`` / ``torch`` / ``auto`` on ``cpu`` or ``cuda`` (the actor's
            GPU; default ``cuda`` when ``gpus_per_actor`` > 0), resolved per measure.
        use_blocks: a tile of torch states in one ``cross_block`` pass (as ``SerialEngine``'s
            ``use_blocks``); False: pair by pair, the exact twin of the serial pair path.
        gpus_per_actor: GPUs each actor reserves (fractions allowed; needs torch or auto).
        cache_bytes: per actor, the live states kept on its device between tiles.

    ``run`` starts the pool and stops it afterwards, unless the pool was started beforehand
    with ``start()`` (or ``with RayEngine(...) as engine:``): then it is reused across runs
    and ``close()`` stops it. Actor start-up (a process, numpy and the measures imported)
    costs about a second per actor, which dominates small runs.
    """

    def __init__(self, *, actors: int = 2, tile_pairs: int | None = None, max_restarts: int = 4,
                 max_task_retries: int = 4, inflight: int = 2, num_cpus: float | None = None,
                 threads: int | None = None, backend: str = "numpy", device: str | None = None,
                 gpus_per_actor: float = 0.0, cache_bytes: int = 4 * 2**30,
                 use_blocks: bool = True):
        if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
            raise ConfigError(f"actors must be an integer >= 1, got actors={actors!r}")
        self.backend, self.device, self.gpus = _gpu_backend(backend, device, gpus_per_actor)
        self.cache_bytes, self.use_blocks = cache_bytes, use_blocks
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ConfigError(f"threads must be an integer >= 1 or None, got threads={threads!r}")
        self.n, self.tile_pairs, self.inflight = actors, tile_pairs, inflight
        self.max_restarts, self.max_task_retries = max_restarts, max_task_retries
        self.num_cpus = num_cpus
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
        import ray  # see the module docstring

        if not ray.is_initialized():
            raise ConfigError("the Ray engine needs a running Ray (ray.init); use actors=0 for "
                              "serial")
        cpus = self.num_cpus
        if cpus is None:
            avail = ray.cluster_resources().get("CPU", 1.0)
            cpus = min(1.0, avail / self.n)
        threads = self.threads or max(1, int(cpus))
        cls = ray.remote(num_cpus=cpus, num_gpus=self.gpus, max_restarts=self.max_restarts,
                         max_task_retries=self.max_task_retries)(_PairWorker)
        self.actors = [cls.remote(threads, self.backend, self.device, self.cache_bytes,
                                  self.use_blocks) for _ in range(self.n)]
        answers = ray.get([a.ping.remote() for a in self.actors])
        self._pids = {i: pid for i, (pid, _) in enumerate(answers)}
        problems = sorted({p for _, p in answers if p})
        if problems:
            self._stop()
            raise ConfigError(f"the Ray engine's actors cannot run backend={self.backend!r} on "
                              f"device={self.device!r}: {problems[0]}")

    def _stop(self) -> None:
        import ray  # see the module docstring

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        self._pids = {}

    def run(self, plan: Mapping[MeasureSpec, list[PairTask]], items: Items, *,
            sink: Sink, progress: Progress | None = None,
            extras: Extras | None = None) -> EngineStats:
        """``SerialEngine.run`` on the actor pool (same arguments, the same rows)."""
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
                    self.stats.backends[str(spec)] = str(
                        engine_backend(spec.name, self.backend, self.device))
                    t0 = time.perf_counter()
                    done = self._run_spec(spec, tasks, items, extras or {}, sink, progress,
                                          done, total)
                    self.stats.per_measure_s[str(spec)] = time.perf_counter() - t0
        finally:
            if owned:
                self._stop()
        return self.stats

    def _prepare_all(self, spec: MeasureSpec, tasks: list[PairTask], items: Items,
                     extras: Extras):
        import ray  # see the module docstring

        inputs_of = {}
        for t in tasks:
            inputs_of[t.a] = inputs_of[t.b] = t.inputs_hash
        labels: dict[str, Any] = {}
        states: dict[str, Any] = {}
        t0 = time.perf_counter()
        for k, (iid, inputs_hash) in enumerate(inputs_of.items()):
            X, extra = measure_arrays(spec.name, load_item(items[iid]),
                                      extras.get(inputs_hash))
            if "labels" in extra and inputs_hash not in labels:
                labels[inputs_hash] = ray.put(np.asarray(extra["labels"]))
            x_ref = ray.put(np.asarray(X))  # each item's array enters the object store once
            states[iid] = self.actors[k % self.n].prepare.remote(
                spec.name, spec.kwargs, x_ref, labels.get(inputs_hash))
        ray.wait(list(states.values()), num_returns=len(states), fetch_local=False)
        self.stats.prepare_s += time.perf_counter() - t0
        return states, labels

    def _run_spec(self, spec, tasks, items, extras, sink, progress, done, total) -> int:
        import ray  # see the module docstring

        states, labels = self._prepare_all(spec, tasks, items, extras)
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
                rows = [result_row(tasks[i], spec, None, "no live actor left to compute this pair",
                                   0.0) for tile, _ in queue for i in tile]
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
                            error_text(exc))
                dead.add(a)
                self.stats.requeued_tiles += 1
                if attempts < 2:
                    queue.append((tile, attempts + 1))
                else:
                    rows = [result_row(tasks[i], spec, None, error_text(exc), 0.0) for i in tile]
                    done += len(rows)
                    self._emit(rows, sink, progress, done, total)
                continue
            if self._pids.get(a, pid) != pid:
                self.stats.restarts += 1
                log.info("actor %d was restarted (pid %d -> %d)", a, self._pids[a], pid)
            self._pids[a] = pid
            rows = [result_row(tasks[i], spec, v, e, el) for i, v, e, el in out]
            done += len(rows)
            self._emit(rows, sink, progress, done, total)
        self.stats.compare_s += time.perf_counter() - t0
        del states, labels  # frees this measure's states in the object store
        return done

    def _emit(self, rows: Rows, sink: Sink, progress: Progress | None, done: int, total: int):
        emit_rows(self.stats, rows, sink, progress, done, total)


def _gpu_backend(backend: str, device: str | None, gpus: Any) -> tuple[str, str, float]:
    """(backend, device, gpus per actor) of a Ray engine, checked against each other."""
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus <= 64:
        raise ConfigError(f"gpus_per_actor must be a number in [0, 64] (fractions share a GPU), "
                          f"got gpus_per_actor={gpus!r}")
    if device is None:
        device = "cuda" if gpus > 0 else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not allowed for Ray actors; allowed: cpu, cuda "
                          "(an actor's GPU is the one Ray assigns it)")
    if gpus > 0 and backend == "numpy":
        raise ConfigError(f"gpus_per_actor={gpus!r} needs backend='torch' or 'auto'; the numpy "
                          "backend runs on the CPU only")
    check_backend(backend, device, here=False)
    if device == "cuda" and gpus == 0:
        raise ConfigError("device='cuda' needs gpus_per_actor > 0: actors without a GPU "
                          "reservation get no GPU")
    return backend, device, float(gpus)


def make_engine(actors: int | None, *, backend: str = "numpy", device: str | None = None,
                gpus_per_actor: float = 0.0, **kw: Any):
    """``SerialEngine`` for ``actors`` None/0, else a ``RayEngine`` with that many actors.

    ``backend`` / ``device`` go to either engine; ``gpus_per_actor`` needs actors.
    """
    if actors is None or actors == 0:
        if gpus_per_actor:
            raise ConfigError(f"gpus_per_actor={gpus_per_actor!r} needs actors >= 1; the serial "
                              "engine (actors=0) runs in this process, use device='cuda' there")
        return SerialEngine(backend=backend, device=device, **kw)
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 0:
        raise ConfigError(f"actors must be an integer >= 0 (0 = serial), got actors={actors!r}")
    return RayEngine(actors=actors, backend=backend, device=device, gpus_per_actor=gpus_per_actor)
