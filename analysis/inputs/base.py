"""The two contracts of the inputs: ``EvalSet`` (a dataset's fixed evaluation subset) and
``InputSet`` (a named input array, or one per model, that every model is run on).

Concrete sets live in ``analysis.inputs.sets`` (clean, adversarial, train split) and
``analysis.inputs.inversion`` (inverted images); ``analysis.inputs.registry`` names them.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.inputs.discovery import ModelRef

__all__ = ["EvalSet", "InputSet", "array_hash"]


@dataclass(frozen=True)
class EvalSet:
    """A dataset's fixed evaluation subset (``analysis.inputs.eval_set.load_eval_set``).

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
    inputs *before* they are built, so cached inputs are not rebuilt) and ``build``. Every
    subclass is defined at module level, so an instance pickles into a Ray task.
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

    def extras(self, base: EvalSet) -> dict[str, np.ndarray]:
        """Small arrays cached beside the built inputs (``cache/inputs/<key16>.npz``) that say
        how they were made, e.g. the inversion's seed/target pairing; none by default."""
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
