"""Model discovery: the sweep's trained models as records, found in MLflow by the sweep tag
(STYLE rule 14), and loading one model's checkpoint.

A sweep is an MLflow experiment named after it. Its trial runs carry the tags
``unisweep.sweep=<sweep>`` and ``unisweep.role=trial`` plus the grid coordinates; the final
checkpoint lives under the run's artifact path ``checkpoint/`` (``model.safetensors`` +
``meta.json``). Nothing here scans folders or parses names out of paths.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from trainables import tracking as tr
from trainables.errors import CheckpointError, UserError

__all__ = [
    "ModelRef",
    "SkippedRun",
    "Discovery",
    "discover_models",
    "load_model",
    "download_checkpoint",
    "models_frame",
    "quiet_downloads",
    "read_meta",
]

log = logging.getLogger(__name__)

CHECKPOINT_PATH = tr.ARTIFACT_CHECKPOINT
CHECKPOINT_FILES = ("model.safetensors", "meta.json")


@dataclass(frozen=True)
class ModelRef:
    """One finished trial of a sweep: what it is, how good it is, where its weights are.

    Attributes:
        run_id: MLflow run id of the trial (the model's stable identifier in every table).
        label: short human label, ``<arch>[-w<width>]-e<eps>-s<seed>`` (``arch_label`` plus the
            grid cell; unique within a sweep).
        arch: key in ``trainables.models.MODELS``.
        width: width multiplier the model was built with.
        dataset: dataset name (``digits``, ``cifar10``, ...).
        threat_model: ``l2`` or ``linf``.
        eps: training epsilon on the [0, 1] pixel scale (0 = standard training).
        seed: the trial's seed.
        clean_acc: final clean accuracy on the eval subset in [0, 1] (None if not logged).
        robust_acc: final robust accuracy at ``eps`` in [0, 1] (None if not logged).
        checkpoint_uri: artifact URI of the ``checkpoint/`` directory.
        trial_id: ``unisweep.trial_id`` tag.
        data_hash: ``meta.json`` ``data_hash`` (the eval set the trial was evaluated on).
        num_classes: number of classes of the model's head.
        num_gpus: GPUs the trial ran with (extraction asks for the same).
        params: the run's MLflow params (strings).
        data: how the trial drew its data, the ``trainables.data.load_dataset`` options
            ``root``, ``eval_size``, ``eval_seed``, ``image_size``, ``n_train``, ``n_test`` (from
            the run's params, else
            ``meta.json``'s ``config``), so the analysis reloads the same eval set unasked.
        epoch: the training epoch of this checkpoint (the final one: the epochs trained).
        final: True for the trial's final checkpoint (``checkpoint/``), False for one logged
            during training (``checkpoints/epoch_XXX/``, ``train.checkpoint_every``). Such a
            model's ``run_id`` is ``<run id>_epoch<XXX>`` and its label ends in ``-ep<E>``, so
            that each (trial, epoch) is one item of the pair table.
        mlflow_run_id: the trial's MLflow run ("" = ``run_id``, the final checkpoint's case).
        checkpoint_path: the artifact path of the checkpoint directory within that run.
    """

    run_id: str
    label: str
    arch: str
    width: float
    dataset: str
    threat_model: str
    eps: float
    seed: int
    clean_acc: float | None
    robust_acc: float | None
    checkpoint_uri: str
    trial_id: str = ""
    data_hash: str = ""
    num_classes: int = 0
    num_gpus: float = 0.0
    params: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    epoch: int = 0
    final: bool = True
    mlflow_run_id: str = ""
    checkpoint_path: str = CHECKPOINT_PATH

    @property
    def run(self) -> str:
        """The MLflow run holding this model's checkpoint."""
        return self.mlflow_run_id or self.run_id


@dataclass(frozen=True)
class SkippedRun:
    """A trial run that is not analysed, and why (shown to the user and in the report)."""

    run_id: str
    label: str
    status: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    """What a sweep holds: models to analyse plus the runs left out, each with its reason."""

    sweep: str
    experiment_id: str
    models: tuple[ModelRef, ...]
    skipped: tuple[SkippedRun, ...]

    def describe(self) -> str:
        """A human listing: one line per skipped run, then the count of usable models."""
        lines = [f"sweep {self.sweep!r}: {len(self.models)} finished model(s) to analyse"]
        for s in self.skipped:
            lines.append(f"  skipped {s.label} (run {s.run_id}, {s.status}): {s.reason}")
        return "\n".join(lines)


def _tag_float(tags: dict[str, str], key: str, default: float | None = None) -> float | None:
    raw = tags.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def _metric(metrics: dict[str, float], *names: str) -> float | None:
    for name in names:
        if name in metrics:
            return float(metrics[name])
    return None


def _label(arch: str, width: float, eps: float, seed: int) -> str:
    return f"{tr.arch_label(arch, width)}-e{eps:g}-s{seed}"


# load_dataset option -> TrainConfig field (logged as a run param and in meta.json's config)
_DATA_FIELDS = {"root": "data_root", "eval_size": "eval_size", "eval_seed": "eval_seed",
                "image_size": "image_size", "n_train": "n_train", "n_test": "n_test"}


def _data_options(params: dict[str, str], meta: dict[str, Any]) -> dict[str, Any]:
    """The trial's data options: MLflow params (``data_root`` or ``<prefix>.data_root``, ...)
    first, then ``meta.json`` ``config``; missing ones keep ``load_dataset``'s defaults (the
    set sizes ``n_train`` / ``n_test`` appear only where a trial set them)."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    out: dict[str, Any] = {"root": None, "eval_size": None, "eval_seed": 0, "image_size": None}
    for option, name in _DATA_FIELDS.items():
        raw: Any = next((v for k, v in params.items() if k == name or k.endswith("." + name)),
                        config.get(name))
        if raw is None or raw in ("None", ""):
            continue
        if option == "root":
            out[option] = str(raw)
            continue
        try:
            out[option] = int(raw)
        except (TypeError, ValueError):
            log.warning("ignoring unreadable %s=%r of a trial run", name, raw)
    return out


def quiet_downloads() -> None:
    """No MLflow progress bar per download: in a Ray worker each becomes driver log spam, and
    in the pipeline they would drown its own progress lines."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def read_meta(run_id: str, tracking_uri: str | None,
               path: str = CHECKPOINT_PATH) -> dict[str, Any]:
    """Download only ``<path>/meta.json`` of a run (small) and parse it."""
    import mlflow  # mlflow (heavy) only when a store is read: importing this module stays light

    quiet_downloads()

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=f"{path}/meta.json",
            dst_path=tmp,
            tracking_uri=tracking_uri,
        )
        try:
            return json.loads(Path(local).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"run {run_id}: {path}/meta.json is not valid JSON ({exc})"
            ) from exc


