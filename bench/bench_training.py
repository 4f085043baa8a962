"""(d) One PGD-k adversarial training step against its limit and against a standard step.

The limit of a PGD-k step is k attack iterations (each one forward and one backward to the
input, in eval mode as `trainables.attacks.pgd` runs them) plus one standard training step
(forward, backward to the weights, optimizer step, in train mode), measured separately on
the same model and batch. A PGD step is `trainables.attacks.pgd` followed by that standard
step, as in `trainables.train.train_model`. Target: within 10% of the limit.

Sizes are CPU-friendly (one torch thread, see `run`): 32x32x3 inputs, 10 classes, batch 32 (quick: 8), the small `cnn` at
width 1 and `resnet18` at width 0.5 (width 1 costs ~35 ms per image per standard step here).
Each round times the PGD step, k iterations and a standard step back to back; the ratio is the
median of the per-round ratios (this machine is shared, so load changes between rounds).

Run: ``python -m bench --only bench_training`` (or ``python -m bench.bench_training``).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F

from bench._common import print_rows, row
from trainables.attacks import pgd
from trainables.models import build_model

K = 7
EPS = 8 / 255
TARGET = 1 / 1.10  # PGD step <= 1.10 x limit


def _bench_arch(arch: str, width: float, batch: int, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32, width=width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def std_step(xb: torch.Tensor) -> None:
        model.train()
        loss = F.cross_entropy(model(xb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def attack_iters(n: int) -> None:
        """n bare attack iterations: eval-mode forward + gradient w.r.t. the input only."""
        model.eval()
        delta = torch.zeros_like(x)
        for _ in range(n):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta + 0.01 * grad.sign()).detach()

    def pgd_step() -> None:
        xa = pgd(model, x, y, norm="linf", eps=EPS, step_size=2.5 * EPS / K, steps=K,
                 random_start=True, generator=gen)
        std_step(xa)

    def clock(fn, *a) -> float:
        t0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t0

    clock(std_step, x), clock(attack_iters, 2), clock(pgd_step)  # warm-up (allocator, kernels)
    std, it, adv, ratios = [], [], [], []
    for _ in range(rounds):  # back to back, so load changes on this shared machine hit both
        adv.append(clock(pgd_step))
        it.append(clock(attack_iters, K) / K)
        std.append(clock(std_step, x))
        ratios.append((K * it[-1] + std[-1]) / adv[-1])
    t_std, t_it, t_adv = (statistics.median(v) for v in (std, it, adv))
    limit = K * t_it + t_std
    ratio = statistics.median(ratios)
    tag = f"{arch} w{width:g} batch {batch} 32x32"
    note = (f"median of {rounds} rounds; torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads; 1-min load {os.getloadavg()[0]:.1f}")
    return [
        row(f"PGD-{K} training step vs limit ({tag})", t_adv,
             f"limit = {K} x attack iteration + standard step", limit, ratio,
             "within 10% (ratio >= 0.909)", ratio >= TARGET,
             f"ratio = median of per-round limit/PGD-step ratios "
             f"({', '.join(f'{r:.2f}' for r in ratios)}); iteration {t_it * 1e3:.1f} ms, "
             f"standard step {t_std * 1e3:.1f} ms; {note}"),
        row(f"PGD-{K} training step vs standard step ({tag})", t_adv, "one standard step",
             t_std, t_std / t_adv, "(context: ideal ~1/(k*iter/std + 1))", None, note),
        row(f"attack iteration vs standard step ({tag})", t_it,
             "one standard step (fwd + bwd to weights + SGD)", t_std, t_std / t_it,
             "(context)", None, "forward + backward to the input only, eval mode"),
    ]


def run(quick: bool = False) -> list[dict]:
    """PGD-7 step rows for the small cnn and resnet18 (width 0.5); quick = tiny batch."""
    # One torch thread: on this shared 2-core machine a second OpenMP thread that gets
    # descheduled stalls every parallel region at its barrier (seen: 40x slower small steps).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch, rounds = (8, 2) if quick else (32, 4)
        rows = _bench_arch("cnn", 1.0, batch, rounds * 2)
        rows += _bench_arch("resnet18", 0.5, batch, rounds)
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    print_rows(run)
