"""What the benchmark modules share: the row every ``run()`` returns, and running a module alone
(``python -m bench.bench_<name>`` prints its rows)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["row", "print_rows", "interleaved"]


def row(name: str, value_s: float, baseline_name: str, baseline_s: float, ratio: float | None,
        target: str, met: bool | None, note: str = "") -> dict:
    """One benchmark figure (the columns ``python -m bench`` prints and saves)."""
    return {"name": name, "value_s": value_s, "baseline_name": baseline_name,
            "baseline_s": baseline_s, "ratio": ratio, "target": target,
            "met": None if met is None else bool(met), "note": note}


def print_rows(run: Callable[[], list[dict]]) -> None:
    """Run one benchmark module at its full sizes and print its rows."""
    for r in run():
        print(r)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall times of each fn per round, the fns run back to back in every round.

    On this shared machine the load changes within seconds; ratios taken within a round (and
    then their median) are far more stable than ratios of separately taken bests.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times