def _known_sweeps(client) -> list[str]:
    from mlflow.entities import ViewType  # mlflow only when a store is read (see read_meta)

    names = []
    for exp in tr.with_retries(client.search_experiments, view_type=ViewType.ACTIVE_ONLY):
        runs = tr.with_retries(
            client.search_runs, [exp.experiment_id],
            filter_string=f"tags.`{tr.TAG_SWEEP}` LIKE '%'",
            max_results=1,
        )
        if len(runs) > 0:
            names.append(exp.name)
    return sorted(names)


def discover_models(sweep: str, *, tracking_uri: str | None = None) -> Discovery:
    """Find the sweep's FINISHED trial runs with a complete checkpoint.

    Args:
        sweep: sweep name (= MLflow experiment name).
        tracking_uri: MLflow tracking URI; None: ``trainables.tracking.resolve_tracking_uri``.

    Returns:
        A ``Discovery`` whose models are sorted by (dataset, eps, arch, seed) and whose skipped
        list says, per run, why it is left out (failed, still running, killed, under-trained
        (tag ``unisweep.undertrained``), missing or unreadable checkpoint, duplicate of a trial).

    Raises:
        UserError: the sweep does not exist (the message lists the sweeps that do).
    """
    tracking_uri = tr.resolve_tracking_uri(tracking_uri)
    client = tr.make_client(tracking_uri)
    exp = tr.with_retries(client.get_experiment_by_name, sweep)
    if exp is None:
        known = _known_sweeps(client)
        raise UserError(
            f"unknown sweep {sweep!r} in tracking store {tracking_uri}; "
            f"known sweeps: {known if known else 'none (run a sweep first: make sweep)'}"
        )
    # newest first, so a re-run of a trial wins over an older finished run of it
    runs = tr.search_sweep_runs(client, exp.experiment_id, sweep=sweep, role="trial")[::-1]

    models: dict[str, ModelRef] = {}
    skipped: list[SkippedRun] = []
    for run in runs:
        ref_or_skip = _to_ref(client, run, tracking_uri)
        if isinstance(ref_or_skip, SkippedRun):
            skipped.append(ref_or_skip)
            continue
        key = ref_or_skip.trial_id or ref_or_skip.run_id
        if key in models:  # runs are newest first: keep the newest finished run of a trial
            skipped.append(
                SkippedRun(ref_or_skip.run_id, ref_or_skip.label, "FINISHED",
                           f"duplicate of trial {key} (newer run {models[key].run_id} is used)")
            )
            continue
        models[key] = ref_or_skip
    ordered = sorted(models.values(), key=lambda m: (m.dataset, m.eps, m.arch, m.seed, m.run_id))
    disc = Discovery(sweep, exp.experiment_id, tuple(_dedupe_labels(ordered)), tuple(skipped))
    log.info("%s", disc.describe())
    return disc


def _dedupe_labels(models: list[ModelRef]) -> list[ModelRef]:
    """Make labels unique (two trials of one grid cell, e.g. other hyperparameters, would
    otherwise share a label)."""
    seen: dict[str, int] = {}
    out = []
    for m in models:
        n = seen.get(m.label, 0)
        seen[m.label] = n + 1
        out.append(m if n == 0 else replace(m, label=f"{m.label}#{n}"))
    return out


