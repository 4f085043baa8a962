"""``run_analysis``: the analysis of one sweep, end to end (used by the CLI and
by ``sweeps``' demo). The pieces are ``analysis.inputs`` (models, eval sets, input sets,
extraction) and ``analysis.engine`` (measure specs, pair planning, engines, the result store).

run_analysis: discover the sweep's finished models in MLflow -> load each dataset's fixed eval
set (refusing models evaluated on other inputs) -> build the input sets and every model's
artifacts once (Ray tasks, cached) -> plan the pairs not yet in ``pairs.parquet`` -> compute
them (serial or Ray actors) -> append to the table -> log everything to the sweep's analysis
run in MLflow (tag ``unisweep.role=analysis``, child of the sweep's run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.engine import (
    DEFAULT_MEASURES,
    KEY,
    MeasureSpec,
    ResultStore,
    item_id,
    make_engine,
    parse_measure,
    plan_pairs,
)
from analysis.inputs import (
    LAYER,
    ArtifactCache,
    Block,
    Discovery,
    Epochs,
    EvalSet,
    InputSet,
    InvertedInputs,
    ModelRef,
    at_epochs,
    discover_models,
    extract_all,
    load_eval_sets,
    models_frame,
    parse_input_set,
    quiet_downloads,
    trial_run_of,
)
from analysis.measures import MEASURES, MeasureInputError, get_measure
from trainables import tracking as tr
from trainables.errors import ConfigError, UserError

__all__ = ["AnalysisResult", "run_analysis", "analysis_run", "report_dir", "check_specs_fit",
           "check_table_belongs", "ensure_ray", "inputs_extras"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AnalysisResult:
    """What ``run_analysis`` did, and where its outputs are."""

    sweep: str
    report_dir: Path
    pairs_path: Path
    models: tuple[ModelRef, ...]
    skipped: dict[str, str]  # run id (or set:run id) -> reason
    new_rows: int
    total_rows: int
    error_rows: int
    wall_s: float
    analysis_run_id: str | None
    stats: dict[str, Any] = field(default_factory=dict)


def report_dir(sweep: str, home: str | os.PathLike | None = None) -> Path:
    """``$UNISWEEP_HOME/reports/<sweep>`` (absolute)."""
    return tr.default_paths(home).reports / sweep


def ensure_ray(actors: int) -> bool:
    """Start a local Ray if the engine needs one and none runs; True if we started it."""
    if actors == 0:
        return False
    import ray  # Ray only when actors are asked for: the serial path and `report` need none

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True


def analysis_run(client, sweep: str, experiment_id: str) -> str:
    """The sweep's analysis run (reused across re-runs), child of the sweep's parent run."""
    return tr.sweep_child_run(client, experiment_id, sweep=sweep, role="analysis")


def run_analysis(sweep: str, *, tracking_uri: str | None = None,
                 home: str | os.PathLike | None = None,
                 measures: Sequence[str | MeasureSpec] | None = None,
                 input_sets: Sequence[str] = ("clean",), actors: int = 0,
                 data_root: str | None = None, eval_size: int | None = None,
                 data_seed: int | None = None, retry_errors: bool = False,
                 log_mlflow: bool = True, progress: Progress | None = None,
                 epochs: Epochs | None = None, backend: str = "numpy",
                 device: str | None = None, gpus_per_actor: float = 0.0) -> AnalysisResult:
    """Compute every missing (pair, input set, measure) of a sweep into ``pairs.parquet``.

    Args:
        sweep: sweep name (MLflow experiment).
        tracking_uri: see ``trainables.tracking.resolve_tracking_uri``.
        home: ``UNISWEEP_HOME`` override (reports go to ``<home>/reports/<sweep>``).
        measures: specs such as ``"knn_jaccard:k=10"``; default ``DEFAULT_MEASURES`` (those
            registered).
        input_sets: names in ``analysis.inputs.registry.INPUT_SETS``, with options as
            ``name[:key=value...]`` (e.g. ``inverted:iterations=200:num_targets=64``).
        actors: 0 = serial engine and serial extraction; N >= 1 = N Ray actors for pairs and
            Ray tasks for extraction (a local Ray is started if none runs).
        data_root, eval_size, data_seed: override the eval-set options read from the runs.
        retry_errors: recompute pairs stored with ``status="error"``.
        progress: ``progress(stage, done, total)`` for long work.
        epochs: None: the trials' final models; else the models at these training epochs (or
            ``"all"`` logged ones, `analysis.inputs.at_epochs`), each (trial, epoch) one item,
            compared with the models of its epoch. ``models.parquet`` accumulates every item
            analysed (columns ``epoch``, ``final``).
        backend, device: the measures' array library (``numpy``, ``torch``, ``auto``) and device
            (``cpu``, ``cuda``; ``cuda:N`` for the serial engine), see
            ``analysis.measures._backend``; measures without a torch implementation run on numpy.
        gpus_per_actor: GPUs each Ray actor reserves (fractions allowed; needs ``actors`` >= 1
            and the torch or auto backend).

    Raises:
        UserError: unknown sweep, no usable model, bad measure/input set/actors.
    """
    t_start = time.perf_counter()
    quiet_downloads()  # before Ray starts, so its workers inherit it
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 0:
        raise ConfigError(f"actors must be an integer >= 0 (0 = serial), got actors={actors!r}")
    specs = _specs(measures)
    engine = make_engine(actors, backend=backend, device=device, gpus_per_actor=gpus_per_actor)
    isets = [parse_input_set(text) for text in input_sets]
    uri = tr.resolve_tracking_uri(tracking_uri, home)
    disc: Discovery = discover_models(sweep, tracking_uri=uri)
    if epochs is not None and disc.models:
        disc = at_epochs(disc, epochs, tracking_uri=uri)
    skipped = {s.run_id: f"{s.label}: {s.reason}" for s in disc.skipped}
    if not disc.models:
        raise UserError(f"sweep {sweep!r} has no finished model with a checkpoint to analyse\n"
                        + disc.describe())
    out_dir = report_dir(sweep, home)
    store = ResultStore(out_dir / "pairs.parquet")
    check_table_belongs(store.load(), store.path, sweep,
                        {m.run_id for m in disc.models} | {s.run_id for s in disc.skipped})
    bases = load_eval_sets(disc.models, data_root=data_root, eval_size=eval_size,
                           data_seed=data_seed)
    check_specs_fit(specs, isets, bases)  # before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    started = ensure_ray(actors)
    try:
        blocks, failures = extract_all(disc.models, isets, bases=bases,
                                       cache=ArtifactCache(out_dir / "cache"), tracking_uri=uri,
                                       use_ray=actors > 0, progress=progress)
        label = {m.run_id: m.label for m in disc.models}
        skipped.update({k: f"{label.get(k, k)}: {v}" for k, v in failures.items()})
        new_rows, stats = _compute(blocks, specs, store, actors=actors,
                                   retry_errors=retry_errors, progress=progress, engine=engine,
                                   extras=inputs_extras(blocks, isets, bases, disc.models))
    finally:
        if started:
            import ray  # started above, so imported already

            ray.shutdown()
    _merge_models(out_dir / "models.parquet", disc.models)
    _write_json(out_dir / "skipped.json", skipped)
    _write_json(out_dir / "cache" / "manifest.json", _manifest(blocks, isets, bases))
    table = store.load()
    result = AnalysisResult(
        sweep=sweep, report_dir=out_dir, pairs_path=store.path, models=disc.models,
        skipped=skipped, new_rows=new_rows, total_rows=len(table),
        error_rows=int((table["status"] == "error").sum()), wall_s=time.perf_counter() - t_start,
        analysis_run_id=None, stats=stats)
    if log_mlflow:
        run_id = _log_analysis(uri, disc, result, specs, input_sets, actors,
                               engine={"backend": backend, "device": device or "cpu",
                                       "gpus_per_actor": gpus_per_actor})
        result = AnalysisResult(**{**result.__dict__, "analysis_run_id": run_id})
    return result


def _merge_models(path: Path, models: Sequence[ModelRef]) -> None:
    """Write ``models.parquet``: these models, plus the earlier runs' models of other ids (an
    analysis by epoch adds its (trial, epoch) items beside the final models)."""
    frame = models_frame(models)
    if path.exists():
        old = pd.read_parquet(path)
        frame = pd.concat([old[~old["run_id"].isin(frame["run_id"])], frame], ignore_index=True)
    frame.to_parquet(path, index=False)


def check_table_belongs(table, path: Path, sweep: str, run_ids: set[str]) -> None:
    """Refuse a result table holding models that are not runs of ``sweep`` (``run_ids``).

    Such a table was written for another sweep (or another tracking store with a sweep of the
    same name, under the same ``UNISWEEP_HOME``): appending to it, or reporting from it, would
    mix two experiments.

    Raises:
        UserError: naming the file, the sweep, how many models are foreign and one of them.
    """
    ids = set(table["model_a"]) | set(table["model_b"])
    foreign = sorted(i for i in ids if i not in run_ids and trial_run_of(i) not in run_ids)
    if foreign:
        raise UserError(f"{path} holds results for {len(foreign)} model(s) that are not runs of "
                        f"sweep {sweep!r} (e.g. {foreign[0]}): it belongs to another sweep or "
                        f"tracking store; allowed: the table of this sweep (move that one away, "
                        f"or set UNISWEEP_HOME to another folder)")


def _specs(measures: Sequence[str | MeasureSpec] | None) -> list[MeasureSpec]:
    if measures is None:
        return [s for s in DEFAULT_MEASURES if s.name in MEASURES]
    specs = [m if isinstance(m, MeasureSpec) else parse_measure(m) for m in measures]
    if not specs:
        raise ConfigError(f"measures must name at least one measure; known: {sorted(MEASURES)}")
    return list(dict.fromkeys(specs))


def check_specs_fit(specs: Sequence[MeasureSpec], input_sets: Sequence[InputSet],
                    bases: Mapping[str, EvalSet]) -> None:
    """Check every measure's params against the size of every input set it will run on.

    Runs before anything is computed or written, so a spec such as ``knn_jaccard:k=100000`` on a
    360-image eval set stops the run with one message instead of filling the table with error
    rows.

    Raises:
        MeasureInputError: naming the measure spec, the input set and its N, and (from the
            measure) the param, its value and what is allowed.
        ConfigError: an input set's options do not fit the eval set (``InputSet.size``).
    """
    for spec in specs:
        measure = get_measure(spec.name)
        for iset in input_sets:
            for dataset, base in bases.items():
                n = iset.size(base)
                if n is None:
                    continue
                where = f"input set {iset.name!r} ({dataset}, N={n} inputs)"
                if n < measure.min_n:
                    raise MeasureInputError(f"measure {spec} does not fit {where}: it needs "
                                            f"N >= {measure.min_n}")
                params = dict(spec.kwargs)
                if "labels" in measure.params:
                    params["labels"] = np.zeros(n, dtype=np.int64)
                try:
                    measure.resolve_params(params, n)
                except MeasureInputError as exc:
                    why = str(exc)
                    for prefix in (f"{measure.name}: ", f"measure {measure.name!r}: "):
                        why = why.removeprefix(prefix)
                    raise MeasureInputError(f"measure {spec} does not fit {where}: {why}") from None


def inputs_extras(blocks: Sequence[Block], isets: Sequence[InputSet],
                  bases: Mapping[str, EvalSet],
                  models: Sequence[ModelRef]) -> dict[str, dict[str, np.ndarray]]:
    """inputs hash -> arrays the engine takes beside the items' own (``Extras``): for every
    inverted block, the seeds' classes (``seed_labels``) of its shared seed/target pairing,
    which ``transfer_seed`` compares the column model's predictions with."""
    by_id = {m.run_id: m for m in models}
    out: dict[str, dict[str, np.ndarray]] = {}
    for iset in isets:
        if not isinstance(iset, InvertedInputs):
            continue
        for blk in blocks:
            base, source = bases.get(blk.dataset), by_id.get(blk.rows[0])
            if blk.input_set == iset.name and base is not None and source is not None \
                    and iset.key(base, source) == blk.inputs_key:
                seed_idx, _ = iset.pairs(base)
                out[blk.inputs_key] = {"seed_labels": np.asarray(base.y)[seed_idx]}
    return out


