"""Spec -> Ray Tune: the grid's param_space, the MLflow sweep run, fit, resume, the summary.

The driver owns the sweep's MLflow experiment and parent run (created *before* any trial, so a
fresh sqlite store is migrated once, ENV.md); each trial logs into its own child run from
`trainables.trial.run_trial`. Everything a trial needs (tracking URI, experiment, parent run
id) travels in its config. An ``hpo:`` block runs first (`sweeps.hpo`); what both phases share
(handle, trainable, Tuner) is `sweeps.tuner`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import Param
from ray import tune

from sweeps.cli_util import Echo, format_table, rows_to_csv, summary_rows
from sweeps.grid import Cell
from sweeps.hpo import run_hpo
from sweeps.spec import SweepSpec, load_spec
from sweeps.status import SPEC_ARTIFACT, logged_spec
from sweeps.tuner import (FaultSwitch, SweepHandle, base_param_space, experiment_path, make_tuner,
                          trainable_for)
from trainables import tracking as tr
from trainables.errors import ConfigError, UserError

__all__ = ["build_param_space", "cells_table", "init_ray", "find_sweep", "open_sweep",
           "run_sweep", "resume_sweep", "sweep_note"]

log = logging.getLogger(__name__)
SUMMARY_ARTIFACT = "summary.csv"


def build_param_space(spec: SweepSpec, handle: SweepHandle, *,
                      overrides: dict[str, dict[str, Any]] | None = None,
                      fault: FaultSwitch | None = None,
                      only: list[Cell] | None = None) -> dict[str, Any]:
    """The grid's Tune param_space: arch x (threat model, eps) x seed as ``tune.grid_search``.

    When every threat model shares one epsilon list (the usual case) threat model and epsilon
    are two axes; with per-threat-model lists they form one axis of pairs. Either way Tune's
    grid search runs every cell exactly once (num_samples=1). ``only`` (a resume whose Tune
    state was lost) grids over just those cells, as one axis. The layout is documented in
    `trainables.trial`.
    """
    space = base_param_space(spec, handle, role="trial")
    space["overrides"] = overrides or {}
    if fault is not None:
        space["_fault"] = {"after_epoch": fault.after_epoch, "marker_dir": fault.marker_dir,
                           "mode": fault.mode}
    if only is not None:
        space["cell"] = tune.grid_search([
            {"model": {"arch": c.arch.name, "width": c.arch.width}, "threat_model": c.threat_model,
             "eps": c.eps, "seed": c.seed} for c in only])
        return space
    space["model"] = tune.grid_search([{"arch": a.name, "width": a.width} for a in spec.archs])
    space["seed"] = tune.grid_search(list(spec.seeds))
    if len({t.epsilons for t in spec.threats}) == 1:
        space["threat_model"] = tune.grid_search([t.threat_model for t in spec.threats])
        space["eps"] = tune.grid_search(list(spec.threats[0].epsilons))
    else:
        space["threat"] = tune.grid_search([{"threat_model": t.threat_model, "eps": e}
                                            for t in spec.threats for e in t.epsilons])
    return space


def cells_table(spec: SweepSpec) -> str:
    """The dry-run listing: one line per cell, then resources."""
    rows = [{"#": str(i), "arch": c.arch.label, "threat": c.threat_model,
             "eps": tr.format_eps(c.eps), "seed": str(c.seed)} for i, c in enumerate(spec.cells())]
    res = spec.resources
    lines = [format_table(rows),
             f"{len(rows)} cells; per trial cpu={res.cpu:g} gpu={res.gpu:g}; max_concurrent="
             f"{spec.max_concurrent or 'auto'}; max_failures={spec.max_failures}; "
             f"epochs={spec.train.epochs}",
             f"tracking: {spec.tracking.uri}  "
             f"artifacts: {spec.tracking.artifact_location or '(server default)'}",
             f"storage:  {experiment_path(spec)}"]
    if spec.hpo is not None:
        lines.append(f"hpo: {spec.hpo.describe()}")
    return "\n".join(lines)


def init_ray(spec: SweepSpec) -> bool:
    """Connect to ``$RAY_ADDRESS`` or start a local Ray; return True if this call started it.

    A trial's resource request is checked against the cluster: a local cluster that can never
    place one trial is a user error (an autoscaling cluster may grow, so that only warns).
    """
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     log_to_driver=False)
        started = True
    total = ray.cluster_resources()
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    short = {k: v for k, v in need.items() if v > total.get(k, 0.0)}
    if short:
        msg = (f"resources: a trial needs {', '.join(f'{k}={v:g}' for k, v in short.items())} but "
               f"the cluster has {', '.join(f'{k}={total.get(k, 0.0):g}' for k in short)}")
        if os.environ.get("RAY_ADDRESS"):
            log.warning("%s; waiting for the autoscaler to add nodes", msg)
        else:
            if started:
                ray.shutdown()
            raise ConfigError(f"{msg}; allowed: lower resources.cpu/resources.gpu, or set "
                              "RAY_ADDRESS to a cluster that has them")
    return started


def find_sweep(spec: SweepSpec) -> tuple[Any, str | None, Any]:
    """(client or None, experiment id or None, parent run or None) for the spec's sweep name."""
    if not tr.store_exists(spec.tracking.uri):
        return None, None, None  # no store yet: do not create one just to look
    client = tr.make_client(spec.tracking.uri)
    exp = tr.with_retries(client.get_experiment_by_name, spec.name)
    if exp is None:
        return client, None, None
    return client, exp.experiment_id, tr.find_sweep_run(client, exp.experiment_id, spec.name)


