"""Cost/effect study on the `shapes` dataset (SPEC §11): train, attack, invert, compare.

For each (architecture, eps, seed) it trains one model on one CPU thread (Adam with a one-cycle,
cosine or constant schedule; L-inf PGD training when eps > 0), measures clean and PGD-20 robust
accuracy, and inverts shared targets (k per class, each from a seed image of another class) with
the project's `analysis.inversion.invert`. Then it prints SPEC §11's table: per group of ordered
cross-architecture pairs, clean-image and inverted-image linear CKA, and how often the other model
labels the source's inversion as the target class / as the seed class; plus each model's
self-reproduction rate, median relative inversion loss, and CPU/wall seconds per stage.

Models run `--jobs` at a time in separate processes (one thread each, like the sweep's trials);
trained models and inversions are cached under `--cache` so a rerun with other inversion settings
retrains nothing. Example (SPEC §11's recipe):

    .venv/bin/python scripts/shapes_study.py --n-train 8000 --epochs-std 8 --epochs-rob 10 \
        --pgd-steps 5 --inv-iters 400 --out results/spec.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from analysis.inputs.inversion import InversionConfig, invert
from analysis.measures import compare
from trainables.attacks import pgd, robust_accuracy
from trainables.data import random_crop_flip
from trainables.models import build_model
from trainables.train import train_step
from trainables import shapes
from trainables.shapes import SHAPE_NAMES, TEST_SEED, TRAIN_SEED, generate_shapes

PAIR_SEED = 573098435098230 % (2**32)  # the paper's pairing seed, as in analysis.inversion


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="resnet18:0.125,vgg11_bn:0.25",
                   help="comma-separated arch:width")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--eps", default="0,8/255", help="comma-separated L-inf radii (a/b allowed)")
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs-std", type=int, default=8)
    p.add_argument("--epochs-rob", type=int, default=10)
    p.add_argument("--pgd-steps", type=int, default=5, help="PGD steps in training")
    p.add_argument("--eps-warmup", type=float, default=0.0,
                   help="epochs over which the training eps ramps linearly from 0 (0: none)")
    p.add_argument("--lr", type=float, default=2e-3, help="(max) learning rate")
    p.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default="onecycle",
                   help="onecycle: per batch; cosine: per epoch to 0 (TrainConfig's)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--augment", choices=("none", "cropflip"), default="none")
    p.add_argument("--eval-steps", type=int, default=20, help="PGD steps of the robust eval")
    p.add_argument("--eval-n", type=int, default=1000, help="test images for the robust eval")
    p.add_argument("--inv-iters", default="400", help="comma-separated inversion iterations")
    p.add_argument("--per-class", type=int, default=10, help="inversion targets per class")
    p.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                   help="override a generator constant of trainables.shapes, e.g. MIN_CONTRAST=0.3"
                        " (repeatable; what the probes of docs/shapes_study/ varied)")
    p.add_argument("--jobs", type=int, default=2, help="models trained at a time")
    p.add_argument("--cache", default="/tmp/shapes_study_cache", help="model/inversion cache")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def _apply_overrides(a: argparse.Namespace) -> None:
    """Set the `--set` generator constants (in every worker: spawned processes start afresh)."""
    for item in a.set:
        name, _, value = item.partition("=")
        if name not in _generator():
            raise SystemExit(f"--set {item!r}: unknown generator constant; allowed: "
                             f"{sorted(_generator())}")
        v = json.loads(value)
        setattr(shapes, name, tuple(tuple(x) if isinstance(x, list) else x for x in v)
                if isinstance(v, list) else v)


def _eps(text: str) -> float:
    a, _, b = text.partition("/")
    return float(a) / float(b) if b else float(a)


@lru_cache(maxsize=2)
def _data(n_train: int, n_test: int):
    xtr, ytr = generate_shapes(n_train, TRAIN_SEED)
    xte, yte = generate_shapes(n_test, TEST_SEED)
    return xtr, ytr, xte, yte


def shared_pairs(labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` targets per class and, for each, a seed image of another class (seeded)."""
    rng = np.random.default_rng(PAIR_SEED)
    targets = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), per_class,
                                                 replace=False)) for c in np.unique(labels)])
    seeds = rng.integers(0, len(labels), size=targets.size)
    while (clash := labels[seeds] == labels[targets]).any():
        seeds[clash] = rng.integers(0, len(labels), size=int(clash.sum()))
    return seeds.astype(np.int64), targets.astype(np.int64)


