"""What the benchmark modules share: the row every ``run()`` returns, and running a module alone
(``python -m bench.bench_<name>`` prints its rows)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["row", "print_rows"]


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
