"""python -m sweeps run|resume|status|list|ui|submit|demo — the sweep command line.

User errors (a bad spec, an unknown sweep) print one line on stderr and exit with status 2,
before anything is written to MLflow (`trainables.errors.user_errors`). Commands that only read
(``list``, ``status``, ``ui``, ``submit``) never import Ray; the others import `sweeps.launch`
or `sweeps.tuner` (Ray Tune) inside the command, once they need them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sweeps import status
from sweeps.cli_util import echo, format_table, summary_rows
from sweeps.spec import SweepSpec, load_spec
from sweeps.spec_analysis import check_analysis, repro_config
from trainables import tracking as tr
from trainables.errors import UserError, user_errors

PROG = "python -m sweeps"
# TEST ONLY: make every trial fail once after this epoch (see trainables/trial.py).
FAULT_ENV = ("UNISWEEP_FAULT_AFTER_EPOCH", "UNISWEEP_FAULT_MARKER_DIR", "UNISWEEP_FAULT_MODE")
# Forwarded to a submitted job when set here (cluster addresses, never credentials).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "UNISWEEP_STORAGE", "UNISWEEP_DATA", "UNISWEEP_HOME")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Adversarial-training sweeps on Ray Tune "
                                "with MLflow tracking (spec reference: docs/spec-reference.md).")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a sweep from a YAML spec")
    run.add_argument("spec", help="YAML spec, e.g. sweeps/demo.yaml")
    run.add_argument("--dry-run", action="store_true", help="print the cells and resources, exit")
    res = sub.add_parser("resume", help="finish an interrupted sweep (only unfinished trials run)")
    res.add_argument("target", help="sweep name (default tracking store) or its spec path")
    st = sub.add_parser("status", help="each cell's state, epoch and last metrics, and the "
                        "sweep's ETA, from MLflow")
    st.add_argument("target", help="sweep name (default tracking store) or its spec path")
    sub.add_parser("list", help="sweeps in the default tracking store")
    ui = sub.add_parser("ui", help="MLflow UI over the local store (127.0.0.1 only by default)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    sb = sub.add_parser("submit", help="`ray job submit` the sweep to $RAY_ADDRESS")
    sb.add_argument("spec")
    sb.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    demo = sub.add_parser("demo", help="run (or finish) a sweep, then print where to look")
    demo.add_argument("spec", nargs="?", default=str(Path(__file__).with_name("demo.yaml")))
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for user errors)."""
    args = _parser().parse_args(argv)
    try:
        with user_errors(PROG):
            return {"run": _run, "resume": _resume, "status": _status, "list": _list,
                    "ui": _ui, "submit": _submit, "demo": _demo}[args.cmd](args)
    except SystemExit as exc:
        return int(exc.code or 0)


def _fault_from_env(spec: SweepSpec) -> Any:
    """TEST ONLY: the fault switch from UNISWEEP_FAULT_* variables (None when unset)."""
    after = os.environ.get(FAULT_ENV[0])
    if not after:
        return None
    from sweeps.tuner import FaultSwitch, experiment_path  # Ray: only when a sweep runs

    marker = os.environ.get(FAULT_ENV[1]) or experiment_path(spec, suffix="-faults")
    return FaultSwitch(after_epoch=int(after), marker_dir=marker,
                       mode=os.environ.get(FAULT_ENV[2], "exit"))


def _run(args: argparse.Namespace) -> int:
    if args.dry_run:  # the grid only: the dataset may live on the cluster, not here
        spec = load_spec(args.spec, check_paths=False)
        from sweeps.launch import cells_table  # Ray: only once the spec is valid

        echo(cells_table(spec))
        root = spec.dataset.root
        if root is not None and not Path(root).is_dir():
            echo(f"note: dataset.root {root} does not exist on this machine")
        return 0
    spec = load_spec(args.spec)
    from sweeps.launch import run_sweep  # Ray: only once the spec is valid

    run_sweep(spec, echo=echo, fault=_fault_from_env(spec))
    return _exit_status(spec)


def _resume(args: argparse.Namespace) -> int:
    from sweeps.launch import resume_sweep  # Ray: only for commands that train

    handle = resume_sweep(args.target, echo=echo)
    return _exit_status(handle.spec)


def _exit_status(spec: SweepSpec) -> int:
    """0 when every cell has a FINISHED trial run, else 1."""
    state = _sweep_state(spec.tracking.uri, spec.name)
    return 0 if state["finished"] >= state["cells"] else 1


def _locate(target: str) -> tuple[str, str]:
    """(tracking uri, sweep name) for a sweep name or a spec path."""
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        spec = load_spec(target, check_paths=False)
        return spec.tracking.uri, spec.name
    return tr.resolve_tracking_uri(), target


