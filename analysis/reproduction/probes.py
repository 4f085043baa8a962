"""Linear-head retraining on frozen penultimate features (SPEC §5, reproduction target 7).

Each backbone is frozen: its features are computed once (by the caller, e.g. the engine's
extract cache) and several fresh ``nn.Linear(D, C)`` probes are trained on the *training split*
features with Adam (lr 5e-3), a cosine schedule (eta_min 1e-6), cross-entropy, 30 epochs, batch
1024, and no feature standardisation by default (the paper's "30epochs_noNorm" variant).

Agreement is then measured on **held-out** inputs (the evaluation split), never on the probes'
own training inputs: the paper's `compare_probes.py` used the training representations (SPEC §7
item 7). Pairs of probes from the same backbone are dropped; the remaining probe pairs are
averaged per model pair and set beside the agreement of the original heads on the same inputs and
beside the Fort et al. reference values recomputed from the probes' accuracies.

Deviation: the paper kept each probe's best-validation-accuracy checkpoint. Selecting on the
evaluation split would leak it into the probe, so the last epoch is kept.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.measures import MeasureInputError, fort_bounds
from trainables.errors import ConfigError, DataError

__all__ = ["ProbeConfig", "ProbeResult", "train_probe", "agreement_matrix", "fort_agreement",
           "run_probes"]

log = logging.getLogger(__name__)

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class ProbeConfig:
    """Probe training settings (defaults: the paper's figure variant, SPEC §5).

    Attributes:
        epochs: passes over the training features (30).
        lr: Adam learning rate (5e-3).
        batch_size: features per step (1024).
        eta_min: floor of the cosine schedule (1e-6).
        weight_decay: Adam L2 penalty (0).
        standardize: z-score features with the training split's mean/std (False).
        num_probes: probes per backbone, seeds ``seed, seed+1, ...`` (3).
        seed: first probe seed (initialisation and batch order).
    """

    epochs: int = 30
    lr: float = 5e-3
    batch_size: int = 1024
    eta_min: float = 1e-6
    weight_decay: float = 0.0
    standardize: bool = False
    num_probes: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_probes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"probes.{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"probes.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.eta_min < self.lr:
            raise ConfigError(f"probes.eta_min must be in [0, lr), got {self.eta_min!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"probes.weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class ProbeResult:
    """Probe accuracies and agreements on held-out inputs.

    Attributes:
        eval_ids: (M,) int64 identifiers of the held-out inputs every number here was measured on.
        probe_preds: model id -> (P, M) int64 argmax predictions of its P probes.
        probe_acc: model id -> (P,) float accuracy of each probe on the held-out inputs.
        head_acc: model id -> accuracy of the original head on the same inputs (NaN if no logits).
        pairs: one row per unordered model pair (different backbones only) with columns
            ``model_a, model_b, probe_agreement, probe_agreement_sd, n_probe_pairs,
            head_agreement, probe_acc_a, probe_acc_b, fort_lower, fort_upper,
            head_fort_lower, head_fort_upper`` (agreements in [0, 1]; ``fort_lower`` is the
            independent-errors agreement, ``fort_upper`` the maximum agreement allowed by the two
            accuracies, Fort et al. 2020 App. D).
        config: the settings used.
    """

    eval_ids: np.ndarray
    probe_preds: dict[str, np.ndarray]
    probe_acc: dict[str, np.ndarray]
    head_acc: dict[str, float]
    pairs: pd.DataFrame
    config: ProbeConfig


def _as_tensor(x: Array) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.from_numpy(np.array(x))


def train_probe(
    features: Array, labels: Array, *, num_classes: int, config: ProbeConfig, seed: int
) -> nn.Linear:
    """Train one fresh linear probe on frozen features (no gradient reaches any backbone).

    Args:
        features: (N, D) float training features (already standardised if wanted).
        labels: (N,) int64 class labels.
        num_classes: C, the probe's output width.
        config: optimiser settings.
        seed: seeds the probe's initialisation and batch order.

    Returns:
        The trained ``nn.Linear(D, C)`` in eval mode, on ``features.device``.
    """
    x = _as_tensor(features).float().detach()
    y = _as_tensor(labels).long().to(x.device)
    gen = torch.Generator().manual_seed(int(seed))
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))  # nn.Linear's init draws from the global generator
    try:
        probe = nn.Linear(x.shape[1], num_classes).to(x.device)
    finally:
        torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=config.epochs, eta_min=config.eta_min
    )
    loss_fn = nn.CrossEntropyLoss()
    n = x.shape[0]
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(probe(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return probe.eval()


def agreement_matrix(preds_a: np.ndarray, preds_b: np.ndarray) -> np.ndarray:
    """Share of identical predictions for every pair of rows.

    Args:
        preds_a: (P, M) int predictions of P classifiers on M inputs.
        preds_b: (Q, M) int predictions on the same inputs.

    Returns:
        (P, Q) float agreement in [0, 1].
    """
    return (preds_a[:, None, :] == preds_b[None, :, :]).mean(axis=-1)


def fort_agreement(acc_a: float, acc_b: float, num_classes: int) -> tuple[float, float]:
    """(independent-errors agreement, maximum agreement) from two accuracies (Fort et al.).

    NaN for both when the bounds are undefined (the better accuracy at or below chance).
    """
    try:
        fb = fort_bounds(acc_a, acc_b, num_classes)
    except MeasureInputError:
        return float("nan"), float("nan")
    return float(fb.independent_agreement), float(fb.max_agreement)


def run_probes(
    train_features: Mapping[str, Array],
    train_labels: Array,
    eval_features: Mapping[str, Array],
    eval_labels: Array,
    *,
    num_classes: int,
    eval_ids: np.ndarray | None = None,
    train_ids: np.ndarray | None = None,
    head_logits: Mapping[str, Array] | None = None,
    config: ProbeConfig | None = None,
) -> ProbeResult:
    """Train probes per backbone on training features; measure everything on held-out features.

    Args:
        train_features: model id -> (N, D_m) features of the training split (same rows for all).
        train_labels: (N,) labels of the training split.
        eval_features: model id -> (M, D_m) features of the held-out evaluation inputs.
        eval_labels: (M,) labels of the held-out inputs.
        num_classes: C.
        eval_ids: (M,) identifiers of the held-out inputs (default ``arange(M)``); recorded.
        train_ids: (N,) identifiers of the training inputs in the same id space as ``eval_ids``;
            when given, any overlap raises, so agreement can never be measured on training inputs.
        head_logits: model id -> (M, C) original-head logits on the same held-out inputs.
        config: probe settings.

    Returns:
        A ProbeResult (accuracies, per-model-pair agreements, Fort references).

    Raises:
        DataError: mismatched models or rows, or train and eval ids that overlap.
    """
    cfg = config or ProbeConfig()
    models = list(train_features)
    if sorted(models) != sorted(eval_features):
        raise DataError(
            f"train_features and eval_features must hold the same models, got {sorted(models)} "
            f"and {sorted(eval_features)}"
        )
    if len(models) < 2:
        raise DataError(f"probe agreement needs at least 2 models, got {len(models)}")
    y_tr = _as_tensor(train_labels).long()
    y_ev = np.asarray(_as_tensor(eval_labels).cpu().numpy(), dtype=np.int64)
    eval_ids = np.arange(y_ev.size, dtype=np.int64) if eval_ids is None else np.asarray(eval_ids)
    _check_held_out(y_ev, eval_ids, train_ids)
    probe_preds: dict[str, np.ndarray] = {}
    probe_acc: dict[str, np.ndarray] = {}
    head_acc: dict[str, float] = {}
    head_preds: dict[str, np.ndarray] = {}
    for mid in models:
        probe_preds[mid] = _probe_predictions(mid, train_features[mid], y_tr, eval_features[mid],
                                              y_ev, num_classes=num_classes, cfg=cfg)
        probe_acc[mid] = (probe_preds[mid] == y_ev[None, :]).mean(axis=1)
        if head_logits is not None and mid in head_logits:
            hp = np.asarray(_as_tensor(head_logits[mid]).argmax(1).cpu().numpy(), dtype=np.int64)
            head_preds[mid] = hp
            head_acc[mid] = float((hp == y_ev).mean())
        else:
            head_acc[mid] = float("nan")
        log.info("probes for %s: acc %s (head %.4f)", mid, probe_acc[mid], head_acc[mid])
    rows = [_pair_row(a, b, probe_preds, probe_acc, head_preds, head_acc, num_classes)
            for a, b in itertools.combinations(models, 2)]
    return ProbeResult(eval_ids, probe_preds, probe_acc, head_acc, pd.DataFrame(rows), cfg)


def _check_held_out(y_ev: np.ndarray, eval_ids: np.ndarray,
                    train_ids: np.ndarray | None) -> None:
    """One eval id per eval label, and no eval id among the training ids."""
    if eval_ids.shape != y_ev.shape:
        raise DataError(f"eval_ids must have shape {y_ev.shape}, got {eval_ids.shape}")
    if train_ids is not None:
        overlap = np.intersect1d(np.asarray(train_ids), eval_ids)
        if overlap.size:
            raise DataError(
                f"probe agreement must use held-out inputs, but {overlap.size} eval ids are also "
                f"training ids (first: {overlap[:5].tolist()})"
            )


def _probe_predictions(mid: str, train_x: Array, y_tr: torch.Tensor, eval_x: Array,
                       y_ev: np.ndarray, *, num_classes: int, cfg: ProbeConfig) -> np.ndarray:
    """(P, M) int64 held-out predictions of the model's P probes."""
    xtr = _as_tensor(train_x).float().detach()
    xev = _as_tensor(eval_x).float().detach().to(xtr.device)
    if xtr.shape[0] != y_tr.shape[0] or xev.shape[0] != y_ev.size:
        raise DataError(
            f"features of model {mid!r} have {xtr.shape[0]} train / {xev.shape[0]} eval "
            f"rows, labels have {y_tr.shape[0]} / {y_ev.size}"
        )
    if cfg.standardize:
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
        xtr, xev = (xtr - mu) / sd, (xev - mu) / sd
    preds = []
    for p in range(cfg.num_probes):
        probe = train_probe(xtr, y_tr, num_classes=num_classes, config=cfg, seed=cfg.seed + p)
        with torch.no_grad():
            preds.append(probe(xev).argmax(1).cpu().numpy())
    return np.stack(preds).astype(np.int64)


def _pair_row(a: str, b: str, probe_preds: Mapping[str, np.ndarray],
              probe_acc: Mapping[str, np.ndarray], head_preds: Mapping[str, np.ndarray],
              head_acc: Mapping[str, float], num_classes: int) -> dict[str, object]:
    """One model pair's row of ``ProbeResult.pairs``."""
    agree = agreement_matrix(probe_preds[a], probe_preds[b])  # (P, P), cross-backbone only
    acc_a, acc_b = float(probe_acc[a].mean()), float(probe_acc[b].mean())
    lo, hi = fort_agreement(acc_a, acc_b, num_classes)
    row = {
        "model_a": a,
        "model_b": b,
        "probe_agreement": float(agree.mean()),
        "probe_agreement_sd": float(agree.std()),
        "n_probe_pairs": int(agree.size),
        "probe_acc_a": acc_a,
        "probe_acc_b": acc_b,
        "fort_lower": lo,
        "fort_upper": hi,
        "head_agreement": float("nan"),
        "head_fort_lower": float("nan"),
        "head_fort_upper": float("nan"),
    }
    if a in head_preds and b in head_preds:
        row["head_agreement"] = float((head_preds[a] == head_preds[b]).mean())
        hlo, hhi = fort_agreement(head_acc[a], head_acc[b], num_classes)
        row["head_fort_lower"], row["head_fort_upper"] = hlo, hhi
    return row
