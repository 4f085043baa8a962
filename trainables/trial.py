"""The function Ray Tune runs for one grid cell (`run_trial`): train, report, log to one MLflow run.

The trial config (built by `sweeps.tuner.base_param_space` and `sweeps.launch.build_param_space`)
is plain data::

    {"sweep": str,
     "dataset": {...}, "train": {...}, "eval": {...},    # the spec's sections, key -> value
     "model": {"arch", "width"}, "threat_model": str, "eps": float, "seed": int,
     "overrides": {arch label or "*": {train key: value}},  # the HPO phase's best values
     "num_threads": int,
     "tracking": {"uri", "experiment_id", "parent_run_id", "sweep", "role"},
     "_fault": {"after_epoch", "marker_dir", "mode"}}     # TEST ONLY, see below

The grid cell may instead come as ``"threat": {"threat_model", "eps"}`` (per-threat-model
epsilon lists) or as one ``"cell": {model, threat_model, eps, seed}`` (a resume that lost Tune's
state); `cell_tuple` reads all three. `train_config_dict` turns the config into the arguments
of `trainables.config.TrainConfig`.

MLflow: exactly one run per trial, a child of the sweep's parent run. After a restart (a
crashed worker, `Tuner.restore`) the trial finds its run again by tags (sweep + Tune trial id)
and continues it; the run is always ended (FINISHED, or FAILED on an exception). The final
checkpoint (`model.safetensors` + `meta.json`) is logged under artifact path `checkpoint/`.
With ``eval.min_clean_acc`` set, the run is tagged ``unisweep.undertrained`` (true/false, with
the figure) before it is FINISHED; the analysis leaves an under-trained model out, saying why.

A trial whose run is already FINISHED with its checkpoint logged (the driver died after the
trial ended but before Tune saved that) is never trained again: it reports the run's final
metrics with the logged checkpoint, so Tune marks it done, and writes nothing to the run.

``_fault`` is a test-only switch: after reporting epoch ``after_epoch`` the trial fails once
(``mode="raise"`` raises, ``mode="exit"`` kills the worker process), recorded by a marker file
under ``marker_dir`` so the restarted trial runs through. Real sweeps never set it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from ray import tune

from trainables import tracking as tr
from trainables.config import TrainConfig, from_spec_sections

__all__ = ["run_trial", "train_config_dict", "cell_key", "cell_tuple"]

log = logging.getLogger(__name__)
_CHECKPOINT_FILES = ("model.safetensors", "meta.json")


def cell_tuple(config: dict[str, Any]) -> tuple[str, float, str, float, int]:
    """(arch, width, threat model, eps, seed) of a resolved trial config (see module docstring)."""
    src = config.get("cell") or config
    threat = src.get("threat") or {"threat_model": src["threat_model"], "eps": src["eps"]}
    model = src["model"]
    return (model["arch"], float(model["width"]), threat["threat_model"], float(threat["eps"]),
            int(src["seed"]))


def cell_key(config: dict[str, Any]) -> str:
    """``<arch>[-w<width>]_<threat>_eps<eps>_seed<seed>``; matches `sweeps.grid.Cell.key`."""
    arch, width, threat, eps, seed = cell_tuple(config)
    return f"{tr.arch_label(arch, width)}_{threat}_eps{tr.format_eps(eps)}_seed{seed}"


def train_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The `TrainConfig.from_dict` input for a trial config: the spec's sections with the
    cell's architecture's overrides applied (`trainables.config.from_spec_sections`), plus the
    grid cell and the thread count."""
    arch, width, threat, eps, seed = cell_tuple(config)
    overrides = config.get("overrides") or {}
    train = {**config["train"],
             **(overrides.get(tr.arch_label(arch, width)) or overrides.get("*") or {})}
    sections = {"dataset": config["dataset"], "train": train, "eval": config["eval"]}
    return {**from_spec_sections(sections, eps=eps), "arch": arch, "width": width,
            "threat_model": threat, "eps": eps, "seed": seed,
            "num_threads": config.get("num_threads")}


def _open_run(client: Any, trk: dict[str, Any], run: Any, *, trial_id: str, key: str,
              params: dict[str, Any], tags: dict[str, str]) -> str:
    """Continue this trial's earlier run (``run``, found by tag) or create it as a child of the
    sweep run; return the run id."""
    if run is not None:
        tr.with_retries(client.update_run, run.info.run_id, status="RUNNING")
        log.info("continuing MLflow run %s of trial %s", run.info.run_id, trial_id)
        return run.info.run_id
    name = key if trk["role"] == "trial" else f"{trk['role']}-{key}-{trial_id}"
    run = tr.with_retries(client.create_run, trk["experiment_id"], tags=tags, run_name=name)
    flat = tr.flatten_params(params)
    for batch in tr.chunks([Param(k, v[:6000]) for k, v in flat.items()], 100):
        tr.with_retries(client.log_batch, run.info.run_id, params=batch)
    return run.info.run_id