def _to_ref(client, run, tracking_uri: str | None) -> ModelRef | SkippedRun:
    tags = run.data.tags
    arch = tags.get(tr.TAG_ARCH, "?")
    eps = _tag_float(tags, tr.TAG_EPS, 0.0) or 0.0
    seed = int(_tag_float(tags, tr.TAG_SEED, 0) or 0)
    label = _label(arch, _tag_float(tags, tr.TAG_WIDTH, 1.0) or 1.0, eps, seed)
    status = run.info.status
    if status != "FINISHED":
        why = {"FAILED": "trial failed", "RUNNING": "trial still running",
               "SCHEDULED": "trial not started", "KILLED": "trial was killed"}
        return SkippedRun(run.info.run_id, label, status, why.get(status, f"status {status}"))
    if tags.get(tr.TAG_UNDERTRAINED) == "true":  # never compared silently (eval.min_clean_acc)
        return SkippedRun(run.info.run_id, label, status,
                          f"under-trained: {tags.get(tr.TAG_UNDERTRAINED_WHY, '?')}; not compared")
    listed = tr.with_retries(client.list_artifacts, run.info.run_id, CHECKPOINT_PATH)
    names = {Path(a.path).name for a in listed}
    missing = [f for f in CHECKPOINT_FILES if f not in names]
    if missing:
        return SkippedRun(run.info.run_id, label, status,
                          f"missing checkpoint: {CHECKPOINT_PATH}/{', '.join(missing)} not logged")
    try:
        meta = read_meta(run.info.run_id, tracking_uri)
    except CheckpointError as exc:
        return SkippedRun(run.info.run_id, label, status, str(exc))
    metrics = run.data.metrics
    params = dict(run.data.params)
    return ModelRef(
        run_id=run.info.run_id,
        label=label,
        arch=str(meta.get("arch", arch)),
        width=float(meta.get("width", tags.get(tr.TAG_WIDTH, 1.0))),
        dataset=str(meta.get("dataset", tags.get(tr.TAG_DATASET, "?"))),
        threat_model=str(meta.get("threat_model", tags.get(tr.TAG_THREAT_MODEL, "?"))),
        eps=float(meta.get("eps", eps)),
        seed=int(meta.get("seed", seed)),
        clean_acc=_metric(metrics, tr.METRIC_FINAL_CLEAN_ACC, tr.METRIC_CLEAN_ACC),
        robust_acc=_metric(metrics, tr.METRIC_FINAL_ROBUST_ACC, tr.METRIC_ROBUST_ACC),
        checkpoint_uri=f"{run.info.artifact_uri.rstrip('/')}/{CHECKPOINT_PATH}",
        trial_id=tags.get(tr.TAG_TRIAL_ID, ""),
        data_hash=str(meta.get("data_hash", "")),
        num_classes=int(meta.get("num_classes", 0)),
        num_gpus=float(params.get("num_gpus", params.get("resources.gpu", 0)) or 0),
        params=params,
        data=_data_options(params, meta),
        epoch=int(meta.get("epoch") or 0),
    )


def download_checkpoint(ref: ModelRef, dst: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Download the model's checkpoint directory (the run's ``checkpoint/``, or the epoch's
    ``checkpoints/epoch_XXX/``) into ``dst``; returns its path."""
    import mlflow  # mlflow only when a store is read (see read_meta)

    quiet_downloads()
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=ref.run, artifact_path=ref.checkpoint_path, dst_path=str(dst),
            tracking_uri=tracking_uri,
        )
    except Exception as exc:  # MLflow raises several types for a missing/unreadable artifact
        raise CheckpointError(
            f"model {ref.label} (run {ref.run_id}): cannot download {ref.checkpoint_uri}: {exc}"
        ) from exc
    return Path(local)


def load_model(ref: ModelRef, *, tracking_uri: str | None = None):
    """Download and load one model with ``trainables.checkpoints.load_checkpoint`` (no pickle).

    Returns:
        ``(model, meta)``: the rebuilt ``UniModel`` in eval mode on the CPU, and ``meta.json``.

    Raises:
        CheckpointError: the checkpoint is missing, truncated or corrupt; the message names the
            model and the file.
    """
    from trainables.checkpoints import load_checkpoint  # torch: only when a model is loaded

    with tempfile.TemporaryDirectory(prefix="unisweep-ckpt-") as tmp:
        directory = download_checkpoint(ref, tmp, tracking_uri=tracking_uri)
        try:
            model, meta = load_checkpoint(directory)
        except CheckpointError as exc:
            raise CheckpointError(f"model {ref.label} (run {ref.run_id}): {exc}") from exc
    model.eval()
    return model, meta


def models_frame(models: list[ModelRef] | tuple[ModelRef, ...]):
    """The models as a DataFrame (one row per model; ``params`` dropped), for tables/reports."""
    rows = []
    for m in models:
        row = asdict(m)
        row.pop("params")
        rows.append(row)
    return pd.DataFrame(rows, columns=[f for f in ModelRef.__dataclass_fields__ if f != "params"])
