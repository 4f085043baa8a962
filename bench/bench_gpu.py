"""(g) GPU figures, timing the project's own code: adversarial training and all-pairs measures.

Device-only (not in ``bench.__main__.MODULES``; CI never runs it). Needs torch, numpy, scipy,
scikit-learn and this repository (no Ray, no MLflow, no ripser: RTD is left out)::

    PYTHONPATH=. python3 -m bench.bench_gpu --out results_gpu.json      # ~5 min on an H100
    PYTHONPATH=. python3 -m bench.bench_gpu --device cpu --quick        # smoke test, no GPU

1. Training, with the project's compute rules (``trainables.precision``): one PGD-7 adversarial
   training step (Linf 8/255, ``trainables.attacks.pgd`` + SGD) of CIFAR-style ResNet-18 at batch
   512 on 32x32x3 inputs, images/s in fp32, bf16 autocast, channels_last, both (what
   ``precision: auto`` + ``memory_format: auto`` give on CUDA) and both + ``torch.compile``; then
   ``trainables.train.train_model`` itself for 2 epochs on digits (resnet18), fp32 vs auto.
2. Measures: the library's ``pairwise(name, feats, backend="torch", device="cuda")`` against
   the numpy backend on the host CPU, each torch-backed measure but RTD, values compared; the
   float32 CKA block against one float32 GEMM of the stacked centred features on the GPU; and
   the per-model (prepare) and per-pair (compare_states, the Ray actors' path) costs at the
   model-zoo size (N = 2,000, D = 256) that docs/PERFORMANCE.md scales to M = 1,000 models.

Timing: synchronised wall clock, warm-up first, median of repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from analysis.measures import get_measure, pairwise
from trainables.attacks import pgd
from trainables.config import TrainConfig
from trainables.models import build_model
from trainables.precision import autocast, prepare_model, to_format
from trainables.train import train_model

K, EPS = 7, 8 / 255
KNN = {"k": 10}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], object], dev: torch.device, *, repeat: int, warmup: int = 1) -> float:
    """Median wall seconds of fn() with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ 1. training
VARIANTS = (("fp32", "fp32", "contiguous", "none"), ("bf16 autocast", "bf16", "contiguous", "none"),
            ("fp32 channels_last", "fp32", "channels_last", "none"),
            ("bf16 + channels_last (auto on CUDA)", "bf16", "channels_last", "none"),
            ("bf16 + channels_last + compile", "bf16", "channels_last", "default"))


