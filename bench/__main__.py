"""Run every benchmark module and print one table of ratios against same-run baselines.

Usage: ``python -m bench [--quick] [--only NAME ...] [--out bench/results.json]``.

Exit status: 0 when every target row is met, 1 when any row with a target missed it (its name is
printed), 2 for bad arguments. ``--quick`` runs sizes too small for the targets: it still prints
and saves which were met, but a miss does not fail it (it is the smoke test).

Each ``bench/bench_*.py`` module exposes ``run(quick: bool = False) -> list[dict]``; a row has
``name``, ``value_s``, ``baseline_name``, ``baseline_s``, ``ratio``, ``target``, ``met`` and
``note``. Ratios, not absolute times, are what we claim: this machine is shared and noisy, so
most modules time value and baseline back to back in rounds and report the median per-round
ratio (each row's note says how it was measured).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

MODULES = ("bench_measures", "bench_training", "bench_pairwise", "bench_sweep", "bench_backends", "bench_zoo")


def _fmt(x: object, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return "" if x is None else str(x)


def _print_table(rows: list[dict]) -> None:
    cols = ("name", "value_s", "baseline_name", "baseline_s", "ratio", "target", "met")
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", nargs="*", default=None, help=f"subset of {MODULES}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    args = parser.parse_args(argv)
    selected = args.only or list(MODULES)
    unknown = sorted(set(selected) - set(MODULES))
    if unknown:
        print(f"error: --only got unknown module(s) {unknown}; known: {list(MODULES)}",
              file=sys.stderr)
        return 2
    rows: list[dict] = []
    load_start = round(os.getloadavg()[0], 2)
    for name in selected:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"[bench] {name}: not present, skipped", file=sys.stderr)
                continue
            raise
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        got = module.run(quick=args.quick)
        for r in got:
            r.setdefault("module", name)
        rows.extend(got)
        print(f"[bench] {name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    _print_table(rows)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_avg_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "quick": args.quick,
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(f"results: {args.out}")
    return exit_status(rows, quick=args.quick)


def exit_status(rows: list[dict], *, quick: bool) -> int:
    """0 if no row with a target missed it, else 1 (``quick``: report the misses, return 0)."""
    missed = [r["name"] for r in rows if r.get("met") is False]
    met = sum(1 for r in rows if r.get("met") is True)
    print(f"\n{len(rows)} figures: {met} met their target, {len(missed)} missed, "
          f"{len(rows) - met - len(missed)} context")
    for name in missed:
        print(f"  MISSED: {name}")
    if missed and quick:
        print("(--quick: sizes too small for the targets; misses are not enforced)")
        return 0
    return 1 if missed else 0


def _machine() -> str:
    """CPU model, cores, memory and Python, for the saved results."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        with open("/proc/meminfo") as f:
            mem = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal"))) / 2**20
        model += f", {mem:.0f} GiB"
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.system()}, "
            f"python {platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
