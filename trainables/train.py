"""One training run: standard (eps = 0) or PGD adversarial training (eps > 0), with exact resume.

Reads top to bottom: `TrainConfig` (validated, frozen) -> `train_model` (seed, data, model,
optimizer, epochs of train + evaluate + checkpoint + report, final strong evaluation) -> CLI.

Robustness is evaluated with PGD (random start, `eval_attack_steps` steps) every epoch and with
multi-restart PGD (`final_eval_steps` steps x `final_eval_restarts` restarts, a sample counts
only if it survives all) at the end. AutoAttack is not in the lock file, so strong multi-restart
PGD stands in for it; numbers are upper bounds on true robust accuracy, like any attack's.

Usage:
    python -m trainables.train --dataset digits --arch cnn --threat-model linf --eps 0.1 \
        --seed 0 --epochs 5 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from trainables.attacks import NORMS, default_step_size, pgd, robust_accuracy
from trainables.checkpoints import load_checkpoint, load_train_state, save_checkpoint
from trainables.data import DATASETS, DatasetBundle, TensorImageDataset, load_dataset
from trainables.errors import ConfigError, UserError
from trainables.models import MODELS, UniModel, build_model
from trainables.tracking import final_robust_at

__all__ = ["TrainConfig", "TrainResult", "train_model", "run_trial", "main"]

log = logging.getLogger(__name__)
Report = Callable[[dict, Path], None]

_CHOICES = {"dataset": DATASETS, "threat_model": NORMS, "optimizer": ("sgd", "adam"),
            "schedule": ("none", "step", "cosine"), "device": ("auto", "cpu", "cuda")}
# Fields that may change between an interrupted run and its resumption (they do not change
# the trained weights).
_RESUME_FREE = {"data_root", "device", "num_threads", "num_workers", "eval_size", "eval_seed",
                "eval_attack_steps", "final_eval_steps", "final_eval_restarts", "extra_eval_eps"}


def _num(name: str, v: object, *, lo: float, hi: float = math.inf, lo_open: bool = False,
         integer: bool = False, optional: bool = False):
    if v is None and optional:
        return None
    kind = int if integer else (int, float)
    ok = not isinstance(v, bool) and isinstance(v, kind) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        what = "an integer" if integer else "a number"
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ConfigError(f"{name} must be {what} in {rng}{' or null' if optional else ''}, "
                          f"got {name}={v!r}")
    return v if integer else float(v)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; validated on construction.

    eps is on the [0, 1] pixel scale (eps = 0: standard training). `attack_step_size=None`
    means `2.5 * eps / attack_steps`. `eval_size=None` evaluates on the whole test split;
    `eval_seed` picks the evaluation subset (same for every model of a sweep). `lr_step_size`
    (epochs) and `lr_gamma` apply to `schedule="step"`; `cosine` anneals to 0 over `epochs`.
    """

    dataset: str = "digits"
    data_root: str | None = None
    image_size: int | None = None
    arch: str = "cnn"
    width: float = 1.0
    threat_model: str = "linf"
    eps: float = 0.0
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    attack_steps: int = 7
    attack_step_size: float | None = None
    eval_attack_steps: int = 20
    eval_size: int | None = None
    eval_seed: int = 0
    final_eval_steps: int = 50
    final_eval_restarts: int = 3
    extra_eval_eps: tuple[float, ...] = ()
    num_threads: int | None = None
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got "
                                  f"{name}={getattr(self, name)!r}")
        if self.arch not in MODELS:
            raise ConfigError(f"arch must be one of {sorted(MODELS)}, got arch={self.arch!r}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"data_root must be a path string or null, got {self.data_root!r}")
        hi_eps = 1.0 if self.threat_model == "linf" else math.inf
        eps_extra = self.extra_eval_eps
        if not isinstance(eps_extra, (list, tuple)):
            raise ConfigError(f"extra_eval_eps must be a list of numbers, got {eps_extra!r}")
        fixed = dict(
            image_size=_num("image_size", self.image_size, lo=8, integer=True, optional=True),
            width=_num("width", self.width, lo=0, hi=16, lo_open=True),
            eps=_num("eps", self.eps, lo=0, hi=hi_eps),
            seed=_num("seed", self.seed, lo=0, hi=2**63 - 1, integer=True),
            epochs=_num("epochs", self.epochs, lo=1, integer=True),
            batch_size=_num("batch_size", self.batch_size, lo=2, integer=True),
            lr=_num("lr", self.lr, lo=0, lo_open=True),
            momentum=_num("momentum", self.momentum, lo=0, hi=0.999),
            weight_decay=_num("weight_decay", self.weight_decay, lo=0),
            lr_step_size=_num("lr_step_size", self.lr_step_size, lo=1, integer=True),
            lr_gamma=_num("lr_gamma", self.lr_gamma, lo=0, hi=1, lo_open=True),
            attack_steps=_num("attack_steps", self.attack_steps, lo=1, integer=True),
            attack_step_size=_num("attack_step_size", self.attack_step_size, lo=0,
                                  lo_open=True, optional=True),
            eval_attack_steps=_num("eval_attack_steps", self.eval_attack_steps, lo=1, integer=True),
            eval_size=_num("eval_size", self.eval_size, lo=1, integer=True, optional=True),
            eval_seed=_num("eval_seed", self.eval_seed, lo=0, integer=True),
            final_eval_steps=_num("final_eval_steps", self.final_eval_steps, lo=1, integer=True),
            final_eval_restarts=_num("final_eval_restarts", self.final_eval_restarts, lo=1,
                                     integer=True),
            extra_eval_eps=tuple(_num(f"extra_eval_eps[{i}]", e, lo=0, hi=hi_eps)
                                 for i, e in enumerate(eps_extra)),
            num_threads=_num("num_threads", self.num_threads, lo=1, integer=True, optional=True),
            num_workers=_num("num_workers", self.num_workers, lo=0, integer=True),
        )
        for k, v in fixed.items():
            object.__setattr__(self, k, v)  # normalised types (int -> float, list -> tuple)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a plain dict (YAML/Tune config); unknown keys are errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"train config must be a mapping, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown train config keys {unknown}; allowed: {known}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples as lists); `from_dict(to_dict())` round-trips."""
        d = dataclasses.asdict(self)
        d["extra_eval_eps"] = list(self.extra_eval_eps)
        return d


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


def _eval_metric(eps: float) -> str:
    return "eval/" + final_robust_at(eps).split("/", 1)[1]


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; allowed here: auto, cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _rng_state(gen: torch.Generator) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pystate, pygauss = random.getstate()
    return {"torch": torch.get_rng_state(), "generator": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": {"version": version, "state": list(pystate), "gauss": pygauss}}


def _set_rng_state(s: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    gen.set_state(s["generator"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


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


def _batches(bundle: DatasetBundle, cfg: TrainConfig, gen: torch.Generator, device):
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


@torch.no_grad()
def _clean_accuracy(model: UniModel, X: torch.Tensor, y: torch.Tensor, device) -> float:
    model.eval()
    correct = sum(int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
                  for xb, yb in zip(X.split(512), y.split(512)))
    return correct / len(y)


def _evaluate(model, bundle, cfg, device, *, steps: int, restarts: int, prefix: str,
              seed: int) -> dict:
    X, y = bundle.eval_tensors()
    gen = torch.Generator().manual_seed(seed)
    clean = _clean_accuracy(model, X, y, device)
    out = {f"{prefix}/clean_acc": clean}

    def rob(eps: float) -> float:
        if eps == 0:
            return clean
        return robust_accuracy(model, X, y, norm=cfg.threat_model, eps=eps, steps=steps,
                               restarts=restarts, generator=gen)

    out[f"{prefix}/robust_acc"] = rob(cfg.eps)
    for e in cfg.extra_eval_eps:
        name = final_robust_at(e) if prefix == "final" else _eval_metric(e)
        out[name] = rob(e)
    return out


def train_model(cfg: TrainConfig, *, resume_from: str | Path | None = None,
                report: Report | None = None) -> TrainResult:
    """Train (and evaluate) one model as configured; see the module docstring.

    Args:
        cfg: the run's configuration.
        resume_from: a checkpoint directory written by an earlier epoch of the same config
            (weights + train state); training continues bit-identically on CPU.
        report: called after every epoch with (metrics, checkpoint dir). The directory is a
            fresh temporary folder deleted after `report` returns; copy what you keep. The last
            epoch's metrics include the `final/*` strong evaluation. No checkpoints are
            written when `report` is None.

    Returns:
        `TrainResult` (model, final metrics, per-epoch history, checkpoint meta).

    Raises:
        ConfigError, DataError, CheckpointError: bad config, data or resume checkpoint.
    """
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling, augmentation, attack starts
    bundle = load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.eval_seed,
                          eval_size=cfg.eval_size, image_size=cfg.image_size)
    model = build_model(cfg.arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        image_size=bundle.image_size, width=cfg.width, mean=bundle.mean,
                        std=bundle.std)
    start, history = 0, []
    if resume_from is not None:
        model, _ = load_checkpoint(resume_from)
        state = load_train_state(resume_from)
        diff = sorted(k for k, v in cfg.to_dict().items()
                      if k not in _RESUME_FREE and state["config"].get(k) != v)
        if diff:
            raise ConfigError(f"cannot resume from {resume_from}: config differs in {diff}")
        start, history = int(state["epoch"]), list(state["history"])
    model = model.to(device)
    opt, sched = _optimizer(cfg, model)
    if resume_from is not None:
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], gen)
    if isinstance(bundle.train, TensorImageDataset) and device.type == "cuda":
        t = bundle.train  # keep the whole (small) training tensor on the GPU
        bundle = dataclasses.replace(bundle, train=TensorImageDataset(
            t.x.to(device), t.y.to(device), scale=t.scale, augment=t.augment))
    step_size = cfg.attack_step_size or default_step_size(cfg.eps, cfg.attack_steps)
    meta = dict(dataset=cfg.dataset, threat_model=cfg.threat_model, eps=cfg.eps, seed=cfg.seed,
                epoch=start, epochs=cfg.epochs, metrics=history[-1] if history else {},
                data_hash=bundle.eval_hash, eval_size=len(bundle.eval_indices),
                config=cfg.to_dict())
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in _batches(bundle, cfg, gen, device):
            if cfg.eps > 0:
                xb = pgd(model, xb, yb, norm=cfg.threat_model, eps=cfg.eps, step_size=step_size,
                         steps=cfg.attack_steps, random_start=True, generator=gen)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        train_s = time.perf_counter() - t0
        metrics = {"epoch": epoch + 1, "train/loss": loss_sum / max(seen, 1),
                   "train/acc": correct / max(seen, 1), "train/lr": lr, "time/epoch_s": train_s}
        metrics.update(_evaluate(model, bundle, cfg, device, steps=cfg.eval_attack_steps,
                                 restarts=1, prefix="eval", seed=cfg.seed * 1009 + epoch))
        if epoch + 1 == cfg.epochs:
            metrics.update(_evaluate(model, bundle, cfg, device, steps=cfg.final_eval_steps,
                                     restarts=cfg.final_eval_restarts, prefix="final",
                                     seed=cfg.seed * 1009 + 999_983))
        metrics["time/eval_s"] = time.perf_counter() - t0 - train_s
        metrics["time/train_s"] = train_s + sum(h["time/epoch_s"] for h in history)
        history.append(metrics)
        meta.update(epoch=epoch + 1, metrics=metrics)
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
        if report is not None:
            ckpt = Path(tempfile.mkdtemp(prefix="unisweep-ckpt-"))
            try:
                train_state = {"epoch": epoch + 1, "config": cfg.to_dict(), "history": history,
                               "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict() if sched is not None else None,
                               "rng": _rng_state(gen)}
                save_checkpoint(ckpt, model, meta, train_state)
                report(dict(metrics), ckpt)
            finally:
                shutil.rmtree(ckpt, ignore_errors=True)
    model.eval()
    return TrainResult(model=model, metrics=dict(meta["metrics"]), history=history, meta=dict(meta))


def run_trial(config: dict) -> None:
    """The Ray Tune trainable; lives in `trainables.trial` (imported lazily: Ray/MLflow glue)."""
    from trainables.trial import run_trial as _run_trial

    _run_trial(config)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainables.train",
                                description="Train one model (no Ray) and save its checkpoint.")
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, help=f"one of {list(DATASETS)}")
    p.add_argument("--data-root", default=None, help="dataset directory (cifar10, imagefolder)")
    p.add_argument("--image-size", type=int, default=None, help="imagefolder input size")
    p.add_argument("--arch", default=d.arch, help=f"one of {sorted(MODELS)}")
    p.add_argument("--width", type=float, default=d.width)
    p.add_argument("--threat-model", default=d.threat_model, help="l2 or linf")
    p.add_argument("--eps", type=float, default=d.eps, help="radius on the [0,1] pixel scale")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--schedule", default=d.schedule)
    p.add_argument("--attack-steps", type=int, default=d.attack_steps)
    p.add_argument("--eval-size", type=int, default=None)
    p.add_argument("--final-eval-steps", type=int, default=d.final_eval_steps)
    p.add_argument("--final-eval-restarts", type=int, default=d.final_eval_restarts)
    p.add_argument("--extra-eval-eps", type=float, nargs="*", default=[])
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--device", default=d.device)
    p.add_argument("--out", required=True, help="directory for the checkpoint (resumable)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: returns the exit status (2 for user errors, printed on one line)."""
    args = _parse(argv)
    out = Path(args.out).expanduser().resolve()
    try:
        cfg = TrainConfig.from_dict({k: v for k, v in vars(args).items()
                                     if k not in ("out", "resume")})

        def keep(metrics: dict, ckpt: Path) -> None:
            out.mkdir(parents=True, exist_ok=True)
            for f in ckpt.iterdir():
                shutil.copy2(f, out / f.name)
            parts = [f"{k}={v:.4f}" for k, v in metrics.items()
                     if k.startswith(("train/", "eval/", "final/"))]
            print(f"epoch {metrics['epoch']}/{cfg.epochs} ({metrics['time/epoch_s']:.1f}s) "
                  + " ".join(parts), flush=True)

        train_model(cfg, resume_from=out if args.resume else None, report=keep)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
