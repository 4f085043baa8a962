"""Projected gradient descent (Madry et al. 2018) in L2 and Linf balls, FGSM-RS, robust accuracy.

Conventions (pure functions, no global state; the device follows `x`):

- Pixels are in [0, 1]; every iterate is clamped there, `eps` is on that scale.
- The loss is cross-entropy on the model's logits; Linf steps are `step_size * sign(grad)`,
  L2 steps are `step_size * grad / ||grad||_2` per sample; then projection onto the eps-ball
  around each sample and clamping to [0, 1] (which can only shrink |delta| per pixel).
- Random start: uniform in the Linf box, uniform in the L2 ball.
- **Mode**: attacks run the model in eval mode (BatchNorm running statistics, no dropout) and
  restore every submodule's previous train/eval flag afterwards. This is what the robustness
  library (which trained the paper's models) does, and it keeps attack iterates out of the
  BatchNorm running statistics. Parameter `.grad`s are never touched (`torch.autograd.grad`).
- Default step size (when `None` is passed where allowed): `2.5 * eps / steps` (Madry et al.'s
  rule, also the robustness library's recommendation), so `steps` steps can cross the ball.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import THREAT_MODELS
from trainables.errors import ConfigError

__all__ = ["default_step_size", "fgsm_rs", "pgd", "robust_accuracy"]

_TINY = 1e-12


def _check(norm: str, eps: float, steps: int) -> None:
    if norm not in THREAT_MODELS:
        raise ConfigError(f"unknown norm {norm!r}; allowed: {list(THREAT_MODELS)}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"eps must be a finite number >= 0, got eps={eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got steps={steps!r}")


def default_step_size(eps: float, steps: int) -> float:
    """The `2.5 * eps / steps` rule (Madry et al. 2018); `eps` for a 0-step attack."""
    return 2.5 * eps / max(steps, 1)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))  # (B, 1, 1, 1)


def _project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    factor = (eps / (_per_sample_norm(delta) + _TINY)).clamp(max=1.0)
    return delta * factor


def _random_start(x: torch.Tensor, norm: str, eps: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device (CPU generators with CUDA data), then move to x's device.
    dev = generator.device if generator is not None else x.device
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype)
        return ((2 * u - 1) * eps).to(x.device)
    g = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    r = torch.rand((x.shape[0],), generator=generator, device=dev, dtype=x.dtype)
    d = x[0].numel()
    radius = eps * r.pow(1.0 / d).view(-1, *([1] * (x.dim() - 1)))  # uniform in the ball
    return (g / (_per_sample_norm(g) + _TINY) * radius).to(x.device)


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
            step_size: float, steps: int, random_start: bool,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run PGD; return (final iterate, mask of samples misclassified at any evaluated iterate)."""
    x = x.detach()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    delta = torch.zeros_like(x)
    if random_start:
        delta = _random_start(x, norm, eps, generator)
    delta = ((x + delta).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        fooled |= logits.argmax(1) != y
        loss = F.cross_entropy(logits, y, reduction="sum")  # per-sample gradients, batch-free
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / (_per_sample_norm(grad) + _TINY)
            delta = _project(delta + step_size * step, norm, eps)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach(), fooled


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
        step_size: float, steps: int, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted PGD maximising cross-entropy inside the `norm`-ball of radius `eps`.

    Args:
        model: classifier mapping (B, C, H, W) in [0, 1] to logits (B, K); run in eval mode,
            its previous modes restored afterwards.
        x: float (B, C, H, W) in [0, 1]; its device is used throughout.
        y: int64 (B,) true labels.
        norm: "l2" or "linf".
        eps: radius on the [0, 1] pixel scale; 0 returns a clone of `x`.
        step_size: step length (Linf: per pixel; L2: per-sample Euclidean).
        steps: number of gradient steps (0: random start only).
        random_start: start from a uniform point in the ball.
        generator: torch.Generator for the random start (CPU or x's device).

    Returns:
        float (B, C, H, W) adversarial inputs, detached, `||x_adv - x|| <= eps`, in [0, 1].
    """
    _check(norm, eps, steps)
    if eps == 0:
        return x.detach().clone()
    with _eval_mode(model):
        x_adv, _ = _attack(model, x, y, norm=norm, eps=eps, step_size=step_size, steps=steps,
                           random_start=random_start, generator=generator)
    return x_adv


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
            step_size: float | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """FGSM with a random start (Wong, Rice & Kolter 2020): one PGD step from a random point.

    Args:
        model, x, y, norm, eps, generator: as in `pgd`.
        step_size: defaults to `1.25 * eps`, the paper's choice.

    Returns:
        float (B, C, H, W) adversarial inputs inside the ball, in [0, 1].
    """
    step = 1.25 * eps if step_size is None else step_size
    return pgd(model, x, y, norm=norm, eps=eps, step_size=step, steps=1, random_start=True,
               generator=generator)


def robust_accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, norm: str,
                    eps: float, steps: int, restarts: int, step_size: float | None = None,
                    batch_size: int = 256, generator: torch.Generator | None = None) -> float:
    """Fraction of samples classified correctly under every PGD restart (and clean).

    A sample counts as robust only if it is correct on the clean input and no iterate of any
    restart (each from its own random start) is misclassified. A restart attacks only the
    samples still robust, which gives the same answer as attacking all of them and saves work;
    the bookkeeping is a boolean mask over the batch, no per-sample loop.

    Args:
        model: classifier on [0, 1] inputs.
        X: float (N, C, H, W) in [0, 1]; batches are moved to the model's device.
        y: int64 (N,).
        norm, eps, steps: attack; eps = 0 gives clean accuracy.
        restarts: >= 1 random restarts.
        step_size: None -> `2.5 * eps / steps`.
        batch_size: samples per attack batch.
        generator: torch.Generator for random starts (reproducible results).

    Returns:
        Robust accuracy in [0, 1].
    """
    _check(norm, eps, steps)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ConfigError(f"restarts must be an integer >= 1, got restarts={restarts!r}")
    if len(X) != len(y) or len(X) == 0:
        raise ConfigError(f"X and y must be non-empty with equal length, got {len(X)} and {len(y)}")
    step = default_step_size(eps, steps) if step_size is None else step_size
    device = next(model.parameters()).device
    robust_total = 0
    with _eval_mode(model):
        for xb, yb in zip(X.split(batch_size), y.split(batch_size)):
            xb, yb = xb.to(device), yb.to(device)
            with torch.no_grad():
                robust = model(xb).argmax(1) == yb  # (b,)
            for _ in range(restarts if eps > 0 else 0):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x_adv, fooled = _attack(model, xb[idx], yb[idx], norm=norm, eps=eps,
                                        step_size=step, steps=steps, random_start=True,
                                        generator=generator)
                with torch.no_grad():
                    fooled |= model(x_adv).argmax(1) != yb[idx]
                robust[idx[fooled]] = False
            robust_total += int(robust.sum())
    return robust_total / len(X)
