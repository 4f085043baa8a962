"""(i) Hundreds of models: the whole default measure set over a synthetic model zoo.

M in {50, 200} models share a latent structure: each model's features (N = 2,000, D = 256,
float32) are a random mix of one shared 64-dimensional latent through a tanh plus noise; its
logits are a random linear head on its features, giving predicted labels and probabilities
(10 classes) against labels from a shared head on the latent. Every measure of
``analysis.engine.DEFAULT_MEASURES`` runs, RTD at the demo's cheap setting (2 subsamples of 64
points, ``DEMO_MEASURES``), through ``SerialEngine`` and through ``RayEngine`` with 2 actors
(1 CPU and 1 BLAS/torch thread each), both with ``backend="auto"`` (per measure the backend
measured faster on the CPU). At M = 200, RTD runs on the first 20 models (190 pairs) and its
per-pair cost is scaled to all pairs (the note says so).

Per (M, engine, measure): wall seconds and peak memory (resident set size above the idle
level, sampled every 50 ms, of this process plus the actors; the actors' figure includes the
object-store pages they map). Summary rows: the M = 200 zoo without RTD within 15 minutes, and
peak memory growing like M (O(M N D): 4x from M = 50 to 200), not like M^2 (16x).

Run: ``python -m bench --only bench_zoo`` (or ``python -m bench.bench_zoo``).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from analysis.engine import DEMO_MEASURES, RayEngine, SerialEngine, item_id, parse_measure, plan_pairs
from analysis.inputs import Block
from bench._common import print_rows, row

KEY = "z" * 64
BUDGET_S = 15 * 60  # the M = 200 zoo, everything but RTD (issue 14)
RTD_SAMPLE = 20  # models whose pairs time RTD at large M


def zoo(m: int, n: int, d: int, *, seed: int = 0, classes: int = 10) -> tuple[dict, tuple[str, ...]]:
    """M models' artifacts {features, preds, probs, labels} with a shared latent structure."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 64))
    labels = (latent @ rng.normal(size=(64, classes))).argmax(1).astype(np.int64)
    ids = tuple(f"z{i:03d}" for i in range(m))
    items = {}
    for i in ids:
        feats = np.tanh(latent @ rng.normal(size=(64, d)) / 4) + 0.3 * rng.normal(size=(n, d))
        logits = feats @ rng.normal(size=(d, classes)) / np.sqrt(d) * 4
        e = np.exp(logits - logits.max(1, keepdims=True))
        items[item_id(i, KEY)] = {"features": feats.astype(np.float32),
                                  "probs": (e / e.sum(1, keepdims=True)).astype(np.float32),
                                  "preds": logits.argmax(1).astype(np.int64), "labels": labels}
    return items, ids


