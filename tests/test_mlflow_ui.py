"""`make ui` in a real browser: the real ``python -m sweeps ui`` over a small real sqlite store
(the sweep driver's own `open_sweep`, trial runs named and nested as a trial names them, the
analysis and reproduction runs), opened in headless Chromium at the URL the command prints.
The page must be the experiment's runs table in model-training mode, listing every trial run on
first load, with the sweep's description above it. The server is stopped by its process ids.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from integration.harness import free_port, kill_pids, process_tree, wait_for

from analysis.report import dump_dom, screenshot
from sweeps.launch import open_sweep
from sweeps.spec import load_spec
from trainables import tracking as tr

WAIT_MS = 20_000  # virtual time for the UI's scripts to fetch and render the runs


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture()
def ui(tmp_path, monkeypatch):
    """A sweep with three trial runs in ``tmp_path``'s store, and `sweeps ui` serving it."""
    assert shutil.which("chromium"), "needs Debian's chromium: scripts/ci_system_deps.sh --with-chromium"
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "uitest.yaml"
    path.write_text(yaml.safe_dump({
        "name": "uitest", "description": "three tiny trials for the UI check",
        "dataset": {"name": "digits"}, "archs": ["mlp", {"name": "resnet18", "width": 0.125}],
        "threat_model": "linf", "epsilons": [0, 0.1], "seeds": [0]}))
    spec = load_spec(path)
    handle = open_sweep(spec)
    client, names = handle.client, []
    for cell in spec.cells()[:3]:
        name = tr.trial_run_name(cell.arch.name, cell.arch.width, cell.threat_model, cell.eps,
                                 cell.seed)
        run = client.create_run(handle.experiment_id, run_name=name, tags={
            tr.TAG_SWEEP: "uitest", tr.TAG_ROLE: "trial", tr.TAG_CELL: cell.key,
            tr.TAG_PARENT: handle.parent_run_id})
        client.log_metric(run.info.run_id, tr.METRIC_CLEAN_ACC, 0.9, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")
        names.append(name)
    for role in ("analysis", "reproduction"):
        tr.sweep_child_run(client, handle.experiment_id, sweep="uitest", role=role)
    client.set_terminated(handle.parent_run_id, "FINISHED")

    port = free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "UNISWEEP_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sweeps", "ui", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), timeout_s=120, what=f"`sweeps ui` on {base}")
        yield {"log": log, "names": names, "handle": handle, "base": base}
    finally:
        kill_pids(process_tree(proc.pid), grace_s=3.0)
        proc.wait(timeout=10)
        assert not process_tree(proc.pid), "processes of `sweeps ui` outlived the test"
        assert not _healthy(base)


def test_make_ui_opens_on_the_sweeps_runs(ui, tmp_path):
    printed = ui["log"].read_text()
    match = re.search(r"sweep uitest, its runs: (\S+)", printed)
    assert match, printed
    url = match[1]
    assert url == tr.runs_page_url(ui["base"], ui["handle"].experiment_id)
    assert "workflowType=machine_learning" in url

    dom = dump_dom(url, width=1400, height=1000, wait_ms=WAIT_MS)
    for name in ui["names"]:  # every trial run is listed, not folded under the sweep's run
        assert f">{name}<" in dom, f"trial run {name!r} not in the runs table"
    assert ">uitest-sweep<" in dom and ">uitest-analysis<" in dom
    assert "Sweep uitest" in dom  # the sweep's description above the table
    assert "Detect Issues" not in dom and "Traces</h" not in dom  # not the GenAI overview

    png = screenshot(url, tmp_path / "mlflow_ui.png", width=1400, height=900, wait_ms=WAIT_MS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    keep = os.environ.get("UNISWEEP_SCREENSHOT_DIR")  # for a person to look at
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / png.name)