def _compute(blocks: Sequence[Block], specs: Sequence[MeasureSpec], store: ResultStore, *,
             actors: int, retry_errors: bool, progress: Progress | None,
             extras: Mapping[str, Mapping[str, np.ndarray]] | None = None,
             flush_s: float = 10.0, engine: Any = None) -> tuple[int, dict[str, Any]]:
    """Plan the pairs the store lacks and run the engine on them (``engine``, else a default
    one for ``actors``), appending rows to the store every ``flush_s`` seconds and at the end;
    returns (rows written, engine stats)."""
    stored = store.load()
    if retry_errors:
        stored = stored[stored["status"] == "ok"]
    done = set(zip(*(stored[k].astype(str) for k in KEY), strict=True))
    plan = plan_pairs(blocks, specs, done=done)
    items = {item_id(r, b.inputs_key): p for b in blocks for r, p in b.artifacts.items()}
    engine = engine or make_engine(actors)
    buffer: list[dict] = []
    written = [0, time.monotonic()]

    per_measure = _PerMeasure(plan, progress) if progress else None

    def sink(rows):
        if per_measure:
            per_measure.add(rows)
        buffer.extend(rows)
        if time.monotonic() - written[1] > flush_s:
            written[0] += store.append(buffer, replace_errors=retry_errors)
            buffer.clear()
            written[1] = time.monotonic()

    stats = engine.run(plan, items, sink=sink, extras=extras)
    written[0] += store.append(buffer, replace_errors=retry_errors)
    return written[0], stats.__dict__


