"""Evaluation during training: clean and PGD robust accuracy on the run's fixed eval subset.

Every epoch: PGD with a random start and `eval_attack_steps` steps (metrics ``eval/*``), in the
run's precision (bf16 autocast where `trainables.precision` says so). After the last epoch:
multi-restart PGD (`final_eval_steps` steps x `final_eval_restarts` restarts; a sample counts
only if it survives all; metrics ``final/*``), always in fp32. The eval set is moved to the
device once per evaluation (resident there during the attack). AutoAttack is not in the lock file,
so strong multi-restart PGD stands in for it; the numbers are upper bounds on the true robust
accuracy, like any attack's.
"""

from __future__ import annotations

import torch

from trainables.attacks import robust_accuracy
from trainables.config import TrainConfig
from trainables.data import DatasetBundle
from trainables.models import UniModel
from trainables.precision import autocast
from trainables.tracking import final_robust_at

__all__ = ["clean_accuracy", "epoch_metrics"]


@torch.no_grad()
def clean_accuracy(model: UniModel, X: torch.Tensor, y: torch.Tensor,
                   device: torch.device) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``X`` (N, C, H, W), ``y`` (N,)."""
    model.eval()
    correct = sum(int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
                  for xb, yb in zip(X.split(512), y.split(512)))
    return correct / len(y)


def _evaluate(model: UniModel, bundle: DatasetBundle, cfg: TrainConfig, device: torch.device, *,
              steps: int, restarts: int, prefix: str, seed: int) -> dict[str, float]:
    X, y = (t.to(device) for t in bundle.eval_tensors())
    gen = torch.Generator().manual_seed(seed)
    clean = clean_accuracy(model, X, y, device)
    out = {f"{prefix}/clean_acc": clean}

    def rob(eps: float) -> float:
        if eps == 0:
            return clean
        return robust_accuracy(model, X, y, norm=cfg.threat_model, eps=eps, steps=steps,
                               restarts=restarts, generator=gen)

    out[f"{prefix}/robust_acc"] = rob(cfg.eps)
    for e in cfg.extra_eval_eps:  # final/robust_acc_at_<eps>, eval/robust_acc_at_<eps>
        out[prefix + "/" + final_robust_at(e).split("/", 1)[1]] = rob(e)
    return out


def epoch_metrics(model: UniModel, bundle: DatasetBundle, cfg: TrainConfig,
                  device: torch.device, *, epoch: int, precision: str = "fp32") -> dict[str, float]:
    """The evaluation after epoch ``epoch`` (0-based): ``eval/*`` in ``precision`` (resolved:
    ``fp32`` or ``bf16``), plus ``final/*`` (fp32) after the last one. Seeded by the run's seed
    and the epoch, so a resumed run evaluates the same."""
    with autocast(precision, device):
        out = _evaluate(model, bundle, cfg, device, steps=cfg.eval_attack_steps, restarts=1,
                        prefix="eval", seed=cfg.seed * 1009 + epoch)
    if epoch + 1 == cfg.epochs:
        out.update(_evaluate(model, bundle, cfg, device, steps=cfg.final_eval_steps,
                             restarts=cfg.final_eval_restarts, prefix="final",
                             seed=cfg.seed * 1009 + 999_983))
    return out
