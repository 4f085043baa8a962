"""(f) The all-pairs engine on Ray: 1 actor vs 2 actors for a compute-bound measure set.

The pools are started and warmed (process up, numpy and the measures imported, BLAS threads
capped at the actor's CPU share) before any timing; each timed run is the engine's whole
``run`` (arrays into the object store, states prepared on the actors, tiles compared). The
1-actor and 2-actor pools live side by side (each actor reserves half a CPU, one BLAS thread)
and runs alternate A, B, A, B, ... so machine load drifts hit both; the ratio is the median of
the per-round ratios. The in-process ``SerialEngine`` pair by pair, on one BLAS thread like one
actor (so the row shows what Ray costs, not a thread-count difference), is reported as context.

Run: ``python -m bench --only bench_pairwise`` (or ``python -m bench.bench_pairwise``).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from analysis.engine import MeasureSpec, RayEngine, SerialEngine, item_id, plan_pairs
from analysis.inputs import Block
from bench._common import print_rows, row

SPECS = (MeasureSpec("procrustes_sim"), MeasureSpec("linear_cka_debiased"))
TARGET = 1.7


def _items(m: int, n: int, d: int, seed: int = 0) -> tuple[dict, list[Block]]:
    """M models' float32 features (N, D) sharing a latent, on one shared input set."""
    rng = np.random.default_rng(seed)
    key = "b" * 64
    ids = tuple(f"m{i:02d}" for i in range(m))
    latent = rng.normal(size=(n, d)).astype(np.float32)
    items = {}
    for i in ids:
        mix = rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
        feats = latent @ mix + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
        items[item_id(i, key)] = {"features": feats}
    return items, [Block("clean", "bench", key, ids, ids, True)]


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these (local, Linux) processes so far; nan elsewhere."""
    total = 0.0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    except OSError:
        return float("nan")
    return total / os.sysconf("SC_CLK_TCK")


def _timed(engine, plan, items) -> tuple[float, float]:
    """(wall s, CPU s the engine's actors used) of one whole engine run."""
    rows: list[dict] = []
    pids = getattr(engine, "pids", [])
    c0 = _cpu_s(pids)
    t0 = time.perf_counter()
    engine.run(plan, items, sink=rows.extend)
    elapsed = time.perf_counter() - t0
    cpu = _cpu_s(pids) - c0
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"bench_pairwise: {len(bad)} error rows, first: {bad[0]['error']}")
    return elapsed, cpu


def run(quick: bool = False) -> list[dict]:
    """Rows for 2 actors vs 1 actor (target >= 1.7x) and 1 actor vs the serial engine."""
    import ray

    m, n, d, rounds = (8, 600, 64, 2) if quick else (20, 2000, 512, 3)
    items, blocks = _items(m, n, d)
    plan = plan_pairs(blocks, SPECS)
    pairs = sum(len(v) for v in plan.values())
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        t0 = time.perf_counter()
        one = RayEngine(actors=1, num_cpus=0.5, threads=1).start()
        two = RayEngine(actors=2, num_cpus=0.5, threads=1).start()
        start_s = time.perf_counter() - t0
        try:
            _timed(one, plan, items)  # warm-up: first object-store use, first prepare
            _timed(two, plan, items)
            t1, t2, c1, c2, ratios = [], [], [], [], []
            for _ in range(rounds):
                a, ca = _timed(one, plan, items)
                b, cb = _timed(two, plan, items)
                t1 += [a]
                t2 += [b]
                c1 += [ca / a]  # cores the actors actually got
                c2 += [cb / b]
                ratios.append(a / b)
        finally:
            one.close()
            two.close()
        with threadpool_limits(limits=1, user_api="blas"):  # the same compute as one actor
            serial, _ = _timed(SerialEngine(use_blocks=False), plan, items)
    finally:
        if started:
            ray.shutdown()
    tag = f"M={m} N={n} D={d}, {pairs} pairs ({', '.join(s.name for s in SPECS)})"
    ratio = statistics.median(ratios)
    load = os.getloadavg()[0]
    got1, got2 = statistics.median(c1), statistics.median(c2)
    bound = got2 / got1 if got1 > 0 else float("nan")
    rows = [
        row(f"pairwise engine 2 actors vs 1 actor {tag}", statistics.median(t2),
             "same plan on 1 actor", statistics.median(t1), ratio,
             "(quick: sizes too small for the target)" if quick else f">= {TARGET}x",
             None if quick else ratio >= TARGET,
             f"median of {rounds} alternating rounds (per-round ratios "
             f"{', '.join(f'{r:.2f}' for r in ratios)}); pools started+warmed before timing "
             f"({start_s:.1f} s for 3 actors), 1 BLAS thread per actor; cores the actors got: "
             f"1 actor {got1:.2f}, 2 actors {got2:.2f} (so at most {bound:.2f}x was available; "
             f"speed-up per core obtained {ratio / bound:.2f}); 1-min load {load:.1f}"),
        row(f"pairwise engine 1 actor vs serial {tag}", statistics.median(t1),
             "SerialEngine pair by pair, in process, 1 BLAS thread", serial,
             serial / statistics.median(t1), "(context)", None,
             "both on one BLAS thread; the difference is Ray's object store, scheduling and "
             "the actor's state fetches"),
    ]
    return rows


if __name__ == "__main__":
    print_rows(run)
