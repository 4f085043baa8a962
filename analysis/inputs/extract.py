"""Feature extraction and its cache: per-model artifacts on fixed, hashed input sets, each
computed once.

For every model and every input array it must see (the input sets of ``analysis.inputs``:
``clean``, ``adv``, ``adv_shared``, ``inverted``, ...), one forward pass gives the penultimate
features (``model.features``, float32), logits, predictions and probabilities. ``extract_all``
builds each input array once, then runs one job per model that loads the model once and
forwards every array it meets; both run as Ray tasks or serially. It returns the ``Block``s the
pair engine plans over.

The arrays are cached as ``.npz`` (never pickle) under ``reports/<sweep>/cache/``: the inputs of
generated sets at ``inputs/<hash16>.npz`` and the artifacts at
``<run_id>/<inputs_hash16>_<layer>.npz``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.inputs.base import EvalSet, InputSet, array_hash
from analysis.inputs.discovery import ModelRef, load_model
from analysis.inputs.eval_set import check_data_hash
from trainables.errors import DataError

__all__ = ["LAYER", "Block", "forward_artifacts", "ArtifactCache", "extract_all"]

log = logging.getLogger(__name__)

LAYER = "penultimate"  # model.features: the pooled penultimate representation

Progress = Callable[[str, int, int], None]


def forward_artifacts(model, X: np.ndarray, y: np.ndarray, *, batch_size: int = 512,
                      device: str = "cpu") -> dict[str, np.ndarray]:
    """One forward pass in batches: features, logits, predictions, probabilities.

    Args:
        model: a ``UniModel`` (``features(x)`` then ``head``).
        X: float32 (N, C, H, W) in [0, 1].
        y: int64 (N,) labels (stored alongside for label-aware measures).

    Returns:
        ``features`` float32 (N, D), ``logits`` float32 (N, C), ``preds`` int64 (N,),
        ``probs`` float32 (N, C), ``labels`` int64 (N,).
    """
    import torch  # torch only when a model runs: `python -m analysis report` imports this module

    model.eval().to(device)
    feats, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            xb = torch.from_numpy(np.array(X[start:start + batch_size])).to(device)
            f = model.features(xb)
            feats.append(f.float().cpu().numpy())
            logits.append(model.head(f).float().cpu().numpy())
    F = np.concatenate(feats).astype(np.float32)
    L = np.concatenate(logits).astype(np.float32)
    Z = L - L.max(axis=1, keepdims=True)
    P = np.exp(Z)
    P /= P.sum(axis=1, keepdims=True)
    return {"features": F, "logits": L, "preds": L.argmax(axis=1).astype(np.int64),
            "probs": P.astype(np.float32), "labels": np.asarray(y, dtype=np.int64)}


class ArtifactCache:
    """The on-disk cache: ``<root>/inputs/<key16>.npz`` and ``<root>/<run_id>/<key16>_<layer>.npz``.

    Files are written to a temp name and renamed, so a crash never leaves a half file.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def inputs_path(self, key: str) -> Path:
        return self.root / "inputs" / f"{key[:16]}.npz"

    def artifact_path(self, run_id: str, key: str, layer: str = LAYER) -> Path:
        return self.root / run_id / f"{key[:16]}_{layer}.npz"

    @staticmethod
    def save(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


# --- orchestration: build inputs, then one forward job per model -------------------------------


@dataclass(frozen=True)
class Block:
    """Models compared on one input array: pairs (row, col) of ``rows`` x ``cols``, row != col.

    Attributes:
        input_set: input-set name (``clean``, ``adv``, ...).
        dataset: dataset name.
        inputs_key: hash of the inputs (the result table's ``inputs_hash``).
        rows, cols: run ids; a shared set has rows == cols == all models of the dataset, a
            per-model set one block per row model with cols = all models.
        shared: True for shared input sets (symmetric measures then need each pair once).
        artifacts: run id -> cached ``.npz`` of that model's artifacts on these inputs.
    """

    input_set: str
    dataset: str
    inputs_key: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    shared: bool
    artifacts: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class _Planned:
    """One input array to have: an input set on a dataset's models, made from ``source``."""

    iset: InputSet
    dataset: str
    source: ModelRef | None
    key: str
    group: tuple[ModelRef, ...]


def _remote(fn, *, num_gpus: float):
    import ray  # Ray only on the use_ray path

    gpus = num_gpus if ray.cluster_resources().get("GPU", 0) >= num_gpus > 0 else 0
    return ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(fn)


def _build_task(iset: InputSet, base: EvalSet, source: ModelRef | None, tracking_uri):
    return iset.build(base, source, tracking_uri=tracking_uri)


def _forward_task(ref: ModelRef, keys: list[str], tracking_uri, *arrays: np.ndarray):
    """Load one model once and run it on every input array it needs (``arrays`` = X0, y0, ...)."""
    from trainables.device import pick_device  # torch: see forward_artifacts

    model, _ = load_model(ref, tracking_uri=tracking_uri)
    device = str(pick_device())
    return {k: forward_artifacts(model, arrays[2 * i], arrays[2 * i + 1], device=device)
            for i, k in enumerate(keys)}


def _run_jobs(jobs: list[tuple[str, Callable, tuple, float]], *, use_ray: bool,
              progress: Progress | None, what: str,
              on_result: Callable[[str, Any], None] | None = None):
    """Run ``(name, fn, args, num_gpus)`` jobs; returns name -> result or the exception raised.

    ``on_result(name, result)`` runs as each job finishes (the caller caches it there, so an
    interrupted run keeps every finished job).
    """
    out: dict[str, Any] = {}
    if not jobs:
        return out
    if progress:
        progress(what, 0, len(jobs))  # the stage's clock starts now

    def finish(name: str, result: Any) -> None:
        out[name] = result
        if on_result:
            on_result(name, result)
        if progress:
            progress(what, len(out), len(jobs))

    if not use_ray:
        for name, fn, args, _ in jobs:
            try:
                result = fn(*args)
            except Exception as exc:  # noqa: BLE001 - recorded per job and reported
                result = exc
            finish(name, result)
        return out
    import ray  # Ray only on the use_ray path

    pending = {_remote(fn, num_gpus=g).remote(*args): name for name, fn, args, g in jobs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(done[0])
        try:
            result = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - a RayTaskError wraps the job's own error
            result = getattr(exc, "cause", None) or exc
        finish(name, result)
    return out


def extract_all(models: Sequence[ModelRef], input_sets: Sequence[InputSet], *,
                bases: Mapping[str, EvalSet], cache: ArtifactCache,
                tracking_uri: str | None = None, use_ray: bool = False,
                progress: Progress | None = None) -> tuple[list[Block], dict[str, str]]:
    """Build every input array and every model's artifacts on it, each once (cache-aware).

    Args:
        models: the models to analyse; each ``dataset`` must have an entry in ``bases``.
        input_sets: the input sets to build.
        bases: dataset name -> its fixed eval set.
        cache: where arrays are cached; cached inputs/artifacts are never recomputed.
        use_ray: run builds and forwards as Ray tasks (needs ``ray.init`` done); else serially.
        progress: called as ``progress(stage, done, total)``.

    Returns:
        ``(blocks, failures)``: the comparison blocks over the models that worked, and
        run id (or ``<set>:<run id>`` for one row) -> error message for what failed.
    """
    failures: dict[str, str] = {}
    usable = _usable(models, bases, failures)
    plan = [_Planned(iset, dataset, source, iset.key(bases[dataset], source), group)
            for iset in input_sets
            for dataset, group in _by_dataset(usable)
            for source in iset.source_for(list(group))]
    inputs = _build_inputs(plan, bases, cache, failures, tracking_uri=tracking_uri,
                           use_ray=use_ray, progress=progress)
    _extract_artifacts(plan, inputs, usable, cache, failures, tracking_uri=tracking_uri,
                       use_ray=use_ray, progress=progress)
    return _blocks(plan, inputs, cache, failures), failures


def _usable(models: Sequence[ModelRef], bases: Mapping[str, EvalSet],
            failures: dict[str, str]) -> list[ModelRef]:
    """The models evaluated on their dataset's eval set; the others go to ``failures``."""
    usable: list[ModelRef] = []
    for m in models:
        if m.dataset not in bases:
            raise ValueError(f"no eval set loaded for dataset {m.dataset!r} of model {m.label}")
        try:
            check_data_hash(m, bases[m.dataset])
            usable.append(m)
        except DataError as exc:
            failures[m.run_id] = str(exc)
            log.warning("%s", exc)
    return usable


def _by_dataset(models: Sequence[ModelRef]) -> list[tuple[str, tuple[ModelRef, ...]]]:
    """The comparison groups: the models of one dataset and one training epoch (an analysis by
    epoch compares models at the same epoch only; final models share their epoch count)."""
    groups = sorted({(m.dataset, m.epoch) for m in models})
    return [(d, tuple(m for m in models if (m.dataset, m.epoch) == (d, e))) for d, e in groups]


def _build_inputs(plan: list[_Planned], bases: Mapping[str, EvalSet], cache: ArtifactCache,
                  failures: dict[str, str], *, tracking_uri: str | None, use_ray: bool,
                  progress: Progress | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Step 1: one array per (set, dataset, source), built unless cached; key -> (X, y)."""
    jobs = [(p.key, _build_task, (p.iset, bases[p.dataset], p.source, tracking_uri),
             p.source.num_gpus if p.source else 0.0)
            for p in plan if p.iset.name != "clean" and not cache.inputs_path(p.key).exists()]
    made_by = {p.key: p for p in plan}

    def save_inputs(key: str, res: Any) -> None:
        if isinstance(res, Exception):
            return
        p = made_by[key]
        X, y = res
        info = {"set": p.iset.name, "params": p.iset.params(), "dataset": p.dataset,
                "source": p.source.run_id if p.source else None, "content_hash": array_hash(X, y)}
        cache.save(cache.inputs_path(key), {**p.iset.extras(bases[p.dataset]), "X": X, "y": y,
                                            "info": np.array(json.dumps(info))})

    unique = list({j[0]: j for j in jobs}.values())
    built: dict[str, Any] = {}
    for name in dict.fromkeys(made_by[j[0]].iset.name for j in unique):  # e.g. "inputs inverted"
        built.update(_run_jobs([j for j in unique if made_by[j[0]].iset.name == name],
                               use_ray=use_ray, progress=progress, what=f"inputs {name}",
                               on_result=save_inputs))
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p in plan:
        if p.iset.name == "clean":
            inputs[p.key] = (bases[p.dataset].X, bases[p.dataset].y)
            continue
        res = built.get(p.key)
        if isinstance(res, Exception):
            who = p.source.label if p.source else p.dataset
            failures[f"{p.iset.name}:{p.source.run_id if p.source else p.dataset}"] = (
                f"building {p.iset.name} inputs for {who} failed: {type(res).__name__}: {res}")
            continue
        z = cache.load(cache.inputs_path(p.key))
        inputs[p.key] = (z["X"], z["y"])
    return inputs


def _extract_artifacts(plan: list[_Planned], inputs: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       usable: Sequence[ModelRef], cache: ArtifactCache,
                       failures: dict[str, str], *, tracking_uri: str | None, use_ray: bool,
                       progress: Progress | None) -> None:
    """Step 2: per model, every input array it meets, in one job that loads the model once."""
    need: dict[str, list[str]] = {}
    for p in plan:
        if p.key in inputs:
            for m in p.group:
                if not cache.artifact_path(m.run_id, p.key).exists():
                    need.setdefault(m.run_id, []).append(p.key)
    by_id = {m.run_id: m for m in usable}
    if use_ray and need:
        import ray  # Ray only on the use_ray path

        refs = {k: (ray.put(inputs[k][0]), ray.put(inputs[k][1]))
                for k in {k for ks in need.values() for k in ks}}
    else:
        refs = inputs
    jobs = []
    for run_id, keys in need.items():
        keys = list(dict.fromkeys(keys))
        arrays = [a for k in keys for a in refs[k]]
        jobs.append((run_id, _forward_task, (by_id[run_id], keys, tracking_uri, *arrays),
                     by_id[run_id].num_gpus))

    def save_artifacts(run_id: str, res: Any) -> None:
        if isinstance(res, Exception):
            failures[run_id] = f"{type(res).__name__}: {res}"
            log.warning("model %s skipped: %s", by_id[run_id].label, res)
            return
        for key, arrays in res.items():
            cache.save(cache.artifact_path(run_id, key), arrays)

    _run_jobs(jobs, use_ray=use_ray, progress=progress, what="features", on_result=save_artifacts)


def _blocks(plan: list[_Planned], inputs: Mapping[str, Any], cache: ArtifactCache,
            failures: Mapping[str, str]) -> list[Block]:
    """Step 3: the comparison blocks over the models whose artifacts exist."""
    blocks = []
    for p in plan:
        if p.key not in inputs or (p.source is not None and p.source.run_id in failures):
            continue
        ok = tuple(m.run_id for m in p.group if m.run_id not in failures)
        rows = ok if p.source is None or not p.iset.per_model else (p.source.run_id,)
        blocks.append(Block(p.iset.name, p.dataset, p.key, rows, ok, shared=not p.iset.per_model,
                            artifacts={r: cache.artifact_path(r, p.key) for r in ok}))
    return blocks