def training_rows(dev: torch.device, *, batch: int, repeat: int, width: float) -> list[dict]:
    gen = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.rand(batch, 3, 32, 32, device=dev, generator=gen)
    y = torch.randint(0, 10, (batch,), device=dev, generator=gen)
    rows = []
    for label, precision, fmt, mode in VARIANTS:
        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32,
                            width=width).to(dev)
        forward = prepare_model(model, memory_format=fmt, compile_mode=mode)
        x = to_format(x0, fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step(adv: bool) -> None:  # as trainables.train._train_epoch does it
            model.train()
            with autocast(precision, dev):
                xb = pgd(forward, x, y, norm="linf", eps=EPS, step_size=2.5 * EPS / K, steps=K,
                         random_start=True, generator=gen) if adv else x
                loss = F.cross_entropy(forward(xb), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_adv = timed(lambda: step(True), dev, repeat=repeat, warmup=2)
        t_std = timed(lambda: step(False), dev, repeat=2 * repeat, warmup=2)
        rows.append({"what": f"ResNet-18 w{width:g} PGD-{K} training step, batch {batch}, {label}",
                     "step_s": t_adv, "images_per_s": batch / t_adv, "standard_step_s": t_std,
                     "standard_images_per_s": batch / t_std})
        del model, opt, forward
    for r in rows:
        r["speedup_vs_fp32"] = r["images_per_s"] / rows[0]["images_per_s"]
    return rows


def train_model_rows(dev: torch.device, *, epochs: int) -> list[dict]:
    """``train_model`` end to end on digits (1,347 training images) with PGD-7, per precision."""
    rows = []
    for precision in ("fp32", "auto"):
        cfg = TrainConfig(dataset="digits", arch="resnet18", width=1.0, eps=0.1, epochs=epochs,
                          batch_size=256, device=str(dev.type), precision=precision,
                          eval_attack_steps=2, final_eval_steps=2, final_eval_restarts=1)
        res = train_model(cfg)
        epoch_s = statistics.median(h["time/epoch_s"] for h in res.history[1:] or res.history)
        rows.append({"what": f"train_model digits resnet18 PGD-7, precision {precision} -> "
                             f"{res.meta['precision']}, {res.meta['memory_format']}",
                     "epoch_s": epoch_s, "images_per_s": 1347 / epoch_s,
                     "final_clean_acc": res.metrics.get("final/clean_acc")})
    return rows


# ------------------------------------------------------------------ 2. measures
def features(m: int, n: int, d: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 64))
    return [(np.tanh(latent @ rng.normal(size=(64, d)) / 4) + 0.3 * rng.normal(size=(n, d)))
            .astype(np.float32) for _ in range(m)]


def measure_rows(dev: torch.device, quick: bool) -> list[dict]:
    big = ((6, 500, 32), (6, 800, 64)) if quick else ((20, 10_000, 512), (6, 20_000, 512))
    (m, n, d), (mk, nk, dk) = big
    sizes = {"linear_cka": (m, n, d), "linear_cka_debiased": (m, n, d),
             "procrustes_sim": (m, n, d), "procrustes_angular": (m, n, d),
             "second_order_cosine": (m, n, d), "svcca": (m, n, d), "pwcca": (m, n, d),
             "rbf_cka": (m, n // 4, d), "knn_jaccard": (mk, nk, dk), "rank_sim": (mk, nk, dk),
             "joint_rank_jaccard": (mk, nk, dk)}
    rows = []
    for name, (mm, nn, dd) in sizes.items():
        feats = features(mm, nn, dd, seed=1)
        p = KNN if "knn" in name or "rank" in name else {}
        t0 = time.perf_counter()
        ref = pairwise(name, feats, **p)
        t_host = time.perf_counter() - t0
        t_dev = timed(lambda: pairwise(name, feats, backend="torch", device=str(dev), **p), dev,
                      repeat=3)
        got = pairwise(name, feats, backend="torch", device=str(dev), **p)
        rows.append({"what": f"{name} all pairs M={mm} N={nn} D={dd}", "device_s": t_dev,
                     "host_numpy_s": t_host, "speedup": t_host / t_dev,
                     "max_abs_diff_vs_numpy": float(np.abs(got - ref).max()),
                     "note": "end to end incl. host->device copies and prepare"})
    return rows


def cka_limit_row(dev: torch.device, quick: bool) -> dict:
    m, n, d = (6, 500, 32) if quick else (50, 10_000, 512)
    cka = get_measure("linear_cka")
    states = [cka.prepare(f, backend="torch", device=str(dev)) for f in features(m, n, d, 2)]
    H = torch.cat([s["X"] for s in states], 1)
    H2 = H.clone()
    t_gemm = timed(lambda: H.T @ H2, dev, repeat=5)
    t_ours = timed(lambda: cka.pairwise_states(states), dev, repeat=5)
    return {"what": f"linear_cka all pairs from states M={m} N={n} D={d} vs one float32 GEMM",
            "device_s": t_ours, "gemm_s": t_gemm, "ratio": t_gemm / t_ours,
            "note": "target <= 0.8x the GEMM (ratio >= 1.25); CKA may use TF32, the GEMM as set"}


def zoo_cost_rows(dev: torch.device, quick: bool) -> list[dict]:
    """Per-model prepare and per-pair compare costs at N = 2,000, D = 256 (the zoo's size)."""
    m, n, d = (6, 300, 32) if quick else (64, 2000, 256)
    feats = features(m, n, d, seed=3)
    rows = []
    for name in ("linear_cka", "linear_cka_debiased", "procrustes_sim", "knn_jaccard"):
        meas, p = get_measure(name), KNN if name == "knn_jaccard" else {}
        states = [meas.prepare(f, backend="torch", device=str(dev), **p) for f in feats]
        t_prep = timed(lambda: meas.prepare(feats[0], backend="torch", device=str(dev), **p), dev,
                       repeat=5)
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)][:200]
        t_pairs = timed(lambda: [meas.compare_states(states[i], states[j], **p) for i, j in pairs],
                        dev, repeat=3)
        t_block = timed(lambda: meas.pairwise_states(states, **p), dev, repeat=3)
        rows.append({"what": f"{name} N={n} D={d}", "prepare_per_model_s": t_prep,
                     "compare_per_pair_s": t_pairs / len(pairs),
                     "block_per_pair_s": t_block / (m * (m - 1) / 2)})
    return rows


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results_gpu.json")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only smoke-tests the code")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA device (or --device cpu --quick)")
    meta = {"device": _device_name(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(json.dumps(meta), flush=True)
    out: dict = {"meta": meta, "errors": []}
    parts = {"measures": lambda: measure_rows(dev, args.quick),
             "cka_limit": lambda: [cka_limit_row(dev, args.quick)],
             "zoo_costs": lambda: zoo_cost_rows(dev, args.quick)}
    if not args.skip_training:
        parts = {"training": lambda: training_rows(dev, batch=32 if args.quick else 512,
                                                   repeat=2 if args.quick else 10,
                                                   width=0.25 if args.quick else 1.0),
                 "train_model": lambda: train_model_rows(dev, epochs=1 if args.quick else 3),
                 **parts}
    for key, fn in parts.items():  # one part failing keeps the others' figures
        try:
            out[key] = fn()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            out["errors"].append(f"{key}: {type(exc).__name__}: {exc}")
            out[key] = []
        for r in out[key]:
            print(json.dumps(r), flush=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
