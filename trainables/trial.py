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
checkpoint (`model.safetensors` + `meta.json`) is logged under artifact path `checkpoint/`; with
``train.checkpoint_every: N`` also every N-th epoch's before the last, under
`checkpoints/epoch_XXX/`, of which the newest ``train.keep_checkpoints`` stay. The run is named
``arch / threat eps / seed``.
With ``eval.min_clean_acc`` set, the run is tagged ``unisweep.undertrained`` (true/false, with
the figure) before it is FINISHED; the analysis leaves an under-trained model out, saying why.

A trial whose run is already FINISHED with its checkpoint logged (the driver died after the
trial ended but before Tune saved that) is never trained again: it reports the run's final
metrics with the logged checkpoint, so Tune marks it done, and writes nothing to the run. A
trial that continues its run never logs an epoch the run already has: a crash after an epoch's
metrics reached MLflow but before Tune kept its checkpoint (or a Tune state older than MLflow,
after a head or driver died) trains that epoch again, bit-identically, without logging it twice.

``_fault`` is a test-only switch: after reporting epoch ``after_epoch`` the trial fails once
(``mode="raise"`` raises, ``mode="exit"`` kills the worker process; ``mode="exit-unreported"``
kills it after the epoch's metrics reached MLflow but before Tune got its checkpoint), recorded
by a marker file under ``marker_dir`` so the restarted trial runs through. ``mode="watch"``
never fails: the trial writes ``marker_dir/progress-<trial id>.json`` (its pid, epoch and
batch) after every batch, so a test that kills it from outside can show where the kill landed.
Real sweeps never set it.
"""

from __future__ import annotations

import contextlib
import json
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

__all__ = ["run_trial", "train_config_dict", "cell_key", "cell_tuple", "undertrained_tags"]

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


def undertrained_tags(clean_acc: float | None, min_clean_acc: float | None) -> dict[str, str]:
    """The tags saying whether a finished trial is under-trained (``eval.min_clean_acc``).

    Args:
        clean_acc: the trial's final clean accuracy in [0, 1] (None: not measured).
        min_clean_acc: the declared threshold; None: no check, no tags.

    Returns:
        ``{tr.TAG_UNDERTRAINED: "true"|"false", tr.TAG_UNDERTRAINED_WHY: "final clean accuracy
        0.6200 < eval.min_clean_acc 0.85"}`` (``>=`` when it passes), or ``{}``.
    """
    if min_clean_acc is None:
        return {}
    if clean_acc is None:
        return {tr.TAG_UNDERTRAINED: "true",
                tr.TAG_UNDERTRAINED_WHY: f"no final clean accuracy logged (eval.min_clean_acc "
                                      f"{min_clean_acc:g})"}
    low = clean_acc < min_clean_acc
    return {tr.TAG_UNDERTRAINED: "true" if low else "false",
            tr.TAG_UNDERTRAINED_WHY: f"final clean accuracy {clean_acc:.4f} {'<' if low else '>='} "
                                  f"eval.min_clean_acc {min_clean_acc:g}"}


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


def _open_run(client: Any, trk: dict[str, Any], run: Any, *, trial_id: str, name: str,
              params: dict[str, Any], tags: dict[str, str]) -> str:
    """Continue this trial's earlier run (``run``, found by tag) or create it as a child of the
    sweep run, named ``name`` (tuning trials: ``hpo <trial id> / name``); return the run id."""
    if run is not None:
        tr.with_retries(client.update_run, run.info.run_id, status="RUNNING")
        log.info("continuing MLflow run %s of trial %s", run.info.run_id, trial_id)
        return run.info.run_id
    if trk["role"] != "trial":
        name = f"{trk['role']} {trial_id} / {name}"
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


def _log_files(client: Any, run_id: str, ckpt_dir: Path, artifact_path: str) -> None:
    for name in _CHECKPOINT_FILES:
        tr.with_retries(client.log_artifact, run_id, str(Path(ckpt_dir) / name), artifact_path)


class _EpochCheckpoints:
    """Logs ``checkpoints/epoch_XXX/`` (weights + meta) to the trial's run and keeps the newest
    ``keep`` of them (None: all). Older ones are deleted from the run's artifacts; where the
    artifact store cannot delete, all are kept and that is said once."""

    def __init__(self, client: Any, run_id: str, *, keep: int | None) -> None:
        self.client, self.run_id, self.keep, self.can_delete = client, run_id, keep, True

    def log(self, ckpt_dir: Path, epoch: int) -> None:
        _log_files(self.client, self.run_id, ckpt_dir, tr.epoch_checkpoint_path(epoch))
        if self.keep is None or not self.can_delete:
            return
        for old in tr.logged_epochs(self.client, self.run_id)[:-self.keep]:
            if not tr.delete_artifacts(self.client, self.run_id, tr.epoch_checkpoint_path(old)):
                self.can_delete = False
                log.warning("run %s: its artifact store cannot delete; keeping every epoch "
                            "checkpoint (keep_checkpoints=%d is not applied)", self.run_id,
                            self.keep)
                return


def _maybe_fault(fault: dict[str, Any] | None, *, trial_id: str, epoch: int,
                 reported: bool) -> None:
    """TEST ONLY: fail once at epoch ``fault["after_epoch"]`` (see module docstring); called
    before (``reported=False``) and after Tune got the epoch's checkpoint."""
    if not fault or fault.get("mode") == "watch" or epoch != int(fault["after_epoch"]):
        return
    if (fault.get("mode") == "exit-unreported") == reported:
        return
    marker = Path(fault["marker_dir"]) / f"fault-{trial_id}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"failed after epoch {epoch}\n")
    if fault.get("mode") in ("exit", "exit-unreported"):
        os._exit(17)  # a hard crash: no finally, no MLflow end_run (the restart must cope)
    raise RuntimeError(f"injected test fault after epoch {epoch} (trial {trial_id})")


def _progress_writer(fault: dict[str, Any] | None, *, trial_id: str):
    """TEST ONLY (``mode="watch"``): ``on_batch`` writing where the trial is, else None."""
    if not fault or fault.get("mode") != "watch":
        return None
    path = Path(fault["marker_dir"]) / f"progress-{trial_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def on_batch(epoch: int, batch: int) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "epoch": epoch, "batch": batch}))
        os.replace(tmp, path)  # a reader never sees half a file

    return on_batch


def _logged_epochs(client: Any, run: Any) -> set[int]:
    """The epochs ``run`` already holds metrics for (none for a new run)."""
    if run is None:
        return set()
    history = tr.with_retries(client.get_metric_history, run.info.run_id, tr.METRIC_EPOCH)
    return {int(m.step) for m in history}


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
    name = tr.trial_run_name(cfg.arch, cfg.width, cfg.threat_model, cfg.eps, cfg.seed)
    run_id = _open_run(client, trk, run, trial_id=trial_id, name=name, tags=tags,
                       params={**cfg.to_dict(), "cell": key})
    logged = _logged_epochs(client, run)

    keep_epochs = _EpochCheckpoints(client, run_id, keep=cfg.keep_checkpoints)

    def report(metrics: dict[str, Any], ckpt_dir: Path) -> None:
        epoch = int(metrics[tr.METRIC_EPOCH])
        now = int(time.time() * 1000)
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # MLflow first, then Tune: a crash in between trains this epoch again on restart, and
        # `logged` keeps its (identical) values from being logged a second time.
        if epoch not in logged:
            batch = [Metric(k, v, now, epoch) for k, v in scalars.items()]
            for part in tr.chunks(batch, 1000):
                tr.with_retries(client.log_batch, run_id, metrics=part)
            logged.add(epoch)
        if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs:
            keep_epochs.log(ckpt_dir, epoch)  # the last epoch's weights are checkpoint/
        if epoch == cfg.epochs:
            _log_files(client, run_id, ckpt_dir, tr.ARTIFACT_CHECKPOINT)
        _maybe_fault(config.get("_fault"), trial_id=trial_id, epoch=epoch, reported=False)
        tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        _maybe_fault(config.get("_fault"), trial_id=trial_id, epoch=epoch, reported=True)

    status = "FAILED"
    try:
        checkpoint = tune.get_checkpoint()
        with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as resume:
            if resume is not None:
                log.info("trial %s resumes from %s", trial_id, resume)
            result = train_model(cfg, resume_from=resume, report=report,
                                 on_batch=_progress_writer(config.get("_fault"), trial_id=trial_id))
        # Before the run is FINISHED: the analysis must never see an unflagged weak model.
        flags = undertrained_tags(result.metrics.get(tr.METRIC_FINAL_CLEAN_ACC),
                                     cfg.min_clean_acc)
        for name, value in flags.items():
            tr.with_retries(client.set_tag, run_id, name, value)
        if flags.get(tr.TAG_UNDERTRAINED) == "true":
            log.warning("trial %s (%s) is under-trained: %s", trial_id, key,
                        flags[tr.TAG_UNDERTRAINED_WHY])
        status = "FINISHED"
    finally:
        tr.with_retries(client.set_terminated, run_id, status)
