"""`python -m bench --quick` runs real benchmark modules end to end and writes well-formed rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"name", "value_s", "baseline_name", "baseline_s", "ratio", "target", "met", "note", "module"}


def test_quick_bench_prints_table_and_writes_rows(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "bench_training", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["meta"]["quick"] is True
    assert len(rows) == 6  # 3 rows x (cnn, resnet18)
    for r in rows:
        assert KEYS <= set(r), sorted(KEYS - set(r))
        assert r["module"] == "bench_training"
        assert r["value_s"] > 0 and r["baseline_s"] > 0
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["met"] in (True, False, None)
        assert r["name"] in proc.stdout  # one table row per figure
    limits = [r for r in rows if "vs limit" in r["name"]]
    assert len(limits) == 2 and all(isinstance(r["met"], bool) for r in limits)
    # the limit is 7 iterations + 1 standard step, so it exceeds a standard step 7-fold or more
    ctx = [r for r in rows if "vs standard step" in r["name"] and "PGD" in r["name"]]
    assert all(r["ratio"] < 1 for r in ctx)


def test_unknown_module_is_refused_with_the_known_names(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "bench_nope",
                           "--out", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "bench_nope" in proc.stderr and "bench_training" in proc.stderr
    assert not (tmp_path / "r.json").exists()


def _fake_module(monkeypatch, rows: list[dict]) -> None:
    """A benchmark module `bench.bench_fake` whose run() returns ``rows``, registered for --only."""
    import types

    import bench.__main__ as front

    module = types.ModuleType("bench.bench_fake")
    module.run = lambda quick=False: [dict(r) for r in rows]
    monkeypatch.setitem(sys.modules, "bench.bench_fake", module)
    monkeypatch.setattr(front, "MODULES", (*front.MODULES, "bench_fake"))


def _rows(*met: bool | None) -> list[dict]:
    from bench._common import row

    return [row(f"figure {i}", 1.0, "baseline", 2.0, 2.0,
                ">= 1.5x" if m is not None else "(context)", m) for i, m in enumerate(met)]


def test_a_missed_target_makes_the_bench_exit_non_zero(tmp_path, monkeypatch, capsys):
    from bench.__main__ import main

    out = tmp_path / "r.json"
    _fake_module(monkeypatch, _rows(True, None, False))
    assert main(["--only", "bench_fake", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "MISSED: figure 2" in printed and "1 missed" in printed
    assert json.loads(out.read_text())["rows"][2]["met"] is False  # saved even on a miss
    # --quick: the same miss is reported but does not fail the smoke run
    assert main(["--quick", "--only", "bench_fake", "--out", str(out)]) == 0
    assert "MISSED: figure 2" in capsys.readouterr().out


def test_all_targets_met_or_context_exits_zero_and_records_the_machine(tmp_path, monkeypatch):
    from bench.__main__ import main

    out = tmp_path / "r.json"
    _fake_module(monkeypatch, _rows(True, None, True))
    assert main(["--only", "bench_fake", "--out", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["quick"] is False and "cores" in meta["machine"] and meta["date"]
    assert set(meta["load_avg_1min"]) == {"start", "end"}
