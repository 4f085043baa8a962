"""The input sets every model is run on: the fixed eval set, attacks, inversions, the train split.

An input set names a concrete input array (or one per model) before it is built, so cached
inputs are never rebuilt. Registered sets (``INPUT_SETS``, ``make_input_set``):

- ``clean``: the dataset's fixed evaluation subset (``trainables.data`` ``eval_indices`` /
  ``eval_hash``), identical for every model;
- ``adv``: *per model*: each model attacked with PGD at its own training eps and threat model
  (for a standard model, eps 0, these are the clean images). Row model i's inputs are used for
  every entry (i, j) of the matrix, so the matrix is asymmetric;
- ``adv_shared``: one attack set made against a chosen source model (default: the most robust
  model), identical for every model;
- ``inverted``: *per model*: Jones et al.'s inverted images (``analysis.inversion``);
- ``train_split``: the training split without augmentation (probe training, target 7).

A new set subclasses ``InputSet`` and calls ``register_input_set(name, factory)``. Every class
here is defined at module level, so an instance pickles into a Ray task.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.models import ModelRef, load_model
from trainables.errors import ConfigError, DataError

__all__ = [
    "EvalSet",
    "InputSet",
    "CleanInputs",
    "OwnAdversarialInputs",
    "SharedAdversarialInputs",
    "TrainSplitInputs",
    "INPUT_SETS",
    "register_input_set",
    "input_set_class",
    "input_set_options",
    "make_input_set",
    "load_eval_set",
    "load_eval_sets",
    "check_data_hash",
    "array_hash",
]


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
        options: the ``load_dataset`` options it was drawn with (root, seed, eval_size,
            image_size); sets that reload the dataset (``train_split``) use the same ones.
    """

    dataset: str
    X: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    hash: str
    num_classes: int
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)


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

    def size(self, base: EvalSet) -> int | None:
        """Rows of the built inputs (known before building; None if it is not), for checking
        measure params such as k-NN's ``k < N`` before any work starts."""
        return int(len(base.y))

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


class TrainSplitInputs(InputSet):
    """The training split without augmentation (a seeded subset of ``max_train`` if given),
    loaded with the eval set's own dataset options; shared by all models (probe training)."""

    name = "train_split"
    per_model = False

    def __init__(self, *, max_train: int | None = None, seed: int = 0):
        if max_train is not None and (isinstance(max_train, bool) or not isinstance(max_train, int)
                                      or max_train < 1):
            raise ConfigError(f"train_split.max_train must be an int >= 1 or None, "
                              f"got max_train={max_train!r}")
        self.max_train, self.seed = max_train, int(seed)

    def params(self) -> dict[str, Any]:
        return {"max_train": self.max_train, "seed": self.seed}

    def size(self, base: EvalSet) -> int | None:
        return None  # known only once the training split is loaded

    def build(self, base, source, *, tracking_uri):
        import torch

        from trainables.data import load_dataset

        bundle = load_dataset(base.dataset, **dict(base.options))
        n = len(bundle.train)
        idx = np.arange(n)
        if self.max_train is not None and self.max_train < n:
            rng = np.random.default_rng(self.seed)
            idx = np.sort(rng.choice(n, size=self.max_train, replace=False))
        if hasattr(bundle.train, "batch"):  # in-memory tensors: one gather
            X, y = bundle.train.batch(torch.from_numpy(idx), augment=False)
        else:  # file-backed datasets decode image by image (I/O bound)
            items = [bundle.train[int(i)] for i in idx]
            X = torch.stack([p[0] for p in items])
            y = torch.tensor([p[1] for p in items])
        return (np.ascontiguousarray(X.float().numpy()),
                np.ascontiguousarray(y.long().numpy()))


# name -> InputSet class, or "module:Class" imported on first use (analysis.inversion imports
# this module for InputSet and EvalSet, so it cannot be imported here at module level)
INPUT_SETS: dict[str, type[InputSet] | str] = {
    "clean": CleanInputs,
    "adv": OwnAdversarialInputs,
    "adv_shared": SharedAdversarialInputs,
    "inverted": "analysis.inversion:InvertedInputs",
    "train_split": TrainSplitInputs,
}