def _rss(pid: int) -> int:
    """Resident bytes of a (local, Linux) process; 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRSS:
    """Peak summed RSS of some processes above their level at start, sampled in a thread."""

    def __init__(self, pids: list[int], every_s: float = 0.05):
        self.pids, self.every_s = pids, every_s
        self.base = sum(_rss(p) for p in pids)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_rss(p) for p in self.pids))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, sum(_rss(p) for p in self.pids))

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _run_spec(engine, spec, items, ids, pids) -> tuple[float, float, int, int, float]:
    """(wall s, peak MiB, pairs computed, pairs of the full zoo, prepare s per model) of one
    measure spec."""
    sample = ids[:RTD_SAMPLE] if spec.name == "rtd" and len(ids) > 50 else ids
    plan = plan_pairs([Block("clean", "zoo", KEY, sample, sample, True)], [spec])
    counted = [0, 0]

    def sink(rows):
        counted[0] += len(rows)
        counted[1] += sum(r["status"] != "ok" for r in rows)

    prep0 = engine.stats.prepare_s
    with PeakRSS(pids) as mem:
        t0 = time.perf_counter()
        engine.run(plan, items, sink=sink)
        wall = time.perf_counter() - t0
    if counted[1]:
        raise RuntimeError(f"bench_zoo: {counted[1]} error rows for {spec}")
    return (wall, mem.mib, counted[0], len(ids) * (len(ids) - 1) // 2,
            (engine.stats.prepare_s - prep0) / len(sample))


def _zoo_rows(m: int, n: int, d: int, engines: dict) -> tuple[list[dict], dict]:
    items, ids = zoo(m, n, d)
    specs = [parse_measure(s) for s in DEMO_MEASURES]
    rows, totals = [], {}
    for label, (engine, pids) in engines.items():
        total, peak = 0.0, 0.0
        for spec in specs:
            wall, mib, done, pairs, prep = _run_spec(engine, spec, items, ids, pids())
            per_pair = wall / done
            full = per_pair * pairs
            if spec.name != "rtd":
                total += full
            peak = max(peak, mib)
            scaled = f" (timed on {done} pairs of the first {RTD_SAMPLE} models, scaled)" \
                if done < pairs else ""
            rows.append(row(f"zoo M={m} N={n} D={d} {label}: {spec}", full, "", None, None,
                            "(figure)", None,
                            f"{pairs} pairs{scaled}; {per_pair * 1e3:.3g} ms per pair (prepare "
                            f"{prep * 1e3:.3g} ms per model included); peak "
                            f"memory +{mib:.0f} MiB; backend {engine.stats.backends.get(str(spec))}"
                            f"; 1-min load {os.getloadavg()[0]:.1f}"))
        totals[label] = (total, peak)
    return rows, totals


def _warm_up(engines: dict) -> None:
    """Every spec once on a 3-model zoo per engine: imports (torch, ripser) and first
    allocations land before any timing or memory baseline."""
    items, ids = zoo(3, 100, 8)
    plan = plan_pairs([Block("clean", "zoo", KEY, ids, ids, True)],
                      [parse_measure(s) for s in DEMO_MEASURES])
    for engine, _ in engines.values():
        engine.run(plan, items, sink=lambda rows: None)


def run(quick: bool = False) -> list[dict]:
    """Zoo rows for each M and engine, the 15-minute budget row and the memory-growth row."""
    import ray

    sizes = ((6, 300, 32), (12, 300, 32)) if quick else ((50, 2000, 256), (200, 2000, 256))
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    rows, totals = [], {}
    pool = RayEngine(actors=2, num_cpus=1, threads=1, backend="auto").start()
    try:
        me = os.getpid()
        engines = {"serial": (SerialEngine(backend="auto"), lambda: [me]),
                   "2 actors": (pool, lambda: [me, *pool.pids])}
        _warm_up(engines)
        for m, n, d in sizes:
            got, totals[m] = _zoo_rows(m, n, d, engines)
            rows += got
    finally:
        pool.close()
        if started:
            ray.shutdown()
    (m0, n, d), (m1, _, _) = sizes
    for label in ("serial", "2 actors"):
        total, _ = totals[m1][label]
        rows.append(row(f"zoo M={m1} {label}: all default measures but RTD", total,
                        "the budget", BUDGET_S, BUDGET_S / total,
                        "(quick: sizes too small)" if quick else "<= 15 min",
                        None if quick else total <= BUDGET_S,
                        f"sum of the per-measure walls above (N={n}, D={d}); 1-min load "
                        f"{os.getloadavg()[0]:.1f}"))
        grow = totals[m1][label][1] / max(totals[m0][label][1], 1e-9)
        rows.append(row(f"zoo peak memory M={m1} vs M={m0} ({label})", totals[m1][label][1],
                        f"peak MiB at M={m0}", totals[m0][label][1], grow,
                        f"<= 6x (O(M N D) grows {m1 // m0}x, O(M^2 N) {(m1 // m0) ** 2}x)",
                        None if quick else grow <= 6,
                        "value/baseline in MiB (not seconds): the largest per-measure peak"))
    return rows


if __name__ == "__main__":
    print_rows(run)
