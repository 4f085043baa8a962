"""Per-model artifacts on fixed, hashed input sets, computed once and cached on disk.

For every model and every input array it must see, one forward pass gives the penultimate
features (``model.features``, float32), logits, predictions and probabilities. Input sets:

- ``clean``: the dataset's fixed evaluation subset (``trainables.data`` ``eval_indices`` /
  ``eval_hash``), identical for every model;
- ``adv``: *per model* — each model attacked with PGD at its own training eps and threat model
  (for a standard model, eps 0, these are the clean images). Row model i's inputs are used for
  every entry (i, j) of the matrix, so the matrix is asymmetric;
- ``adv_shared``: one attack set made against a chosen source model (default: the most robust
  model), identical for every model.

A new per-model input set (e.g. Jones et al.'s inverted images) registers an ``InputSet``
subclass with ``register_input_set``. The arrays are cached as ``.npz`` (never pickle) under
``reports/<sweep>/cache/``: the inputs of generated sets at ``inputs/<hash16>.npz`` and the
artifacts at ``<run_id>/<inputs_hash16>_<layer>.npz``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.models import ModelRef, load_model
from trainables.errors import ConfigError, DataError

__all__ = [
    "LAYER",
    "EvalSet",
    "Inputs",
    "InputSet",
    "CleanInputs",
    "OwnAdversarialInputs",
    "SharedAdversarialInputs",
    "INPUT_SETS",
    "register_input_set",
    "make_input_set",
    "load_eval_set",
    "check_data_hash",
    "forward_artifacts",
    "ArtifactCache",
]

log = logging.getLogger(__name__)

LAYER = "penultimate"  # model.features: the pooled penultimate representation
ARTIFACT_KEYS = ("features", "logits", "preds", "probs", "labels")


@dataclass(frozen=True)
class EvalSet:
    """A dataset's fixed evaluation subset.

    Attributes:
        dataset: dataset name.
        X: images, float32 (N, C, H, W) in [0, 1].
        y: labels, int64 (N,).
        indices: positions in the dataset's test split, int64 (N,), sorted.
        hash: ``eval_hash`` of ``trainables.data`` (sha256 hex of inputs + labels + indices).
        num_classes: number of classes.
    """

    dataset: str
    X: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    hash: str
    num_classes: int


@dataclass(frozen=True)
class Inputs:
    """One concrete input array every model of a block is run on.

    Attributes:
        key: hash naming these inputs (cache key and the table's ``inputs_hash``), 64 hex.
        X: float32 (N, C, H, W) in [0, 1].
        y: int64 (N,) ground-truth labels of the underlying clean images.
        info: provenance (set name, source model, attack params, eval indices hash).
    """

    key: str
    X: np.ndarray
    y: np.ndarray
    info: Mapping[str, Any]


def _sha(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def array_hash(*arrays: np.ndarray) -> str:
    """sha256 hex of the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class InputSet(ABC):
    """A named input set. Shared sets give one array for all models; per-model sets one each.

    Subclasses set ``name`` and ``per_model`` and implement ``key`` (cheap: identifies the
    inputs *before* they are built, so cached inputs are not rebuilt) and ``build``.
    """

    name: str = ""
    per_model: bool = False

    def params(self) -> dict[str, Any]:
        """The options that change the inputs (recorded in the cache and MLflow)."""
        return {}

    def source_for(self, models: Sequence[ModelRef]) -> list[ModelRef | None]:
        """The models whose inputs are built: every model for per-model sets, else one."""
        return list(models) if self.per_model else [None]

    def key(self, base: EvalSet, source: ModelRef | None) -> str:
        """Hash of (eval set, set name, params, source model): names the inputs."""
        params = json.dumps(self.params(), sort_keys=True)
        return _sha(base.hash, self.name, params, source.run_id if source else "")

    @abstractmethod
    def build(self, base: EvalSet, source: ModelRef | None, *,
              tracking_uri: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Build ``(X float32 (N,C,H,W), y int64 (N,))`` for ``source`` (None: shared set)."""


class CleanInputs(InputSet):
    """The fixed clean evaluation subset; its key is the dataset's ``eval_hash`` itself."""

    name = "clean"
    per_model = False

    def key(self, base: EvalSet, source: ModelRef | None) -> str:
        return base.hash

    def build(self, base, source, *, tracking_uri):
        return base.X, base.y


class _AttackInputs(InputSet):
    """PGD inputs made against one model (``trainables.attacks.pgd``), seeded."""

    def __init__(self, *, steps: int = 10, rel_step: float = 2.5, seed: int = 0,
                 batch_size: int = 256):
        if steps < 1:
            raise ConfigError(f"adv.steps must be >= 1, got adv.steps={steps}")
        if rel_step <= 0:
            raise ConfigError(f"adv.rel_step must be > 0, got adv.rel_step={rel_step}")
        self.steps, self.rel_step, self.seed, self.batch_size = steps, rel_step, seed, batch_size

    def params(self) -> dict[str, Any]:
        # step size = rel_step * eps / steps (Madry et al.'s 2.5 eps / steps convention)
        return {"steps": self.steps, "rel_step": self.rel_step, "seed": self.seed}

    def _attack(self, base: EvalSet, target: ModelRef, *, tracking_uri):
        import torch

        from trainables.attacks import pgd

        if target.eps <= 0:
            return base.X, base.y  # eps 0: the attack is the identity
        model, _ = load_model(target, tracking_uri=tracking_uri)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        out = []
        for start in range(0, len(base.X), self.batch_size):
            x = torch.from_numpy(np.array(base.X[start:start + self.batch_size])).to(device)
            y = torch.from_numpy(np.array(base.y[start:start + self.batch_size])).to(device)
            x_adv = pgd(model, x, y, norm=target.threat_model, eps=target.eps,
                        step_size=self.rel_step * target.eps / self.steps, steps=self.steps,
                        random_start=True, generator=gen)
            out.append(x_adv.detach().cpu().numpy().astype(np.float32))
        return np.concatenate(out), base.y


class OwnAdversarialInputs(_AttackInputs):
    """Per model: the model attacked at its own training eps and threat model."""

    name = "adv"
    per_model = True

    def build(self, base, source, *, tracking_uri):
        if source is None:
            raise ValueError("adv is a per-model input set; a source model is required")
        return self._attack(base, source, tracking_uri=tracking_uri)


class SharedAdversarialInputs(_AttackInputs):
    """One attack set made against a chosen model (run id or label; default: highest eps)."""

    name = "adv_shared"
    per_model = False

    def __init__(self, *, source: str | None = None, **kw: Any):
        super().__init__(**kw)
        self.source = source

    def source_for(self, models):
        if not models:
            return [None]
        if self.source is None:
            return [max(models, key=lambda m: (m.eps, -models.index(m)))]
        for m in models:
            if self.source in (m.run_id, m.label):
                return [m]
        raise ConfigError(
            f"adv_shared.source={self.source!r} is not a model of this sweep; "
            f"known: {[m.label for m in models]}"
        )

    def build(self, base, source, *, tracking_uri):
        return self._attack(base, source, tracking_uri=tracking_uri)


INPUT_SETS: dict[str, Callable[..., InputSet]] = {
    "clean": CleanInputs,
    "adv": OwnAdversarialInputs,
    "adv_shared": SharedAdversarialInputs,
}


def register_input_set(name: str, factory: Callable[..., InputSet]) -> None:
    """Hook for new input sets (e.g. ``inverted`` from ``analysis.inversion``)."""
    INPUT_SETS[name] = factory


def make_input_set(name: str, **options: Any) -> InputSet:
    """Instantiate a registered input set by name; unknown names raise ``ConfigError``."""
    if name not in INPUT_SETS:
        raise ConfigError(f"unknown input set {name!r}; known: {sorted(INPUT_SETS)}")
    return INPUT_SETS[name](**options)


def load_eval_set(dataset: str, *, root: str | None = None, seed: int = 0,
                  eval_size: int | None = None) -> EvalSet:
    """Load a dataset's fixed evaluation subset through ``trainables.data.load_dataset``."""
    from trainables.data import load_dataset

    bundle = load_dataset(dataset, root=root, seed=seed, eval_size=eval_size)
    X, y = bundle.eval_tensors()
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    y = np.ascontiguousarray(np.asarray(y, dtype=np.int64))
    return EvalSet(dataset, X, y, np.asarray(bundle.eval_indices, dtype=np.int64),
                   str(bundle.eval_hash), int(bundle.num_classes))


def check_data_hash(ref: ModelRef, base: EvalSet) -> None:
    """Refuse a model evaluated on other inputs than ``base`` (meta.json ``data_hash``).

    Raises:
        DataError: naming the model, its data hash and the expected one.
    """
    if ref.data_hash != base.hash:
        raise DataError(
            f"model {ref.label} (run {ref.run_id}) was evaluated on inputs with data_hash "
            f"{ref.data_hash[:16] or '<none>'}..., but the {base.dataset} eval set of this "
            f"analysis has hash {base.hash[:16]}...; its features would not be comparable, so it "
            f"is refused (retrain it on the same eval set or pass matching --data-seed/--eval-size)"
        )


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
    import torch

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
        artifacts: run id -> cached ``.npz`` of that model's artifacts on these inputs.
        shared: True for shared input sets (symmetric measures then need each pair once).
    """

    input_set: str
    dataset: str
    inputs_key: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    artifacts: Mapping[str, Path]
    shared: bool


def _remote(fn, *, num_gpus: float):
    import ray

    gpus = num_gpus if ray.cluster_resources().get("GPU", 0) >= num_gpus > 0 else 0
    return ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(fn)


def _build_task(iset: InputSet, base: EvalSet, source: ModelRef | None, tracking_uri):
    return iset.build(base, source, tracking_uri=tracking_uri)


def _forward_task(ref: ModelRef, keys: list[str], tracking_uri, *arrays: np.ndarray):
    """Load one model once and run it on every input array it needs (``arrays`` = X0, y0, ...)."""
    import torch

    model, _ = load_model(ref, tracking_uri=tracking_uri)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {k: forward_artifacts(model, arrays[2 * i], arrays[2 * i + 1], device=device)
            for i, k in enumerate(keys)}


def _run_jobs(jobs: list[tuple[str, Callable, tuple, float]], *, use_ray: bool,
              progress: Callable[[str, int, int], None] | None, what: str):
    """Run ``(name, fn, args, num_gpus)`` jobs; returns name -> result or the exception raised."""
    out: dict[str, Any] = {}
    if not jobs:
        return out
    if not use_ray:
        for i, (name, fn, args, _) in enumerate(jobs):
            try:
                out[name] = fn(*args)
            except Exception as exc:  # noqa: BLE001 - recorded per job and reported
                out[name] = exc
            if progress:
                progress(what, i + 1, len(jobs))
        return out
    import ray

    pending = {_remote(fn, num_gpus=g).remote(*args): name for name, fn, args, g in jobs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(done[0])
        try:
            out[name] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - a RayTaskError wraps the job's own error
            out[name] = getattr(exc, "cause", None) or exc
        if progress:
            progress(what, len(jobs) - len(pending), len(jobs))
    return out


def extract_all(models: Sequence[ModelRef], input_sets: Sequence[InputSet], *,
                bases: Mapping[str, EvalSet], cache: ArtifactCache,
                tracking_uri: str | None = None, use_ray: bool = False,
                progress: Callable[[str, int, int], None] | None = None,
                ) -> tuple[list[Block], dict[str, str]]:
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
    # 1. inputs: one array per (set, dataset, source)
    plan = []  # (iset, dataset, source, key)
    jobs = []
    for iset in input_sets:
        for dataset in sorted({m.dataset for m in usable}):
            group = [m for m in usable if m.dataset == dataset]
            for source in iset.source_for(group):
                key = iset.key(bases[dataset], source)
                plan.append((iset, dataset, source, key, group))
                path = cache.inputs_path(key)
                if iset.name != "clean" and not path.exists():
                    g = source.num_gpus if source else 0.0
                    jobs.append((key, _build_task, (iset, bases[dataset], source, tracking_uri), g))
    built = _run_jobs(list({j[0]: j for j in jobs}.values()), use_ray=use_ray, progress=progress,
                      what="inputs")
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for iset, dataset, source, key, _ in plan:
        if iset.name == "clean":
            inputs[key] = (bases[dataset].X, bases[dataset].y)
            continue
        res = built.get(key)
        if isinstance(res, Exception):
            who = source.label if source else dataset
            failures[f"{iset.name}:{source.run_id if source else dataset}"] = (
                f"building {iset.name} inputs for {who} failed: {type(res).__name__}: {res}")
            continue
        if res is not None:
            X, y = res
            cache.save(cache.inputs_path(key), {"X": X, "y": y, "info": np.array(json.dumps(
                {"set": iset.name, "params": iset.params(), "dataset": dataset,
                 "source": source.run_id if source else None,
                 "content_hash": array_hash(X, y)}))})
        z = cache.load(cache.inputs_path(key))
        inputs[key] = (z["X"], z["y"])
    # 2. artifacts: per model, every input array it meets, one job loading the model once
    need: dict[str, list[str]] = {}
    for iset, dataset, source, key, group in plan:
        if key in inputs:
            for m in group:
                if not cache.artifact_path(m.run_id, key).exists():
                    need.setdefault(m.run_id, []).append(key)
    by_id = {m.run_id: m for m in usable}
    if use_ray and need:
        import ray

        refs = {k: (ray.put(inputs[k][0]), ray.put(inputs[k][1]))
                for k in {k for ks in need.values() for k in ks}}
    else:
        refs = inputs
    fjobs = []
    for run_id, keys in need.items():
        keys = list(dict.fromkeys(keys))
        arrays = [a for k in keys for a in refs[k]]
        fjobs.append((run_id, _forward_task, (by_id[run_id], keys, tracking_uri, *arrays),
                      by_id[run_id].num_gpus))
    done = _run_jobs(fjobs, use_ray=use_ray, progress=progress, what="features")
    for run_id, res in done.items():
        if isinstance(res, Exception):
            failures[run_id] = f"{type(res).__name__}: {res}"
            log.warning("model %s skipped: %s", by_id[run_id].label, res)
            continue
        for key, arrays in res.items():
            cache.save(cache.artifact_path(run_id, key), arrays)
    # 3. blocks over the models whose artifacts exist
    blocks = []
    for iset, dataset, source, key, group in plan:
        if key not in inputs or (source is not None and source.run_id in failures):
            continue
        ok = tuple(m.run_id for m in group if m.run_id not in failures)
        rows = ok if source is None or not iset.per_model else (source.run_id,)
        blocks.append(Block(iset.name, dataset, key, rows, ok,
                            {r: cache.artifact_path(r, key) for r in ok}, not iset.per_model))
    return blocks, failures
