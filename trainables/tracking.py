"""MLflow conventions: tag and metric names, default local paths, run lookup, retries.

One module owns every name that ends up in the tracking store, so the trainable, the sweep
driver and the analysis agree on them. Every MLflow call that talks to the store goes through
`with_retries`, which rides out a restarting tracking server or a briefly locked sqlite file.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "TAG_SWEEP", "TAG_TRIAL_ID", "TAG_CELL", "TAG_ARCH", "TAG_WIDTH", "TAG_EPS", "TAG_SEED",
    "TAG_THREAT_MODEL", "TAG_DATASET", "TAG_ROLE", "TAG_PARENT", "TAG_UNDERTRAINED",
    "TAG_UNDERTRAINED_WHY",
    "METRIC_TRAIN_LOSS", "METRIC_TRAIN_ACC", "METRIC_CLEAN_ACC", "METRIC_ROBUST_ACC",
    "METRIC_EPOCH", "METRIC_EPOCH_TIME", "METRIC_FINAL_CLEAN_ACC", "METRIC_FINAL_ROBUST_ACC",
    "METRIC_TOTAL_TIME", "ARTIFACT_CHECKPOINT", "ARTIFACT_EPOCH_CHECKPOINTS",
    "epoch_checkpoint_path", "logged_epochs", "delete_artifacts", "final_robust_at", "format_eps",
    "arch_label", "Paths", "default_paths", "resolve_tracking_uri", "store_exists", "make_client",
    "with_retries", "ensure_experiment", "find_sweep_run", "find_trial_run", "search_sweep_runs",
    "flatten_params", "chunks", "TAG_NOTE", "TAG_EXPERIMENT_KIND", "EXPERIMENT_KIND",
    "trial_run_name", "sweep_child_run", "set_description", "REPORT_MARK", "with_report_line",
    "runs_page_url",
]

log = logging.getLogger(__name__)

# Tags (DESIGN.md "Names"). Values are strings; eps is written with `format_eps`.
TAG_SWEEP = "unisweep.sweep"
TAG_TRIAL_ID = "unisweep.trial_id"
TAG_CELL = "unisweep.cell"  # human-readable grid cell, e.g. "cnn_linf_eps0.1_seed0"
TAG_ARCH = "unisweep.arch"
TAG_WIDTH = "unisweep.width"
TAG_EPS = "unisweep.eps"
TAG_SEED = "unisweep.seed"
TAG_THREAT_MODEL = "unisweep.threat_model"
TAG_DATASET = "unisweep.dataset"
TAG_ROLE = "unisweep.role"  # sweep | trial | hpo | analysis | reproduction
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI lists a child under it
TAG_NOTE = "mlflow.note.content"  # a run's / an experiment's description (Markdown) in the UI
# Marks the experiment as model training (not GenAI). MLflow 3.17's UI decides the page by its
# own "GenAI / Model training" switch (browser storage, default GenAI) or the URL's
# `workflowType=machine_learning`, so `python -m sweeps ui` prints that URL (`runs_page_url`).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
REPORT_MARK = "**Report:**"  # starts the line of a sweep's description that says where it is
# Set when eval.min_clean_acc is: "true" / "false", and the figure against the threshold.
TAG_UNDERTRAINED = "unisweep.undertrained"
TAG_UNDERTRAINED_WHY = "unisweep.undertrained_reason"

# Metric names, logged with step = epoch.
METRIC_TRAIN_LOSS = "train/loss"
METRIC_TRAIN_ACC = "train/acc"
METRIC_CLEAN_ACC = "eval/clean_acc"
METRIC_ROBUST_ACC = "eval/robust_acc"
METRIC_EPOCH = "epoch"
METRIC_EPOCH_TIME = "time/epoch_s"
METRIC_FINAL_CLEAN_ACC = "final/clean_acc"
METRIC_FINAL_ROBUST_ACC = "final/robust_acc"
METRIC_TOTAL_TIME = "time/train_s"  # sum of epoch times, restarts excluded



# A trial's final checkpoint (model.safetensors + meta.json) lives under this artifact path,
# the ones logged during training (train.checkpoint_every) under checkpoints/epoch_XXX/.
ARTIFACT_CHECKPOINT = "checkpoint"
ARTIFACT_EPOCH_CHECKPOINTS = "checkpoints"
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")

# MLflow error codes worth retrying: the store is busy or restarting, not the request wrong.
_TRANSIENT_CODES = frozenset({
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "IO_ERROR", "ABORTED",
})

T = TypeVar("T")


def format_eps(eps: float) -> str:
    """Epsilon as a tag/cell string: shortest exact round-trip repr (``0.1``, ``0.0313...``)."""
    return repr(float(eps))


def arch_label(arch: str, width: float = 1.0) -> str:
    """An architecture as users and tables name it: ``resnet18`` at width 1, else
    ``resnet18-w0.125`` (the one place this label is spelled)."""
    width = float(width)
    return arch if width == 1.0 else f"{arch}-w{width:g}"


def trial_run_name(arch: str, width: float, threat_model: str, eps: float, seed: int) -> str:
    """A trial run's name in the MLflow UI: ``resnet18-w0.125 / linf 0.1 / seed 0``."""
    return f"{arch_label(arch, width)} / {threat_model} {float(eps):g} / seed {seed}"