def register_input_set(name: str, cls: type[InputSet] | str) -> None:
    """Register an input set class (or its ``"module:Class"`` path) under ``name``."""
    INPUT_SETS[name] = cls


def input_set_class(name: str) -> type[InputSet]:
    """The class registered as ``name``; unknown names raise ``ConfigError`` listing the known."""
    if name not in INPUT_SETS:
        raise ConfigError(f"unknown input set {name!r}; known: {sorted(INPUT_SETS)}")
    entry = INPUT_SETS[name]
    if isinstance(entry, str):
        import importlib

        module, _, attr = entry.partition(":")
        entry = INPUT_SETS[name] = getattr(importlib.import_module(module), attr)
    return entry


def input_set_options(name: str) -> list[str]:
    """The keyword options ``make_input_set(name, ...)`` accepts (constructor parameters)."""
    import inspect

    names: list[str] = []
    for klass in input_set_class(name).__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def make_input_set(name: str, **options: Any) -> InputSet:
    """Instantiate a registered input set by name.

    Raises:
        ConfigError: unknown name or option (each lists what is allowed), or a bad value.
    """
    cls = input_set_class(name)
    unknown = sorted(set(options) - set(input_set_options(name)))
    if unknown:
        raise ConfigError(f"input set {name!r}: unknown option(s) {unknown}; allowed: "
                          f"{input_set_options(name) or 'none'}")
    try:
        return cls(**options)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ConfigError(f"input set {name!r}: bad option value in {options}: {exc}") from None


# --- the eval set --------------------------------------------------------------------------------


def load_eval_set(dataset: str, *, root: str | None = None, seed: int = 0,
                  eval_size: int | None = None, image_size: int | None = None) -> EvalSet:
    """Load a dataset's fixed evaluation subset through ``trainables.data.load_dataset``."""
    from trainables.data import load_dataset

    options = {"root": root, "seed": seed, "eval_size": eval_size, "image_size": image_size}
    bundle = load_dataset(dataset, **options)
    X, y = bundle.eval_tensors()
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    y = np.ascontiguousarray(np.asarray(y, dtype=np.int64))
    return EvalSet(dataset, X, y, np.asarray(bundle.eval_indices, dtype=np.int64),
                   str(bundle.eval_hash), int(bundle.num_classes), options)


def load_eval_sets(models: Sequence[ModelRef], *, data_root: str | None = None,
                   eval_size: int | None = None, data_seed: int | None = None
                   ) -> dict[str, EvalSet]:
    """Each dataset's eval set, drawn with the options its trials used (``ModelRef.data``).

    The options come from the trial runs (MLflow params, else ``meta.json``), so a user passes
    nothing; ``data_root`` / ``eval_size`` / ``data_seed`` override them. The hash must equal the
    ``data_hash`` most of the dataset's models were evaluated on.

    Raises:
        DataError: the eval set drawn has another hash than the models' (names both and the
            flags to pass).
    """
    bases = {}
    for dataset in sorted({m.dataset for m in models}):
        group = [m for m in models if m.dataset == dataset]
        expected, _ = Counter(m.data_hash for m in group).most_common(1)[0]
        first = next(m for m in group if m.data_hash == expected)
        opts = dict(first.data)
        root = data_root or opts.get("root")
        size = eval_size if eval_size is not None else opts.get("eval_size")
        seed = data_seed if data_seed is not None else opts.get("eval_seed", 0)
        base = load_eval_set(dataset, root=root, eval_size=size, seed=seed,
                             image_size=opts.get("image_size") if dataset == "imagefolder" else None)
        if base.hash != expected:
            raise DataError(
                f"the {dataset} eval set (root={root}, eval_size={size}, seed={seed}) has hash "
                f"{base.hash[:16]}..., but the sweep's models were evaluated on "
                f"{expected[:16]}...; pass --data-root/--eval-size/--data-seed matching the sweep"
            )
        bases[dataset] = base
    return bases


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