def _sweep_state(uri: str, name: str) -> dict[str, Any]:
    """Counts of the sweep's trial runs by status, its parent run, the grid size, the rows."""
    if not tr.store_exists(uri):
        raise UserError(f"no sweep named {name!r}: the tracking store {uri} does not exist")
    client = tr.make_client(uri)
    exp = tr.with_retries(client.get_experiment_by_name, name)
    parent = tr.find_sweep_run(client, exp.experiment_id, name) if exp else None
    if parent is None:
        raise UserError(f"no sweep named {name!r} in {uri}; `{PROG} list` shows the known ones")
    rows = summary_rows(client, exp.experiment_id, name)
    counts = Counter(r["status"] for r in rows)
    hpo = summary_rows(client, exp.experiment_id, name, role="hpo")
    return {"parent": parent, "rows": rows, "counts": counts, "hpo": hpo,
            "cells": int(parent.data.params.get("cells", len(rows))),
            "finished": len({(r["arch"], r["threat"], r["eps"], r["seed"]) for r in rows
                             if r["status"] == "FINISHED"})}


def _status(args: argparse.Namespace) -> int:
    uri, name = _locate(args.target)
    st = _sweep_state(uri, name)
    parent, counts = st["parent"], st["counts"]
    echo(f"sweep {name}: {parent.info.status} (MLflow run {parent.info.run_id}, {uri})")
    started = sum(counts.values())
    echo(f"cells {st['cells']}: {counts.get('FINISHED', 0)} finished, {counts.get('RUNNING', 0)} "
         f"running, {counts.get('FAILED', 0)} failed, {counts.get('KILLED', 0)} killed, "
         f"{max(st['cells'] - started, 0)} not started")
    best = {k.removeprefix("hpo.best."): v for k, v in parent.data.params.items()
            if k.startswith("hpo.best.")}
    if st["hpo"] or best:
        echo(f"hpo: {len(st['hpo'])} trials; best " + (" ".join(f"{k}={v}" for k, v in
                                                               sorted(best.items())) or "pending"))
    done = [r for r in st["rows"] if r["robust_acc"] != "-"]
    for eps in sorted({r["eps"] for r in done}, key=float):
        top = max((r for r in done if r["eps"] == eps), key=lambda r: float(r["robust_acc"]))
        echo(f"best robust_acc at {top['threat']} eps={eps}: {top['robust_acc']} "
             f"({top['arch']} seed {top['seed']}, clean {top['clean_acc']})")
    client = tr.make_client(uri)
    try:
        spec = status.logged_spec(client, parent.info.run_id, check_paths=False)
    except Exception as exc:  # noqa: BLE001 - an old sweep without spec.yaml: its runs only
        echo(f"(the sweep's spec.yaml could not be read: {exc}; listing the cells with runs)")
        spec = None
    runs = tr.search_sweep_runs(client, parent.info.experiment_id, sweep=name, role="trial")
    states = status.cell_states(client, runs, cells=spec.cells() if spec else None,
                                epochs=spec.train.epochs if spec else 0)
    echo(format_table(status.cell_rows(states)))
    est = status.estimate(states, max_concurrent=spec.max_concurrent if spec else None)
    echo(status.describe_estimate(est, sweep_status=parent.info.status, name=name))
    return 0


