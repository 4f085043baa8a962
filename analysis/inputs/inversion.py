"""Image inversion after Jones et al. (UAI 2022), as SPEC §4 describes it.

For a model f and a target image t, start from a *seed* image of another class and minimise the
relative distance between penultimate representations,

    L(x) = ||f(x) - f(t)||_2 / ||f(t)||_2,

with per-image normalised gradient steps and momentum (step 1/8, momentum 0.9), projection onto a
large L2 ball around the seed, a clamp to [0, 1], and the best iterate kept per image. The inverted
images keep only the features f uses; they form one *per-model* input set (row i of an inverted
similarity matrix uses model i's inverted images).

Deviations from `casparil/rob-univ`'s `univ/image_inversion.py`, on purpose: the best loss per
image is returned (SPEC §7 item 10), the pairing is seeded, images stay float32 (no uint8).

``InvertedInputs`` is the ``inverted`` input set. torch is imported inside the functions that run
the optimiser: the input-set registry imports this module, and `analysis report` needs no torch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.inputs.base import EvalSet, InputSet
from analysis.inputs.discovery import load_model
from trainables.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "InversionConfig",
    "InversionResult",
    "pair_seeds_and_targets",
    "representation_loss",
    "invert",
    "invert_on_ray",
    "InvertedInputs",
]

log = logging.getLogger(__name__)

PAIRING_SEED = 573098435098230 % (2**32)  # the paper's random_state, folded into numpy's range


@dataclass(frozen=True)
class InversionConfig:
    """Settings of the inversion optimiser (defaults: SPEC §4 / the paper's code).

    Attributes:
        iterations: gradient steps per image (paper code 1,000; Jones et al. 2,000).
        step_size: step length in [0,1] pixel units along the momentum direction (1/8).
        momentum: weight of the previous direction, m <- momentum*m + (1-momentum)*g (0.9).
        radius: L2 radius of the ball around the seed the iterate is projected onto (1000, i.e.
            effectively unconstrained, as in the paper).
        batch_size: images optimised together (64).
        converged_below: loss threshold used for the "fraction converged" summary.
    """

    iterations: int = 1000
    step_size: float = 1.0 / 8.0
    momentum: float = 0.9
    radius: float = 1000.0
    batch_size: int = 64
    converged_below: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"inversion.iterations must be an int >= 1, got {self.iterations!r}")
        if not self.step_size > 0:
            raise ConfigError(f"inversion.step_size must be > 0, got {self.step_size!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"inversion.momentum must be in [0, 1), got {self.momentum!r}")
        if not self.radius > 0:
            raise ConfigError(f"inversion.radius must be > 0, got {self.radius!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"inversion.batch_size must be an int >= 1, got {self.batch_size!r}")
        if not self.converged_below > 0:
            raise ConfigError(
                f"inversion.converged_below must be > 0, got {self.converged_below!r}"
            )


@dataclass(frozen=True)
class InversionResult:
    """One model's inverted images: a per-model input set.

    Attributes:
        images: (N, C, H, W) float32 in [0, 1], on the CPU; row n inverts target_idx[n].
        seed_idx: (N,) int64 indices (into the evaluation set) of the starting images.
        target_idx: (N,) int64 indices of the images whose representation is matched.
        best_loss: (N,) float32 relative representation distance of the kept (best) iterate.
        history: (iterations + 1,) float64 mean over images of the best-so-far loss after each
            step (entry 0 is the seed's loss); non-increasing by construction.
        config: the settings used.
        hash: sha256 hex over the images' bytes and both index arrays (the input-set key).
    """

    images: torch.Tensor
    seed_idx: np.ndarray
    target_idx: np.ndarray
    best_loss: np.ndarray
    history: np.ndarray
    config: InversionConfig
    hash: str = field(default="")

    def summary(self) -> dict[str, float]:
        """Convergence summary of the per-image best losses.

        Returns:
            ``median``, ``p90``, ``mean``, ``max`` of the relative distance, ``frac_converged``
            (share of images below ``config.converged_below``), ``threshold`` and ``n``.
        """
        loss = self.best_loss.astype(np.float64)
        return {
            "n": int(loss.size),
            "median": float(np.median(loss)),
            "p90": float(np.quantile(loss, 0.9)),
            "mean": float(loss.mean()),
            "max": float(loss.max()),
            "threshold": float(self.config.converged_below),
            "frac_converged": float(np.mean(loss < self.config.converged_below)),
        }


def pair_seeds_and_targets(
    labels: np.ndarray, *, seed: int = PAIRING_SEED, num_targets: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw, for each target image, a seed image of a different class (shared by all models).

    Args:
        labels: (N,) integer class labels of the evaluation set.
        seed: seed of the draw; the same seed and labels always give the same pairs.
        num_targets: use a seeded subset of this many targets (sorted); None = every image.

    Returns:
        ``(seed_idx, target_idx)``, two (T,) int64 arrays of indices into ``labels`` with
        ``labels[seed_idx] != labels[target_idx]`` everywhere.

    Raises:
        ConfigError: fewer than two classes, or ``num_targets`` out of range.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ConfigError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if np.unique(labels).size < 2:
        raise ConfigError("inversion pairing needs at least two classes in labels, got one")
    n = labels.size
    rng = np.random.default_rng(seed)
    if num_targets is None:
        target_idx = np.arange(n, dtype=np.int64)
    else:
        if not 1 <= num_targets <= n:
            raise ConfigError(f"num_targets must be in [1, {n}], got {num_targets!r}")
        target_idx = np.sort(rng.choice(n, size=num_targets, replace=False)).astype(np.int64)
    # Rejection sampling, vectorised: redraw only the seeds that share their target's class.
    seed_idx = rng.integers(0, n, size=target_idx.size)
    clash = labels[seed_idx] == labels[target_idx]
    while clash.any():
        seed_idx[clash] = rng.integers(0, n, size=int(clash.sum()))
        clash = labels[seed_idx] == labels[target_idx]
    return seed_idx.astype(np.int64), target_idx


def representation_loss(feats: torch.Tensor, target_feats: torch.Tensor) -> torch.Tensor:
    """Relative L2 distance per image, ||f(x) - f(t)|| / ||f(t)||.

    Args:
        feats: (B, D) representations of the current images.
        target_feats: (B, D) representations of the targets.

    Returns:
        (B,) losses (dimensionless; 0 means identical representations).
    """
    denom = target_feats.norm(dim=1).clamp_min(1e-12)
    return (feats - target_feats).norm(dim=1) / denom


def _invert_batch(
    model: nn.Module, x0: torch.Tensor, targets: torch.Tensor, cfg: InversionConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise one batch; returns (best images, best losses (B,), history (iterations+1,))."""
    import torch  # see the module docstring

    with torch.no_grad():
        target_feats = model.features(targets)
    x = x0.clone()
    m = torch.zeros_like(x)
    best_x = x0.clone()
    best_loss = torch.full((x.shape[0],), float("inf"), device=x.device)
    history = torch.empty(cfg.iterations + 1, dtype=torch.float64, device=x.device)
    view = (-1,) + (1,) * (x.dim() - 1)  # broadcast a per-image scalar over (C, H, W)
    for it in range(cfg.iterations + 1):
        x.requires_grad_(True)
        loss = representation_loss(model.features(x), target_feats)
        # Keep the best iterate per image (use_best=True in the paper's PGD).
        improved = loss.detach() < best_loss
        best_loss = torch.where(improved, loss.detach(), best_loss)
        best_x = torch.where(improved.view(view), x.detach(), best_x)
        history[it] = best_loss.double().mean()
        if it == cfg.iterations:
            break
        # autograd.grad leaves the model's parameter .grad untouched.
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            m = cfg.momentum * m + (1.0 - cfg.momentum) * g
            x = x.detach() - cfg.step_size * m
            delta = x - x0
            scale = (cfg.radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            x = (x0 + delta * scale.view(view)).clamp(0.0, 1.0)
    return best_x, best_loss, history


def invert(
    model: nn.Module,
    images: torch.Tensor,
    *,
    seed_idx: np.ndarray,
    target_idx: np.ndarray,
    config: InversionConfig | None = None,
) -> InversionResult:
    """Invert ``images[target_idx]`` through ``model`` starting from ``images[seed_idx]``.

    Runs on ``images.device`` (move the model there first); vectorised over each batch.

    Args:
        model: a UniModel (anything with ``features(x) -> (B, D)``), inputs in [0, 1].
        images: (N, C, H, W) float32 evaluation images in [0, 1].
        seed_idx: (T,) int64 indices of the starting images (see ``pair_seeds_and_targets``).
        target_idx: (T,) int64 indices of the target images.
        config: optimiser settings; default ``InversionConfig()``.

    Returns:
        The inverted images (on the CPU) with per-image best losses and the loss history.
    """
    import torch  # see the module docstring

    cfg = config or InversionConfig()
    seed_idx = np.asarray(seed_idx, dtype=np.int64)
    target_idx = np.asarray(target_idx, dtype=np.int64)
    if seed_idx.shape != target_idx.shape or seed_idx.ndim != 1:
        raise ConfigError(
            f"seed_idx and target_idx must be 1-D of equal length, got {seed_idx.shape} "
            f"and {target_idx.shape}"
        )
    n = images.shape[0]
    for name, idx in (("seed_idx", seed_idx), ("target_idx", target_idx)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ConfigError(f"{name} must index into {n} images, got range "
                              f"[{idx.min()}, {idx.max()}]")
    was_training = model.training
    model.eval()
    outs, losses, hists = [], [], []
    try:
        for start in range(0, seed_idx.size, cfg.batch_size):
            sl = slice(start, start + cfg.batch_size)
            s = torch.as_tensor(seed_idx[sl], device=images.device)
            t = torch.as_tensor(target_idx[sl], device=images.device)
            bx, bl, bh = _invert_batch(model, images[s], images[t], cfg)
            outs.append(bx.cpu())
            losses.append(bl.cpu())
            # Weight each batch's mean by its size so the history is the mean over all images.
            hists.append(bh.cpu() * (bl.numel() / seed_idx.size))
    finally:
        model.train(was_training)
    out = torch.cat(outs).float()
    history = torch.stack(hists).sum(0).numpy()
    best = torch.cat(losses).numpy().astype(np.float32)
    digest = _input_set_hash(out, seed_idx, target_idx)
    log.info("inverted %d images: median loss %.4f", out.shape[0], float(np.median(best)))
    return InversionResult(out, seed_idx, target_idx, best, history, cfg, digest)


def _input_set_hash(images: torch.Tensor, seed_idx: np.ndarray, target_idx: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    h.update(seed_idx.astype(np.int64).tobytes())
    h.update(target_idx.astype(np.int64).tobytes())
    return h.hexdigest()


def _invert_task(model: nn.Module, images: torch.Tensor, seed_idx: np.ndarray,
                 target_idx: np.ndarray, config: InversionConfig) -> InversionResult:
    """Ray task body: use the worker's GPU when it has one, else the CPU."""
    import torch  # see the module docstring

    from trainables.device import pick_device

    device = pick_device()
    model = model.to(device)
    # Arrays from the object store are read-only: copy before handing them to torch.
    x = torch.as_tensor(np.array(images.numpy() if torch.is_tensor(images) else images))
    return invert(model, x.to(device), seed_idx=np.array(seed_idx),
                  target_idx=np.array(target_idx), config=config)


def invert_on_ray(
    models: dict[str, nn.Module],
    images: torch.Tensor,
    *,
    seed_idx: np.ndarray,
    target_idx: np.ndarray,
    config: InversionConfig | None = None,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
) -> dict[str, InversionResult]:
    """Invert every model as one Ray task each (same pairs for all); Ray must be initialised.

    Args:
        models: model id -> model (moved to the worker's device inside the task).
        images: (N, C, H, W) evaluation images, put into the object store once.
        seed_idx, target_idx: the shared pairing.
        config: optimiser settings.
        num_gpus, num_cpus: resources per task (num_gpus=1 on a GPU cluster).

    Returns:
        model id -> InversionResult, in the order of ``models``.
    """
    import ray  # Ray only for this entry point

    if not ray.is_initialized():
        raise ConfigError("invert_on_ray needs an initialised Ray (call ray.init first)")
    cfg = config or InversionConfig()
    task = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(_invert_task)
    images_ref = ray.put(images.detach().cpu())
    refs = {
        name: task.remote(model.cpu(), images_ref, seed_idx, target_idx, cfg)
        for name, model in models.items()
    }
    return {name: ray.get(ref) for name, ref in refs.items()}


# --- engine hook: the inverted images as a per-model input set ----------------------------------


class InvertedInputs(InputSet):
    """Per-model input set of ``analysis.inputs.extract``: each model's inversions of the eval set.

    Row model i's inputs are model i's inverted images; every model is run on them, so entry
    (i, j) = measure(f_i(inv_i), f_j(inv_i)) as in SPEC §3. The seed/target pairing is drawn
    from the eval labels with ``pairing_seed`` and is shared by all models. The labels returned
    are the *targets'* labels. Registered in ``analysis.inputs.registry.INPUT_SETS`` as ``inverted``
    (``python -m analysis run SWEEP --input-sets clean,inverted``).
    """

    name = "inverted"
    per_model = True

    def __init__(self, *, iterations: int = 1000, num_targets: int | None = None,
                 pairing_seed: int = PAIRING_SEED, batch_size: int = 64,
                 step_size: float = 1.0 / 8.0, momentum: float = 0.9) -> None:
        self.config = InversionConfig(iterations=iterations, batch_size=batch_size,
                                      step_size=step_size, momentum=momentum)
        self.num_targets = num_targets
        self.pairing_seed = int(pairing_seed)

    def params(self) -> dict[str, object]:
        return {"iterations": self.config.iterations, "num_targets": self.num_targets,
                "pairing_seed": self.pairing_seed, "step_size": self.config.step_size,
                "momentum": self.config.momentum, "radius": self.config.radius}

    def size(self, base: EvalSet) -> int:
        n = int(len(base.y))
        if self.num_targets is None:
            return n
        if isinstance(self.num_targets, bool) or not isinstance(self.num_targets, int) \
                or not 1 <= self.num_targets <= n:
            raise ConfigError(f"inverted.num_targets must be an int in [1, {n}] (the eval set's "
                              f"size), got num_targets={self.num_targets!r}")
        return self.num_targets

    def pairs(self, base: EvalSet) -> tuple[np.ndarray, np.ndarray]:
        """The shared (seed_idx, target_idx) pairing for ``base``."""
        return pair_seeds_and_targets(base.y, seed=self.pairing_seed, num_targets=self.num_targets)

    def extras(self, base: EvalSet) -> dict[str, np.ndarray]:
        """The pairing (indices into the eval set) and the seeds' labels, cached beside them."""
        seed_idx, target_idx = self.pairs(base)
        return {"seed_idx": seed_idx, "target_idx": target_idx, "seed_y": base.y[seed_idx]}

    def build(self, base: EvalSet, source, *, tracking_uri: str | None):
        import torch  # see the module docstring

        from trainables.device import pick_device

        model, _ = load_model(source, tracking_uri=tracking_uri)
        device = pick_device()
        seed_idx, target_idx = self.pairs(base)
        images = torch.from_numpy(np.array(base.X)).to(device)
        res = invert(model.to(device), images, seed_idx=seed_idx, target_idx=target_idx,
                     config=self.config)
        log.info("inverted for %s: %s", getattr(source, "label", "?"), res.summary())
        return res.images.numpy().astype(np.float32), np.asarray(base.y)[target_idx]
