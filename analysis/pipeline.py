"""``run_analysis`` / ``run_report``: the analysis of one sweep, end to end (used by the CLI and
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
    EvalSet,
    InputSet,
    ModelRef,
    discover_models,
    extract_all,
    load_eval_sets,
    models_frame,
    parse_input_set,
    quiet_downloads,
)
from analysis.measures import MEASURES, MeasureInputError, get_measure
from analysis.report import build_report
from trainables import tracking as tr
from trainables.errors import ConfigError, UserError

__all__ = ["AnalysisResult", "run_analysis", "run_report", "report_dir", "check_specs_fit",
           "ensure_ray"]

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


def _analysis_run(client, sweep: str, experiment_id: str) -> str:
    """The sweep's analysis run (reused across re-runs), child of the sweep's parent run."""
    runs = tr.search_sweep_runs(client, experiment_id, sweep=sweep, role="analysis")
    if runs:
        return runs[-1].info.run_id
    tags = {tr.TAG_SWEEP: sweep, tr.TAG_ROLE: "analysis"}
    parent = tr.find_sweep_run(client, experiment_id, sweep)
    if parent is not None:
        tags[tr.TAG_PARENT] = parent.info.run_id
    run = tr.with_retries(client.create_run, experiment_id, tags=tags, run_name=f"{sweep}-analysis")
    return run.info.run_id


def run_analysis(sweep: str, *, tracking_uri: str | None = None,
                 home: str | os.PathLike | None = None,
                 measures: Sequence[str | MeasureSpec] | None = None,
                 input_sets: Sequence[str] = ("clean",), actors: int = 0,
                 data_root: str | None = None, eval_size: int | None = None,
                 data_seed: int | None = None, retry_errors: bool = False,
                 log_mlflow: bool = True, progress: Progress | None = None,
                 backend: str = "numpy", device: str | None = None,
                 gpus_per_actor: float = 0.0) -> AnalysisResult:
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
    skipped = {s.run_id: f"{s.label}: {s.reason}" for s in disc.skipped}
    if not disc.models:
        raise UserError(f"sweep {sweep!r} has no finished model with a checkpoint to analyse\n"
                        + disc.describe())
    bases = load_eval_sets(disc.models, data_root=data_root, eval_size=eval_size,
                           data_seed=data_seed)
    check_specs_fit(specs, isets, bases)  # before anything is written
    out_dir = report_dir(sweep, home)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = ensure_ray(actors)
    try:
        blocks, failures = extract_all(disc.models, isets, bases=bases,
                                       cache=ArtifactCache(out_dir / "cache"), tracking_uri=uri,
                                       use_ray=actors > 0, progress=progress)
        label = {m.run_id: m.label for m in disc.models}
        skipped.update({k: f"{label.get(k, k)}: {v}" for k, v in failures.items()})
        store = ResultStore(out_dir / "pairs.parquet")
        new_rows, stats = _compute(blocks, specs, store, actors=actors,
                                   retry_errors=retry_errors, progress=progress, engine=engine)
    finally:
        if started:
            import ray  # started above, so imported already

            ray.shutdown()
    models_frame(disc.models).to_parquet(out_dir / "models.parquet", index=False)
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


def _compute(blocks: Sequence[Block], specs: Sequence[MeasureSpec], store: ResultStore, *,
             actors: int, retry_errors: bool, progress: Progress | None,
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

    def sink(rows):
        buffer.extend(rows)
        if time.monotonic() - written[1] > flush_s:
            written[0] += store.append(buffer, replace_errors=retry_errors)
            buffer.clear()
            written[1] = time.monotonic()

    def on_pairs(done, total):
        if progress:
            progress("pairs", done, total)

    stats = engine.run(plan, items, sink=sink, progress=on_pairs)
    written[0] += store.append(buffer, replace_errors=retry_errors)
    return written[0], stats.__dict__


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
    run_id = _analysis_run(client, disc.sweep, disc.experiment_id)
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
                             Metric("analysis/wall_s", result.wall_s, now, 0)])
    d = result.report_dir
    for path in (d / "pairs.parquet", d / "models.parquet", d / "skipped.json"):
        tr.with_retries(client.log_artifact, run_id, str(path), "analysis")
    tr.with_retries(client.log_artifact, run_id, str(d / "cache" / "manifest.json"), "cache")
    tr.with_retries(client.set_terminated, run_id, "FINISHED")
    return run_id


def run_report(sweep: str, *, home: str | os.PathLike | None = None,
               tracking_uri: str | None = None, log_mlflow: bool = True,
               seed: int = 0) -> Path:
    """Build the report of an analysed sweep from its table + run metadata; returns the HTML.

    Raises:
        UserError: the sweep has not been analysed yet (no ``pairs.parquet``).
    """
    out_dir = report_dir(sweep, home)
    if not (out_dir / "pairs.parquet").exists():
        raise UserError(f"no analysis of sweep {sweep!r} at {out_dir}/pairs.parquet; "
                        f"run `python -m analysis run {sweep}` first")
    html = build_report(out_dir, sweep=sweep, seed=seed)
    if log_mlflow:
        uri = tr.resolve_tracking_uri(tracking_uri, home)
        client = tr.make_client(uri)
        exp = tr.with_retries(client.get_experiment_by_name, sweep)
        if exp is not None:
            run_id = _analysis_run(client, sweep, exp.experiment_id)
            for path in sorted(out_dir.glob("report/*")):
                tr.with_retries(client.log_artifact, run_id, str(path), "report")
            tr.with_retries(client.set_terminated, run_id, "FINISHED")
    return html
