"""One training run: standard (eps = 0) or PGD adversarial training (eps > 0), with exact resume.

Reads top to bottom: `train_model` (seed, data, model, optimizer, then per epoch: train,
evaluate, checkpoint, report) -> the command line. The settings are `trainables.config.TrainConfig`;
the evaluation is `trainables.evaluate`; the random state `trainables.rng`.

Usage:
    python -m trainables.train --dataset digits --arch cnn --threat-model linf --eps 0.1 \
        --seed 0 --epochs 5 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from trainables.attacks import default_step_size, pgd
from trainables.checkpoints import load_checkpoint, load_train_state, save_checkpoint
from trainables.config import SETTINGS, TrainConfig
from trainables.data import DatasetBundle, TensorImageDataset, load_dataset
from trainables.device import pick_device
from trainables.errors import ConfigError, user_errors
from trainables.evaluate import epoch_metrics
from trainables.models import UniModel, build_model
from trainables.precision import (autocast, prepare_model, resolve_memory_format,
                                  resolve_precision, to_format)
from trainables.rng import rng_state, seed_everything, set_rng_state
from trainables.settings import add_arguments

__all__ = ["TrainResult", "train_model", "train_step", "main"]

log = logging.getLogger(__name__)
Report = Callable[[dict, Path], None]
OnBatch = Callable[[int, int], None]  # (epoch, batch), both 1-based, after each optimizer step
PROG = "python -m trainables.train"


@dataclass(frozen=True)
class TrainResult:
    """Outcome of `train_model`.

    Attributes:
        model: the trained `UniModel` (eval mode, on the training device).
        metrics: last epoch's metrics including `final/*`.
        history: per-epoch metric dicts, epoch 1 first.
        meta: `meta.json` content for `save_checkpoint(dir, model, meta)`.
    """

    model: UniModel
    metrics: dict
    history: list
    meta: dict

    def save(self, directory: str | Path) -> Path:
        """Write weights + meta (no train state) to `directory`."""
        return save_checkpoint(directory, self.model, self.meta)


def _optimizer(cfg: TrainConfig, model: UniModel):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    else:
        sched = None
    return opt, sched


def _batches(bundle: DatasetBundle, cfg: TrainConfig, gen: torch.Generator,
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield augmented training batches in a seeded order (tensor fast path or DataLoader)."""
    train = bundle.train
    if isinstance(train, TensorImageDataset):
        for idx in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
            if len(idx) > 1:  # BatchNorm cannot train on a batch of one
                xb, yb = train.batch(idx, generator=gen)
                yield xb.to(device), yb.to(device)
        return
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    for xb, yb in loader:
        if len(yb) > 1:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
               xb: torch.Tensor, yb: torch.Tensor, *, precision: str = "fp32",
               device: torch.device | None = None) -> tuple[float, int]:
    """One optimiser step on a (possibly adversarial) batch, the forward pass and loss under
    ``precision``'s autocast (not the backward): (mean loss, correct predictions)."""
    with autocast(precision, device):
        logits = forward(xb)
        loss = F.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), int((logits.argmax(1) == yb).sum())


@dataclass(frozen=True)
class _Compute:
    """How the loop computes (``trainables.precision``): the callable it runs (the model or its
    compiled wrapper), the resolved precision and memory format."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    precision: str
    memory_format: str


def _train_epoch(model: UniModel, opt, sched, bundle: DatasetBundle, cfg: TrainConfig,
                 gen: torch.Generator, device: torch.device, step_size: float,
                 compute: _Compute, on_batch: Callable[[int], None] | None = None) -> dict:
    """One pass over the training set (PGD examples when eps > 0); the schedule steps after."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for batch, (xb, yb) in enumerate(_batches(bundle, cfg, gen, device), start=1):
        xb = to_format(xb, compute.memory_format)
        if cfg.eps > 0:
            with autocast(compute.precision, device):  # the attack's forward passes
                xb = pgd(compute.forward, xb, yb, norm=cfg.threat_model, eps=cfg.eps,
                         step_size=step_size, steps=cfg.attack_steps, random_start=True,
                         generator=gen)
        loss, hits = train_step(compute.forward, opt, xb, yb, precision=compute.precision,
                                device=device)
        loss_sum += loss * len(yb)
        correct += hits
        seen += len(yb)
        if on_batch is not None:
            on_batch(batch)
    lr = opt.param_groups[0]["lr"]
    if sched is not None:
        sched.step()
    return {"train/loss": loss_sum / max(seen, 1), "train/acc": correct / max(seen, 1),
            "train/lr": lr}


def _resume_state(cfg: TrainConfig, resume_from: str | Path) -> tuple[UniModel, dict]:
    """The checkpoint's model and train state; refuses one written with other weights' settings."""
    model, _ = load_checkpoint(resume_from)
    state = load_train_state(resume_from)
    diff = cfg.weights_differ(state["config"])
    if diff:
        raise ConfigError(f"cannot resume from {resume_from}: config differs in {diff}")
    return model, state


def _report(report: Report, model: UniModel, meta: dict, metrics: dict, train_state: dict) -> None:
    """Write the epoch's full checkpoint to a fresh folder, hand it to ``report``, delete it."""
    ckpt = Path(tempfile.mkdtemp(prefix="unisweep-ckpt-"))
    try:
        save_checkpoint(ckpt, model, meta, train_state)
        report(dict(metrics), ckpt)
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)