def final_robust_at(eps: float) -> str:
    """Metric name of the final robust accuracy at an extra evaluation epsilon."""
    return f"final/robust_acc_at_{float(eps):g}"


@dataclass(frozen=True)
class Paths:
    """Absolute local locations under ``UNISWEEP_HOME`` (see docs/architecture.md)."""

    home: Path
    tracking_uri: str  # sqlite:///<home>/mlflow.db
    artifact_root: Path  # <home>/mlartifacts
    storage_path: Path  # <home>/ray_results (Ray Tune storage)
    reports: Path  # <home>/reports


def default_paths(home: str | os.PathLike[str] | None = None) -> Paths:
    """Default local paths; ``home`` falls back to ``$UNISWEEP_HOME``, then the working dir.

    Args:
        home: base directory; made absolute. Nothing is created.

    Returns:
        `Paths` with every entry absolute.
    """
    base = Path(home if home is not None else os.environ.get("UNISWEEP_HOME") or os.getcwd())
    base = base.expanduser().resolve()
    return Paths(
        home=base,
        tracking_uri=f"sqlite:///{base / 'mlflow.db'}",
        artifact_root=base / "mlartifacts",
        storage_path=base / "ray_results",
        reports=base / "reports",
    )


def resolve_tracking_uri(tracking_uri: str | None = None,
                         home: str | os.PathLike[str] | None = None) -> str:
    """The tracking store to use: an explicit URI, else ``$MLFLOW_TRACKING_URI``, else the local
    ``sqlite:///<UNISWEEP_HOME>/mlflow.db`` (the one place this rule is written)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_paths(home).tracking_uri


def _is_transient(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        if exc.error_code in _TRANSIENT_CODES:
            return True
        # sqlite under concurrent writers surfaces as an OperationalError wrapped by MLflow.
        return "database is locked" in str(exc)
    return isinstance(exc, (ConnectionError, TimeoutError))


def with_retries(fn: Callable[..., T], *args: Any, attempts: int = 6, base_delay_s: float = 0.5,
                 max_delay_s: float = 8.0, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, retrying transient tracking-store errors with backoff.

    Delays double from ``base_delay_s`` up to ``max_delay_s`` (0.5+1+2+4+8 s = 15.5 s over six
    attempts by default: long enough for a tracking server restart). Non-transient errors (a bad
    parameter, a missing run) are raised at once.
    """
    delay = base_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - filtered by _is_transient, re-raised otherwise
            if attempt == attempts or not _is_transient(exc):
                raise
            log.warning("MLflow call %s failed (%s); retry %d/%d in %.1f s",
                        getattr(fn, "__name__", fn), exc, attempt, attempts - 1, delay)
            time.sleep(delay)
            delay = min(2 * delay, max_delay_s)
    raise RuntimeError("unreachable: the retry loop returns or raises")