def _list(args: argparse.Namespace) -> int:
    uri = tr.resolve_tracking_uri()
    if not tr.store_exists(uri):
        echo(f"no sweeps yet ({uri} does not exist)")
        return 0
    client = tr.make_client(uri)
    rows = []
    for exp in tr.with_retries(client.search_experiments):
        for parent in tr.search_sweep_runs(client, exp.experiment_id, sweep=exp.name,
                                           role="sweep"):
            st = _sweep_state(uri, exp.name)
            rows.append({"sweep": exp.name, "status": parent.info.status,
                         "finished": f"{st['finished']}/{st['cells']}",
                         "dataset": parent.data.tags.get(tr.TAG_DATASET, "?"),
                         "run_id": parent.info.run_id})
    echo(format_table(rows) if rows else f"no sweeps in {uri}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    paths = tr.default_paths()
    uri = tr.resolve_tracking_uri(home=paths.home)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 0.4 GiB, 1 process
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", paths.artifact_root.as_uri(), "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    base = f"http://{args.host}:{args.port}"
    echo(f"MLflow UI on {base} over {uri} (Ctrl-C stops it)")
    for name, exp_id in _sweep_experiments(uri):
        echo(f"  sweep {name}, its runs: {tr.runs_page_url(base, exp_id)}")
    # Become the server (exec): stopping this process by its PID stops the UI, no orphans.
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def _sweep_experiments(uri: str) -> list[tuple[str, str]]:
    """(name, experiment id) of every sweep in the store, oldest first; none if no store."""
    if not tr.store_exists(uri):
        return []
    client = tr.make_client(uri)
    return [(exp.name, exp.experiment_id)
            for exp in sorted(tr.with_retries(client.search_experiments),
                              key=lambda e: int(e.experiment_id) if e.experiment_id.isdigit()
                              else 0)
            if tr.find_sweep_run(client, exp.experiment_id, exp.name) is not None]


def _submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, check_paths=False)  # the data lives on the cluster
    if not os.environ.get("RAY_ADDRESS"):
        raise UserError("RAY_ADDRESS is not set; allowed: the cluster's dashboard address, e.g. "
                        "http://127.0.0.1:8265 after `ray dashboard cluster.yaml` "
                        "(docs/cluster.md)")
    python = os.environ.get("UNISWEEP_REMOTE_PYTHON", sys.executable)
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    cmd = [ray_bin, "job", "submit", "--address", os.environ["RAY_ADDRESS"],
           "--submission-id", f"{spec.name}-{os.getpid()}", "--working-dir", ".",
           "--runtime-env-json", json.dumps({"env_vars": env_vars})]
    if args.no_wait:
        cmd.append("--no-wait")
    cmd += ["--", python, "-m", "sweeps", "run", args.spec]
    env = {**os.environ}
    env.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60 clusters require the token (ENV.md)
    echo("submitting: " + " ".join(cmd))
    return subprocess.call(cmd, env=env)


def _demo(args: argparse.Namespace) -> int:
    """Train the sweep (or finish it), then say where to look. Analysis chains in here."""
    from sweeps.launch import find_sweep, resume_sweep, run_sweep  # Ray: only when training

    spec = load_spec(args.spec)
    check_analysis(spec.analysis)  # a typo in the analysis block stops here, before training
    _, _, parent = find_sweep(spec)
    if parent is None:
        run_sweep(spec, echo=echo)
    elif _sweep_state(spec.tracking.uri, spec.name)["finished"] < len(spec.cells()):
        resume_sweep(args.spec, echo=echo)
    else:
        echo(f"sweep {spec.name} is already complete; training skipped")
    steps_done = _exit_status(spec) == 0
    if steps_done:
        _analyse(spec)
    _where_to_look(spec)
    return 0 if steps_done else 1


def _analyse(spec: SweepSpec) -> None:
    """The demo's second half: all-pairs analysis on the spec's input sets (inversion included
    when it names ``inverted``), the HTML report, the reproduction report."""
    # analysis (numpy, scipy, matplotlib, the measures) loads only when the demo gets this far
    from analysis.engine import DEMO_MEASURES
    from analysis.pipeline import report_dir, run_analysis
    from analysis.reporting import run_report
    from analysis.progress import ProgressLine
    from analysis.reproduction import run_reproduction

    uri, todo = spec.tracking.uri, spec.analysis
    measures = todo.measures or DEMO_MEASURES
    echo(f"\n== analysis of {spec.name}: all pairs on {', '.join(todo.input_sets)}, measures "
         f"{', '.join(measures)}")
    run_analysis(spec.name, tracking_uri=uri, measures=measures, input_sets=todo.input_sets,
                 actors=2, progress=ProgressLine(sys.stdout))
    echo(f"\n== reproduction targets (SPEC section 8) on {spec.name}")
    repro = run_reproduction(spec.name, tracking_uri=uri, config=repro_config(todo),
                             progress=ProgressLine(sys.stdout))
    html = run_report(spec.name, tracking_uri=uri)  # after the reproduction: it shows its verdicts
    echo(f"\nreport:         {html}")
    echo(f"reproduction:   {repro}")
    echo(f"pair table:     {report_dir(spec.name) / 'pairs.parquet'}")


def _where_to_look(spec: SweepSpec) -> None:
    from sweeps.tuner import experiment_path  # Ray Tune: not at the CLI's start-up

    exp = dict(_sweep_experiments(spec.tracking.uri)).get(spec.name, "?")
    echo(f"\nMLflow store:   {spec.tracking.uri} (experiment {spec.name!r})")
    echo(f"browse it:      make ui  (or {PROG} ui), then open "
         f"{tr.runs_page_url('http://127.0.0.1:5000', exp)}")
    echo(f"sweep status:   {PROG} status {spec.name}")
    echo(f"Ray Tune state: {experiment_path(spec)}")


if __name__ == "__main__":
    sys.exit(main())
