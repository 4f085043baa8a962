"""`python -m sweeps demo` end to end on a tiny grid: train -> analyse -> report -> reproduce."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_DEMO = """\
name: tinydemo
dataset: {name: digits, eval_size: 120}
archs: [mlp, cnn]
threat_model: linf
epsilons: [0, 0.1]
seeds: [0]
train: {epochs: 2, batch_size: 64, lr: 0.05, attack_steps: 3}
eval: {attack_steps: 3, final_steps: 5, restarts: 1}
resources: {cpu: 1, gpu: 0}
"""


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    spec = home / "tiny.yaml"
    spec.write_text(TINY_DEMO)
    env = {**os.environ, "UNISWEEP_HOME": str(home), "RAY_AUTH_MODE": "disabled",
           "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    proc = subprocess.run([sys.executable, "-m", "sweeps", "demo", str(spec)], cwd=home, env=env,
                          capture_output=True, text=True, timeout=900)
    return home, proc


def test_demo_chain_writes_report_and_reproduction(demo_run):
    home, proc = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    reports = home / "reports" / "tinydemo"
    html = reports / "report" / "index.html"
    repro = reports / "reproduction.md"
    # It says where to look, and those paths exist.
    for path in (html, repro, reports / "pairs.parquet"):
        assert str(path) in out and path.exists(), path
    assert "make ui" in out
    text = repro.read_text()
    for number in range(1, 9):
        assert f"\n## {number}. " in text, f"target {number} missing from reproduction.md"


def test_demo_report_numbers_agree_with_the_pair_table(demo_run):
    home, proc = demo_run
    assert proc.returncode == 0
    reports = home / "reports" / "tinydemo"
    pairs = pd.read_parquet(reports / "pairs.parquet")
    ok = pairs[pairs["status"] == "ok"]
    # 4 models -> 6 unordered pairs on the clean set for every (symmetric) demo measure.
    assert set(ok["input_set"]) == {"clean"}
    counts = ok.groupby("measure").size()
    assert len(counts) == 8 and (counts == 6).all(), counts
    assert ok["value"].notna().all()
    summary = pd.read_csv(reports / "report" / "summary.csv")
    for measure, group in ok.groupby("measure"):
        rows = summary[summary["measure"] == measure]
        assert rows["n"].sum() == len(group), measure
        overall = (rows["mean"] * rows["n"]).sum() / rows["n"].sum()
        assert overall == pytest.approx(group["value"].mean(), rel=1e-9, abs=1e-12), measure


def test_demo_rerun_trains_and_computes_nothing_new(demo_run):
    home, _ = demo_run
    before = pd.read_parquet(home / "reports" / "tinydemo" / "pairs.parquet")
    env = {**os.environ, "UNISWEEP_HOME": str(home), "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "sweeps", "demo", str(home / "tiny.yaml")],
                          cwd=home, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete; training skipped" in proc.stdout
    after = pd.read_parquet(home / "reports" / "tinydemo" / "pairs.parquet")
    assert len(after) == len(before)