def store_exists(tracking_uri: str) -> bool:
    """False only for a sqlite store whose file is missing (a client would create it)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).exists()
    return True


def make_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client bound to ``tracking_uri`` (no global ``mlflow.set_tracking_uri``)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _artifact_uri(location: str | os.PathLike[str]) -> str:
    text = str(location)
    if "://" in text:
        return text
    return Path(text).expanduser().resolve().as_uri()


def ensure_experiment(client: MlflowClient, name: str, *,
                      artifact_location: str | os.PathLike[str]) -> str:
    """Return the id of experiment ``name``, creating it with an absolute artifact location.

    Call this on the driver before any trial starts: on a fresh sqlite store the first call
    runs the schema migrations, which race when several trials do it at once (ENV.md).

    Args:
        client: a client for the tracking store.
        name: experiment name (the sweep name).
        artifact_location: a local directory (made absolute, as a ``file://`` URI) or a URI
            such as ``s3://bucket/prefix``; the experiment's artifacts go to
            ``<artifact_location>/<name>``.

    Returns:
        The experiment id (string). The experiment carries ``mlflow.experimentKind =
        custom_model_development`` (a model-training experiment), also when it existed already.
    """
    from mlflow.entities import LifecycleStage

    exp = with_retries(client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == LifecycleStage.DELETED:
            with_retries(client.restore_experiment, exp.experiment_id)
        if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
            with_retries(client.set_experiment_tag, exp.experiment_id, TAG_EXPERIMENT_KIND,
                         EXPERIMENT_KIND)
        return exp.experiment_id
    location = _artifact_uri(artifact_location).rstrip("/") + "/" + name
    try:
        return with_retries(client.create_experiment, name, artifact_location=location,
                            tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    except Exception:
        # Another process created it between our lookup and create: use theirs.
        exp = with_retries(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def search_sweep_runs(client: MlflowClient, experiment_id: str, *, sweep: str,
                      role: str | None = None, extra: Mapping[str, str] | None = None) -> list[Run]:
    """All runs of ``sweep`` (optionally of one role, and with extra tag equalities), oldest
    first."""
    clauses = [f"tags.`{TAG_SWEEP}` = {_quote(sweep)}"]
    if role is not None:
        clauses.append(f"tags.`{TAG_ROLE}` = {_quote(role)}")
    for key, value in (extra or {}).items():
        clauses.append(f"tags.`{key}` = {_quote(value)}")
    runs: list[Run] = []
    token = None
    while True:
        page = with_retries(client.search_runs, [experiment_id], " and ".join(clauses),
                            max_results=1000, order_by=["attributes.start_time ASC"],
                            page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep: str) -> Run | None:
    """The sweep's parent run (tag role = sweep), or None. Oldest wins if several exist."""
    runs = search_sweep_runs(client, experiment_id, sweep=sweep, role="sweep")
    return runs[0] if runs else None


def find_trial_run(client: MlflowClient, experiment_id: str, *, sweep: str,
                   trial_id: str) -> Run | None:
    """The one run of a trial (found by sweep + trial id tags), whatever its status, or None."""
    runs = search_sweep_runs(client, experiment_id, sweep=sweep, extra={TAG_TRIAL_ID: trial_id})
    if len(runs) > 1:
        log.warning("trial %s of sweep %s has %d runs; continuing the oldest (%s)",
                    trial_id, sweep, len(runs), runs[0].info.run_id)
    return runs[0] if runs else None


def sweep_child_run(client: MlflowClient, experiment_id: str, *, sweep: str, role: str) -> str:
    """The id of the sweep's one run of ``role`` (``analysis``, ``reproduction``): the newest
    existing one, else a new run ``<sweep>-<role>`` nested under the sweep's parent run."""
    runs = search_sweep_runs(client, experiment_id, sweep=sweep, role=role)
    if runs:
        return runs[-1].info.run_id
    tags = {TAG_SWEEP: sweep, TAG_ROLE: role}
    parent = find_sweep_run(client, experiment_id, sweep)
    if parent is not None:
        tags[TAG_PARENT] = parent.info.run_id
    run = with_retries(client.create_run, experiment_id, tags=tags, run_name=f"{sweep}-{role}")
    return run.info.run_id


def set_description(client: MlflowClient, experiment_id: str, run_id: str | None,
                    text: str) -> None:
    """Write ``text`` (Markdown) as the description of the experiment and, if given, of a run:
    the UI shows the experiment's above its runs table and the run's on the run page."""
    with_retries(client.set_experiment_tag, experiment_id, TAG_NOTE, text)
    if run_id is not None:
        with_retries(client.set_tag, run_id, TAG_NOTE, text)


def with_report_line(note: str, line: str) -> str:
    """``note`` with its `REPORT_MARK` line replaced by ``line`` (appended if it has none)."""
    kept = [ln for ln in note.splitlines() if not ln.startswith(REPORT_MARK)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", line]) + "\n"


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The UI page that lists an experiment's runs, in the UI's model-training mode, sorted by
    run name: a flat list, trials included (sorted by start time, the UI folds child runs
    under their parent run)."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType="
            "machine_learning&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true")


def epoch_checkpoint_path(epoch: int) -> str:
    """Artifact path of the checkpoint logged after epoch ``epoch``: ``checkpoints/epoch_005``."""
    return f"{ARTIFACT_EPOCH_CHECKPOINTS}/epoch_{int(epoch):03d}"


def logged_epochs(client: MlflowClient, run_id: str) -> list[int]:
    """The epochs whose checkpoints a run holds under ``checkpoints/``, ascending."""
    listed = with_retries(client.list_artifacts, run_id, ARTIFACT_EPOCH_CHECKPOINTS)
    found = (_EPOCH_DIR.match(posixpath.basename(a.path)) for a in listed if a.is_dir)
    return sorted(int(m[1]) for m in found if m)


def delete_artifacts(client: MlflowClient, run_id: str, path: str) -> bool:
    """Delete ``path`` (a file or a folder) from a run's artifacts.

    Returns:
        False when the run's artifact store cannot delete (MLflow's repositories for Databricks,
        DBFS, FTP and Azure Data Lake raise "not implemented"; a tracking server proxying
        artifacts refuses when it does not serve them); the artifacts then stay.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run = with_retries(client.get_run, run_id)
    try:
        repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
        with_retries(repo.delete_artifacts, path)
    except (NotImplementedError, MlflowException, OSError) as exc:
        log.warning("cannot delete artifact %s of run %s (%s): %s", path, run_id,
                    run.info.artifact_uri, exc)
        return False
    return True


def flatten_params(tree: Mapping[str, Any], *, prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping into ``{"a.b": "value"}`` strings for MLflow params.

    Lists and tuples are written as their Python repr (``[0.1, 0.2]``); None as ``None``.
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=name))
        elif isinstance(value, (list, tuple)):
            out[name] = repr(list(value))
        else:
            out[name] = str(value)
    return out


def chunks(items: Iterable[T], size: int) -> Iterable[list[T]]:
    """Split ``items`` into lists of at most ``size`` (MLflow caps a batch at 100 params/tags)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
