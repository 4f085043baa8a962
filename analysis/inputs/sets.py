"""The built-in input sets: ``clean``, ``adv``, ``adv_shared`` and ``train_split``.

- ``clean``: the dataset's fixed evaluation subset (``trainables.data`` ``eval_indices`` /
  ``eval_hash``), identical for every model;
- ``adv``: *per model*: each model attacked with PGD at its own training eps and threat model
  (for a standard model, eps 0, these are the clean images). Row model i's inputs are used for
  every entry (i, j) of the matrix, so the matrix is asymmetric;
- ``adv_shared``: one attack set made against a chosen source model (default: the most robust
  model), identical for every model;
- ``train_split``: the training split without augmentation (probe training, target 7).

The fifth, ``inverted``, lives with image inversion in ``analysis.inputs.inversion``; the
registry of names is ``analysis.inputs.registry``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.inputs.base import EvalSet, InputSet
from analysis.inputs.discovery import ModelRef, load_model
from trainables.errors import ConfigError

__all__ = ["CleanInputs", "OwnAdversarialInputs", "SharedAdversarialInputs", "TrainSplitInputs"]


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
        # torch (also behind attacks and pick_device) only when inputs are built: the registry
        # imports this module, and `python -m analysis report` should not pay for torch
        import torch

        from trainables.attacks import pgd
        from trainables.device import pick_device

        if target.eps <= 0:
            return base.X, base.y  # eps 0: the attack is the identity
        model, _ = load_model(target, tracking_uri=tracking_uri)
        device = pick_device()
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
        import torch  # torch only when inputs are built (see _AttackInputs._attack)

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