def _schedule(opt, a, epochs: int, steps_per_epoch: int):
    if a.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr,
                                                   total_steps=epochs * steps_per_epoch), "batch"
    if a.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), "epoch"
    return None, None


def train(job: dict, a: argparse.Namespace) -> tuple[torch.nn.Module, list[dict]]:
    """Train one model as `job` says; returns it (eval mode) and per-epoch train metrics."""
    xtr, ytr, xte, yte = _data(a.n_train, a.n_test)
    torch.manual_seed(job["seed"])
    gen = torch.Generator().manual_seed(job["seed"])
    model = build_model(job["arch"], num_classes=len(SHAPE_NAMES), in_channels=3, image_size=32,
                        width=job["width"], mean=shapes.MEAN, std=shapes.STD)
    if a.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True,
                              weight_decay=a.weight_decay)
    eps, epochs = job["eps"], job["epochs"]
    n_batches = len(ytr) // a.batch_size + (len(ytr) % a.batch_size > 1)
    sched, per = _schedule(opt, a, epochs, n_batches)
    history, it = [], 0
    for epoch in range(epochs):
        model.train()
        loss_sum = correct = seen = 0
        for idx in torch.randperm(len(ytr), generator=gen).split(a.batch_size):
            if len(idx) < 2:
                continue
            xb, yb = xtr[idx], ytr[idx]
            if a.augment == "cropflip":
                xb = random_crop_flip(xb, gen)
            it += 1
            e = eps * min(1.0, it / (a.eps_warmup * n_batches)) if a.eps_warmup else eps
            if e > 0:
                xb = pgd(model, xb, yb, norm="linf", eps=e, step_size=2.5 * e / a.pgd_steps,
                         steps=a.pgd_steps, random_start=True, generator=gen)
            loss, hits = train_step(model, opt, xb, yb)
            if per == "batch":
                sched.step()
            loss_sum += loss * len(yb)
            correct += hits
            seen += len(yb)
        if per == "epoch":
            sched.step()
        test_acc = float((_predict(model.eval(), xte)[1] == yte.numpy()).mean())  # cheap: no grad
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "acc": correct / seen,
                        "test_acc": test_acc})
        print(f"  {job['arch']}:{job['width']} eps={eps:.4f} s{job['seed']} epoch {epoch + 1}/"
              f"{epochs} loss {loss_sum / seen:.3f} train {correct / seen:.3f} test {test_acc:.3f}"
              f" cpu {time.process_time():.0f}s", flush=True)
    return model.eval(), history