def _prepare_local_dirs(spec: SweepSpec) -> None:
    if spec.tracking.uri.startswith("sqlite:///"):
        Path(spec.tracking.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    for location in (spec.tracking.artifact_location, spec.storage):
        if location and "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)


def sweep_note(spec: SweepSpec) -> str:
    """The sweep's description in MLflow (Markdown): what it is, its grid, where to look."""
    threats = " + ".join(f"{t.threat_model} eps {{{', '.join(f'{e:g}' for e in t.epsilons)}}}"
                         for t in spec.threats)
    archs = ", ".join(a.label for a in spec.archs)
    seeds = ", ".join(str(s) for s in spec.seeds)
    report = tr.default_paths().reports / spec.name / "report" / "index.html"
    hpo = f" A tuning phase runs first: {spec.hpo.describe()}." if spec.hpo is not None else ""
    return "\n".join([
        f"Sweep {spec.name}" + (f": {spec.description}" if spec.description else ""), "",
        f"**Grid:** {len(spec.cells())} trials = {len(spec.archs)} archs ({archs}) x {threats} "
        f"x {len(spec.seeds)} seeds ({seeds}) on {spec.dataset.name}, {spec.train.epochs} "
        f"epochs each.{hpo}", "",
        f"**Runs:** `{spec.name}-sweep` is the sweep; each trial is a child run named "
        "`arch / threat eps / seed`; `" + spec.name + "-analysis` and `" + spec.name
        + "-reproduction` are children too.", "",
        f"**Status:** `python -m sweeps status {spec.name}`", "",
        f"{tr.REPORT_MARK} not built yet: `python -m analysis run {spec.name}` writes "
        f"`{report}` and logs it to the run `{spec.name}-analysis`."])


def open_sweep(spec: SweepSpec) -> SweepHandle:
    """Create the experiment (a model-training experiment) and the sweep's parent run (tag
    role=sweep) with the spec logged; both carry `sweep_note` as their description."""
    _prepare_local_dirs(spec)
    client = tr.make_client(spec.tracking.uri)
    exp_id = tr.ensure_experiment(client, spec.name,
                                  artifact_location=spec.tracking.artifact_location
                                  or spec.storage)
    tags = {tr.TAG_SWEEP: spec.name, tr.TAG_ROLE: "sweep", tr.TAG_DATASET: spec.dataset.name}
    run = tr.with_retries(client.create_run, exp_id, tags=tags, run_name=f"{spec.name}-sweep")
    run_id = run.info.run_id
    tr.set_description(client, exp_id, run_id, sweep_note(spec))
    params = tr.flatten_params({k: v for k, v in spec.to_dict().items() if k != "hpo"})
    params["cells"] = str(len(spec.cells()))
    if spec.hpo is not None:
        params["hpo"] = spec.hpo.describe()
    params = {k: v[:6000] for k, v in params.items()}
    for batch in tr.chunks([Param(k, v) for k, v in params.items()], 100):
        tr.with_retries(client.log_batch, run_id, params=batch)
    tr.with_retries(client.log_text, run_id, spec.source or json.dumps(spec.to_dict(), indent=1),
                    SPEC_ARTIFACT)
    return SweepHandle(spec, client, exp_id, run_id)


def run_sweep(spec: SweepSpec, *, echo: Echo = log.info,
              fault: FaultSwitch | None = None) -> SweepHandle:
    """Run a new sweep end to end; return its tracking handle (parent run id etc.).

    Raises:
        UserError: the sweep name already exists (resume it instead) or resources never fit.
    """
    _, _, parent = find_sweep(spec)
    if parent is not None or tune.Tuner.can_restore(experiment_path(spec)):
        where = f"MLflow run {parent.info.run_id}" if parent else experiment_path(spec)
        raise UserError(f"sweep {spec.name!r} already exists ({where}); continue it with "
                        f"`python -m sweeps resume {spec.name}` or choose another name")
    started = init_ray(spec)
    try:
        handle = open_sweep(spec)
        echo(f"sweep {spec.name}: {len(spec.cells())} cells; MLflow {spec.tracking.uri} "
             f"(experiment {spec.name}, run {handle.parent_run_id})")
        _finish(handle, echo=echo, fault=fault, restore=False)
        return handle
    finally:
        if started:
            ray.shutdown()


def _finish(handle: SweepHandle, *, echo: Echo, fault: FaultSwitch | None, restore: bool) -> str:
    """HPO (if any, and not done yet), then the grid (fresh or restored), then the summary."""
    spec, client, run_id = handle.spec, handle.client, handle.parent_run_id
    # num_to_keep forces a state snapshot per checkpoint; on tiny trials Tune warns about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    status = "FAILED"
    try:
        overrides = None
        if spec.hpo is not None:
            overrides = run_hpo(handle, echo=echo)
        path = experiment_path(spec)
        if restore and tune.Tuner.can_restore(path):
            results = tune.Tuner.restore(path, trainable=trainable_for(spec),
                                         resume_errored=True).fit()
        else:
            only = _retire_orphans(handle) if restore else None
            space = build_param_space(spec, handle, overrides=overrides, fault=fault, only=only)
            results = make_tuner(spec, space, name=spec.name, echo=echo).fit() if only != [] else []
        errors = [r for r in results if r.error is not None]
        rows = summary_rows(client, handle.experiment_id, spec.name)
        echo(f"summary of sweep {spec.name} ({len(rows)} trials):\n{format_table(rows)}")
        tr.with_retries(client.log_text, run_id, rows_to_csv(rows), SUMMARY_ARTIFACT)
        done = {(r["arch"], r["threat"], r["eps"], r["seed"]) for r in rows
                if r["status"] == "FINISHED"}
        missing = len(spec.cells()) - len(done)
        status = "FINISHED" if missing == 0 else ("FAILED" if errors else "KILLED")
        if missing:
            why = (f"{len(errors)} trial(s) failed after {spec.max_failures} retries"
                   if errors else "the run was interrupted")
            echo(f"{missing} of {len(spec.cells())} cells unfinished ({why}); fix the cause and "
                 f"run `python -m sweeps resume {spec.name}`")
        return run_id
    finally:
        tr.with_retries(client.set_terminated, run_id, status)


def _retire_orphans(handle: SweepHandle) -> list[Cell]:
    """For a resume without Tune state (the driver died before Tune first saved it): end the
    unfinished trial runs as KILLED and return the cells that have no FINISHED run.

    Those cells then run afresh (new trial ids), so every cell ends with exactly one
    FINISHED run and nothing finished is trained twice.
    """
    finished = set()
    for run in tr.search_sweep_runs(handle.client, handle.experiment_id, sweep=handle.spec.name,
                                    role="trial"):
        if run.info.status == "FINISHED":
            finished.add(run.data.tags.get(tr.TAG_CELL))
        else:
            tr.with_retries(handle.client.set_terminated, run.info.run_id, "KILLED")
    return [c for c in handle.spec.cells() if c.key not in finished]


def resume_sweep(target: str, *, echo: Echo = log.info) -> SweepHandle:
    """Resume sweep ``target`` (a name in the default tracking store, or a spec path)."""
    spec = _spec_for(target)
    client, exp_id, parent = find_sweep(spec)
    if parent is None:
        raise UserError(f"no sweep named {spec.name!r} in {spec.tracking.uri}; start it with "
                        f"`python -m sweeps run SPEC`")
    started = init_ray(spec)
    try:
        tr.with_retries(client.update_run, parent.info.run_id, status="RUNNING")
        handle = SweepHandle(spec, client, exp_id, parent.info.run_id)
        echo(f"resuming sweep {spec.name} (MLflow run {parent.info.run_id})")
        _finish(handle, echo=echo, fault=None, restore=True)
        return handle
    finally:
        if started:
            ray.shutdown()


def _spec_for(target: str) -> SweepSpec:
    """A spec path loads directly; a bare name is looked up in the default tracking store."""
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        return load_spec(target)
    uri = tr.resolve_tracking_uri()
    if not tr.store_exists(uri):  # never create an empty store just to look
        raise UserError(f"no sweep named {target!r}: the tracking store {uri} does not exist")
    client = tr.make_client(uri)
    exp = tr.with_retries(client.get_experiment_by_name, target)
    parent = tr.find_sweep_run(client, exp.experiment_id, target) if exp else None
    if parent is None:
        raise UserError(f"no sweep named {target!r} in {uri}; pass the spec path instead "
                        "(python -m sweeps resume path/to/spec.yaml)")
    return logged_spec(client, parent.info.run_id, check_paths=True)