def train_model(cfg: TrainConfig, *, resume_from: str | Path | None = None,
                report: Report | None = None, on_batch: OnBatch | None = None) -> TrainResult:
    """Train (and evaluate) one model as configured; see the module docstring.

    Args:
        cfg: the run's configuration.
        resume_from: a checkpoint directory written by an earlier epoch of the same config
            (weights + train state); training continues bit-identically on CPU.
        report: called after every epoch with (metrics, checkpoint dir). The directory is a
            fresh temporary folder deleted after `report` returns; copy what you keep. The last
            epoch's metrics include the `final/*` strong evaluation. No checkpoints are
            written when `report` is None.
        on_batch: called as ``on_batch(epoch, batch)`` after every optimizer step (progress;
            the fault tests use it to show where a crash landed).

    Returns:
        `TrainResult` (model, final metrics, per-epoch history, checkpoint meta).

    Raises:
        ConfigError, DataError, CheckpointError: bad config, data or resume checkpoint.
    """
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    device = pick_device(cfg.device)
    gen = seed_everything(cfg.seed)
    bundle = load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.eval_seed,
                          eval_size=cfg.eval_size, image_size=cfg.image_size,
                          n_train=cfg.n_train, n_test=cfg.n_test)
    # Built even when resuming: its initialisation draws from torch's RNG, restored below.
    model = build_model(cfg.arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        image_size=bundle.image_size, width=cfg.width, mean=bundle.mean,
                        std=bundle.std)
    start, history, state = 0, [], None
    if resume_from is not None:
        model, state = _resume_state(cfg, resume_from)
        start, history = int(state["epoch"]), list(state["history"])
    model = model.to(device)
    fmt = resolve_memory_format(cfg.memory_format, model, device)
    compute = _Compute(prepare_model(model, memory_format=fmt, compile_mode=cfg.compile),
                       resolve_precision(cfg.precision, device), fmt)
    opt, sched = _optimizer(cfg, model)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], gen)
    if isinstance(bundle.train, TensorImageDataset) and device.type == "cuda":
        t = bundle.train  # keep the whole (small) training tensor on the GPU
        bundle = dataclasses.replace(bundle, train=TensorImageDataset(
            t.x.to(device), t.y.to(device), scale=t.scale, augment=t.augment))
    step_size = cfg.attack_step_size or default_step_size(cfg.eps, cfg.attack_steps)
    meta = dict(dataset=cfg.dataset, threat_model=cfg.threat_model, eps=cfg.eps, seed=cfg.seed,
                epoch=start, epochs=cfg.epochs, metrics=history[-1] if history else {},
                data_hash=bundle.eval_hash, eval_size=len(bundle.eval_indices),
                config=cfg.to_dict(), precision=compute.precision, memory_format=fmt)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        step = None if on_batch is None else (lambda b, e=epoch + 1: on_batch(e, b))
        metrics = {"epoch": epoch + 1,
                   **_train_epoch(model, opt, sched, bundle, cfg, gen, device, step_size,
                                  compute, step)}
        train_s = time.perf_counter() - t0
        metrics["time/epoch_s"] = train_s
        metrics.update(epoch_metrics(model, bundle, cfg, device, epoch=epoch,
                                     precision=compute.precision))
        metrics["time/eval_s"] = time.perf_counter() - t0 - train_s
        metrics["time/train_s"] = train_s + sum(h["time/epoch_s"] for h in history)
        history.append(metrics)
        meta.update(epoch=epoch + 1, metrics=metrics)
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
        if report is not None:
            _report(report, model, meta, metrics, {
                "epoch": epoch + 1, "config": cfg.to_dict(), "history": history,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "rng": rng_state(gen)})
    model.eval()
    return TrainResult(model=model, metrics=dict(meta["metrics"]), history=history, meta=dict(meta))


def _print_and_keep(out: Path, epochs: int) -> Report:
    """The CLI's report: copy each epoch's checkpoint into ``out`` and print one line."""

    def keep(metrics: dict, ckpt: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for f in ckpt.iterdir():
            shutil.copy2(f, out / f.name)
        parts = [f"{k}={v:.4f}" for k, v in metrics.items()
                 if k.startswith(("train/", "eval/", "final/"))]
        print(f"epoch {metrics['epoch']}/{epochs} ({metrics['time/epoch_s']:.1f}s) "
              + " ".join(parts), flush=True)

    return keep


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: returns the exit status (2 for user errors, printed on one line)."""
    p = argparse.ArgumentParser(prog=PROG, description="Train one model (no Ray) and save its "
                                "checkpoint. Every TrainConfig setting has a flag.")
    add_arguments(p, SETTINGS)
    p.add_argument("--out", required=True, help="directory for the checkpoint (resumable)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    args = p.parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    try:
        with user_errors():
            cfg = TrainConfig.from_dict({k: v for k, v in vars(args).items()
                                         if k not in ("out", "resume")})
            train_model(cfg, resume_from=out if args.resume else None,
                        report=_print_and_keep(out, cfg.epochs))
    except SystemExit as exc:
        return int(exc.code or 0)
    print(f"checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