@torch.no_grad()
def _predict(model, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats = torch.cat([model.features(x) for x in X.split(500)])
    return feats.numpy().astype(np.float64), model.head(feats).argmax(1).numpy()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _generator() -> dict:
    """The generator's settings (part of every cache key: new data, new models)."""
    return {k: getattr(shapes, k) for k in ("MIN_CONTRAST", "BG_LUMA", "COLOUR_NOISE",
                                            "NOISE_SIGMA", "N_BLOBS", "N_STROKES", "RADIUS",
                                            "MEAN", "STD")}


def _train_key(job: dict, a: argparse.Namespace) -> str:
    fields = ("n_train", "pgd_steps", "eps_warmup", "lr", "schedule", "optimizer", "weight_decay",
              "batch_size", "augment")
    return _key(job, {f: getattr(a, f) for f in fields}, _generator())


def run_job(job: dict, a: argparse.Namespace) -> dict:
    """Worker: train (or load), evaluate, invert (or load); per-stage CPU and wall seconds."""
    torch.set_num_threads(1)
    _apply_overrides(a)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    times: dict[str, dict] = {}

    def timed(name, fn, *args, **kwargs):
        c, w = time.process_time(), time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = {"cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - w}
        return out

    _, _, xte, yte = timed("data", _data, a.n_train, a.n_test)
    tkey = _train_key(job, a)
    path = cache / f"model_{tkey}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model = build_model(job["arch"], num_classes=10, in_channels=3, image_size=32,
                            width=job["width"], mean=shapes.MEAN, std=shapes.STD)
        model.load_state_dict(saved["state"])
        model.eval()
        history, times["train"], evals = saved["history"], saved["train_times"], saved["evals"]
    else:
        model, history = timed("train", train, job, a)
        evals = {}
        torch.save({"state": model.state_dict(), "history": history,
                    "train_times": times["train"], "evals": evals}, path)
    ekey = f"{a.eval_steps}_{a.eval_n}_{a.n_test}"
    if ekey not in evals:
        gen = torch.Generator().manual_seed(job["seed"] + 999)
        clean = float((_predict(model, xte)[1] == yte.numpy()).mean())
        rob = timed("eval", lambda: robust_accuracy(
            model, xte[:a.eval_n], yte[:a.eval_n], norm="linf", eps=8 / 255, steps=a.eval_steps,
            restarts=1, generator=gen))
        evals[ekey] = {"clean": clean, "robust": rob, "times": times["eval"]}
        saved = torch.load(path, weights_only=True)
        saved["evals"] = evals
        torch.save(saved, path)
    times["eval"] = evals[ekey]["times"]
    seeds, targets = shared_pairs(yte.numpy(), a.per_class)
    inversions = {}
    for iters in [int(i) for i in a.inv_iters.split(",")]:
        ipath = cache / f"inv_{tkey}_{iters}_{a.per_class}_{a.n_test}.pt"
        if ipath.exists():
            inv = torch.load(ipath, weights_only=True)
        else:
            cfg = InversionConfig(iterations=iters, batch_size=len(targets))
            res = timed(f"invert{iters}", invert, model, xte, seed_idx=seeds, target_idx=targets,
                        config=cfg)
            inv = {"images": res.images, "best_loss": res.best_loss,
                   "times": times[f"invert{iters}"]}
            torch.save(inv, ipath)
        times[f"invert{iters}"] = inv["times"]
        inversions[iters] = inv
    return {"job": job, "state": model.state_dict(), "history": history,
            "clean": evals[ekey]["clean"], "robust": evals[ekey]["robust"],
            "inversions": inversions, "times": times}


GROUPS = (("std->std", False, False), ("rob->rob", True, True),
          ("rob->std", True, False), ("std->rob", False, True))


def _model(r: dict):
    m = build_model(r["job"]["arch"], num_classes=10, in_channels=3, image_size=32,
                    width=r["job"]["width"], mean=shapes.MEAN, std=shapes.STD)
    m.load_state_dict(r["state"])
    return m.eval()


def pair_table(results: list[dict], a: argparse.Namespace, iters: int) -> dict:
    """Per group: mean (min, max) over ordered cross-arch pairs of the four SPEC §11 columns."""
    _, _, xte, yte = _data(a.n_train, a.n_test)
    seeds, targets = shared_pairs(yte.numpy(), a.per_class)
    y_t, y_s = yte.numpy()[targets], yte.numpy()[seeds]
    models = [_model(r) for r in results]
    clean = [_predict(m, xte[torch.from_numpy(targets)])[0] for m in models]
    rows = {}
    for name, rob_a, rob_b in GROUPS:
        vals = {"clean_cka": [], "inv_cka": [], "to_target": [], "to_seed": []}
        for i, ra in enumerate(results):
            for j, rb in enumerate(results):
                if ra["job"]["arch"] == rb["job"]["arch"]:
                    continue
                if (ra["job"]["eps"] > 0) != rob_a or (rb["job"]["eps"] > 0) != rob_b:
                    continue
                inv = ra["inversions"][iters]["images"]
                fa, _ = _predict(models[i], inv)
                fb, pb = _predict(models[j], inv)
                # allow_small_n: the study's 100 targets are fewer than vgg11_bn-w0.25's 128
                # features (biased CKA wants N > D, SPEC §10); kept so its figures reproduce.
                # The demo (sweeps/shapes.yaml) inverts 200 targets instead.
                vals["clean_cka"].append(compare("linear_cka", clean[i], clean[j],
                                                 allow_small_n=True))
                vals["inv_cka"].append(compare("linear_cka", fa, fb, allow_small_n=True))
                vals["to_target"].append(float((pb == y_t).mean()))
                vals["to_seed"].append(float((pb == y_s).mean()))
        rows[name] = {k: (float(np.mean(v)), float(np.min(v)), float(np.max(v))) if v else None
                      for k, v in vals.items()} | {"pairs": len(vals["inv_cka"])}
    per_model = []
    for m, r in zip(models, results):
        _, p = _predict(m, r["inversions"][iters]["images"])
        per_model.append({"self_target": float((p == y_t).mean()),
                          "median_loss": float(np.median(r["inversions"][iters]["best_loss"]))})
    return {"groups": rows, "per_model": per_model}


def _fmt(t) -> str:
    return "   -   " if t is None else f"{t[0]:.2f} [{t[1]:.2f},{t[2]:.2f}]"


def report(results: list[dict], a: argparse.Namespace, wall_total: float) -> dict:
    print(f"\n== models (n_train={a.n_train}, pgd={a.pgd_steps}, sched={a.schedule}, "
          f"aug={a.augment}) ==")
    print(f"{'model':28s} {'clean':>6s} {'rob20':>6s} {'train_cpu':>9s} {'eval_cpu':>8s} "
          + " ".join(f"inv{i}_cpu" for i in a.inv_iters.split(",")))
    for r in results:
        j, t = r["job"], r["times"]
        inv = " ".join(f"{t[f'invert{i}']['cpu_s']:9.0f}" for i in a.inv_iters.split(","))
        print(f"{j['arch']}:{j['width']} eps={j['eps']:.4f} s{j['seed']} e{j['epochs']:<3d}"
              f" {r['clean']:6.3f} {r['robust']:6.3f} {t['train']['cpu_s']:9.0f} "
              f"{t['eval']['cpu_s']:8.0f} {inv}")
    tables = {}
    for iters in [int(i) for i in a.inv_iters.split(",")]:
        tab = pair_table(results, a, iters)
        tables[iters] = tab
        print(f"\n-- inversion {iters} iterations, {a.per_class * 10} targets: mean [min,max] --")
        print(f"{'group':9s} {'pairs':>5s} {'clean CKA':>17s} {'inverted CKA':>17s} "
              f"{'-> target':>17s} {'-> seed':>17s}")
        for name, row in tab["groups"].items():
            print(f"{name:9s} {row['pairs']:5d} {_fmt(row['clean_cka']):>17s} "
                  f"{_fmt(row['inv_cka']):>17s} {_fmt(row['to_target']):>17s} "
                  f"{_fmt(row['to_seed']):>17s}")
        print("self-reproduction / median loss: " + ", ".join(
            f"{r['job']['arch'][:3]}{'R' if r['job']['eps'] else 'S'}{r['job']['seed']}="
            f"{m['self_target']:.2f}/{m['median_loss']:.3f}"
            for r, m in zip(results, tab["per_model"])))
    stages = {}
    for r in results:
        for k, v in r["times"].items():
            stages[k] = stages.get(k, 0.0) + v["cpu_s"]
    print(f"\nCPU-seconds per stage (all models): "
          + ", ".join(f"{k}={v:.0f}" for k, v in stages.items())
          + f"; total {sum(stages.values()):.0f}; wall {wall_total:.0f} s; "
          f"load average {os.getloadavg()[0]:.2f}")
    return {"tables": tables, "stage_cpu_s": stages, "wall_s": wall_total}


def main(argv=None) -> int:
    a = _parse(argv)
    _apply_overrides(a)
    jobs = []
    for eps in sorted((_eps(e) for e in a.eps.split(",")), reverse=True):  # robust (long) first
        for spec in a.archs.split(","):
            arch, _, width = spec.partition(":")
            for seed in (int(s) for s in a.seeds.split(",")):
                jobs.append({"arch": arch, "width": float(width or 1.0), "eps": eps, "seed": seed,
                             "epochs": a.epochs_rob if eps > 0 else a.epochs_std})
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(run_job, jobs, [a] * len(jobs)))
    torch.set_num_threads(1)
    summary = report(results, a, time.perf_counter() - t0)
    if a.out:
        keep = ("job", "history", "clean", "robust", "times")
        out = {"args": vars(a), "generator": _generator(),
               "models": [{k: r[k] for k in keep} for r in results],
               **summary}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