def _report_finished(client: Any, run: Any, *, trial_id: str) -> bool:
    """If ``run`` is FINISHED with its checkpoint logged, report it to Tune and return True.

    Reports the run's final metric values with the logged final checkpoint (downloaded to a
    temporary folder; Tune copies it during `tune.report`). Reads from MLflow only: the run's
    status, end time and metric histories stay as they were.
    """
    if run is None or run.info.status != "FINISHED":
        return False
    run_id = run.info.run_id
    logged = tr.with_retries(client.list_artifacts, run_id, tr.ARTIFACT_CHECKPOINT)
    if not set(_CHECKPOINT_FILES) <= {Path(a.path).name for a in logged}:
        return False
    log.info("trial %s: MLflow run %s is already FINISHED; reporting it instead of training",
             trial_id, run_id)
    with tempfile.TemporaryDirectory(prefix="unisweep-finished-") as tmp:
        local = tr.with_retries(client.download_artifacts, run_id, tr.ARTIFACT_CHECKPOINT, tmp)
        tune.report(dict(run.data.metrics), checkpoint=tune.Checkpoint.from_directory(local))
    return True


def _maybe_fault(fault: dict[str, Any] | None, *, trial_id: str, epoch: int) -> None:
    """TEST ONLY: fail once after epoch ``fault["after_epoch"]`` (see module docstring)."""
    if not fault or epoch != int(fault["after_epoch"]):
        return
    marker = Path(fault["marker_dir"]) / f"fault-{trial_id}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"failed after epoch {epoch}\n")
    if fault.get("mode") == "exit":
        os._exit(17)  # a hard crash: no finally, no MLflow end_run (the restart must cope)
    raise RuntimeError(f"injected test fault after epoch {epoch} (trial {trial_id})")


def run_trial(config: dict[str, Any]) -> None:
    """Train one grid cell under Ray Tune; see the module docstring for the config layout."""
    trk = config["tracking"]
    trial_id = tune.get_context().get_trial_id()
    client = tr.make_client(trk["uri"])
    run = tr.find_trial_run(client, trk["experiment_id"], sweep=trk["sweep"], trial_id=trial_id)
    if _report_finished(client, run, trial_id=trial_id):
        return  # trained before the driver's last restart: never train (or log) it again

    # torch: only now, so a trial that is already FINISHED (above) reports without loading it.
    from trainables.train import train_model

    cfg = TrainConfig.from_dict(train_config_dict(config))
    key = cell_key(config)
    tags = {tr.TAG_SWEEP: trk["sweep"], tr.TAG_TRIAL_ID: trial_id, tr.TAG_CELL: key,
            tr.TAG_ARCH: cfg.arch, tr.TAG_WIDTH: repr(cfg.width),
            tr.TAG_EPS: tr.format_eps(cfg.eps), tr.TAG_SEED: str(cfg.seed),
            tr.TAG_THREAT_MODEL: cfg.threat_model, tr.TAG_DATASET: cfg.dataset,
            tr.TAG_ROLE: trk["role"], tr.TAG_PARENT: trk["parent_run_id"]}
    run_id = _open_run(client, trk, run, trial_id=trial_id, key=key, tags=tags,
                       params={**cfg.to_dict(), "cell": key})

    def report(metrics: dict[str, Any], ckpt_dir: Path) -> None:
        epoch = int(metrics[tr.METRIC_EPOCH])
        now = int(time.time() * 1000)
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # MLflow first, then Tune: a crash in between repeats this epoch's MLflow values on
        # restart (same step, same numbers) instead of losing them.
        batch = [Metric(k, v, now, epoch) for k, v in scalars.items()]
        for part in tr.chunks(batch, 1000):
            tr.with_retries(client.log_batch, run_id, metrics=part)
        if epoch == cfg.epochs:
            for name in _CHECKPOINT_FILES:
                tr.with_retries(client.log_artifact, run_id, str(Path(ckpt_dir) / name),
                                tr.ARTIFACT_CHECKPOINT)
        tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        _maybe_fault(config.get("_fault"), trial_id=trial_id, epoch=epoch)

    status = "FAILED"
    try:
        checkpoint = tune.get_checkpoint()
        with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as resume:
            if resume is not None:
                log.info("trial %s resumes from %s", trial_id, resume)
            result = train_model(cfg, resume_from=resume, report=report)
        # Before the run is FINISHED: the analysis must never see an unflagged weak model.
        flags = tr.undertrained_tags(result.metrics.get(tr.METRIC_FINAL_CLEAN_ACC),
                                     cfg.min_clean_acc)
        for name, value in flags.items():
            tr.with_retries(client.set_tag, run_id, name, value)
        if flags.get(tr.TAG_UNDERTRAINED) == "true":
            log.warning("trial %s (%s) is under-trained: %s", trial_id, key,
                        flags[tr.TAG_UNDERTRAINED_WHY])
        status = "FINISHED"
    finally:
        tr.with_retries(client.set_terminated, run_id, status)