class _PerMeasure:
    """The pair computation's progress, one stage per measure spec (``pairs <spec>``). The
    engines run the specs one after the other in plan order, so a spec's clock starts as the
    one before it finishes."""

    def __init__(self, plan: Mapping[MeasureSpec, list], progress: Progress):
        self.progress = progress
        self.specs = [(s.name, s.hash) for s, tasks in plan.items() if tasks]
        self.label = {(s.name, s.hash): f"pairs {s}" for s in plan}
        self.total = {(s.name, s.hash): len(tasks) for s, tasks in plan.items()}
        self.done = dict.fromkeys(self.specs, 0)
        self._start(0)

    def _start(self, index: int) -> None:
        if index < len(self.specs):
            key = self.specs[index]
            self.progress(self.label[key], 0, self.total[key])

    def add(self, rows: Sequence[dict]) -> None:
        touched = dict.fromkeys((r["measure"], r["params_hash"]) for r in rows)
        for row in rows:
            self.done[(row["measure"], row["params_hash"])] += 1
        for key in touched:
            self.progress(self.label[key], self.done[key], self.total[key])
            if self.done[key] >= self.total[key]:
                self._start(self.specs.index(key) + 1)


def _manifest(blocks, isets, bases) -> dict[str, Any]:
    return {
        "layer": LAYER,
        "eval_sets": {d: {"hash": b.hash, "n": int(len(b.y)),
                          "indices_sha256": hashlib.sha256(
                              b.indices.astype("<i8").tobytes()).hexdigest()}
                      for d, b in bases.items()},
        "input_sets": {s.name: {"per_model": s.per_model, "params": s.params()} for s in isets},
        "blocks": [{"input_set": b.input_set, "dataset": b.dataset, "inputs_hash": b.inputs_key,
                    "rows": list(b.rows),
                    "artifacts": {r: str(p) for r, p in b.artifacts.items()}} for b in blocks],
    }


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _log_analysis(uri: str, disc: Discovery, result: AnalysisResult, specs, input_sets,
                  actors: int, engine: Mapping[str, Any] | None = None) -> str:
    client = tr.make_client(uri)
    run_id = analysis_run(client, disc.sweep, disc.experiment_id)
    params = {"measures": ",".join(str(s) for s in specs), "input_sets": ",".join(input_sets),
              "actors": str(actors), **{k: str(v) for k, v in (engine or {}).items()}}
    from mlflow.entities import Metric, Param  # mlflow only when logging (log_mlflow=True)

    now = int(time.time() * 1000)
    existing = tr.with_retries(client.get_run, run_id).data.params
    tr.with_retries(client.log_batch, run_id,
                    params=[Param(k, v) for k, v in params.items() if k not in existing],
                    metrics=[Metric("analysis/models", len(result.models), now, 0),
                             Metric("analysis/pairs", result.total_rows, now, 0),
                             Metric("analysis/error_rows", result.error_rows, now, 0),
                             Metric("analysis/new_rows", result.new_rows, now, 0),
                             Metric("analysis/wall_s", result.wall_s, now, 0),
                             Metric("analysis/actor_restarts", result.stats.get("restarts", 0),
                                    now, 0),
                             Metric("analysis/requeued_tiles",
                                    result.stats.get("requeued_tiles", 0), now, 0)])
    d = result.report_dir
    for path in (d / "pairs.parquet", d / "models.parquet", d / "skipped.json"):
        tr.with_retries(client.log_artifact, run_id, str(path), "analysis")
    tr.with_retries(client.log_artifact, run_id, str(d / "cache" / "manifest.json"), "cache")
    tr.with_retries(client.set_terminated, run_id, "FINISHED")
    return run_id
