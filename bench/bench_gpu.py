"""(g) GPU figures: adversarial-training throughput and all-pairs measures, GPU vs CPU.

Device-only (not in ``bench.__main__.MODULES``; CI never runs it). Needs torch + numpy and the
repo's ``trainables`` / ``analysis.measures`` modules only (no Ray, no MLflow)::

    PYTHONPATH=. python3 -m bench.bench_gpu --out results_gpu.json

1. PGD-7 adversarial training (Linf 8/255, SGD) of CIFAR-style ResNet-18 (width 1) at batch
   512 on 32x32x3 inputs: images/s in fp32 (PyTorch defaults: cuDNN convolutions may use TF32)
   and with bf16 autocast + channels_last, plus each change alone and the standard step.
2. All-pairs linear CKA and kNN Jaccard. The library (``analysis.measures``) is numpy-only and
   runs on the CPU; the GPU rows use a torch transcription of the same algorithms written here
   (linear CKA: one float64 or float32 GEMM of the stacked centred features, block Frobenius
   sums; kNN: per-model cosine top-k with the self-neighbour masked, pairs compared by sorting
   the concatenated index rows) and are checked against the library's values.

Timing: CUDA events / synchronise, warm-up first, median of repeats.
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

from analysis.measures import pairwise
from trainables.attacks import pgd
from trainables.models import build_model

K, EPS = 7, 8 / 255
DEV = torch.device("cuda")  # `--device cpu` only checks the torch transcriptions' values


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def _sync_time(fn: Callable[[], object], *, repeat: int, warmup: int = 2) -> float:
    """Median wall seconds of fn() with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ 1. adversarial training
def training_rows(batch: int = 512, repeat: int = 10) -> list[dict]:
    dev = DEV
    gen = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.rand(batch, 3, 32, 32, device=dev, generator=gen)
    y = torch.randint(0, 10, (batch,), device=dev, generator=gen)
    rows = []
    for name, bf16, cl in (("fp32", False, False), ("bf16 autocast", True, False),
                           ("fp32 channels_last", False, True),
                           ("bf16 autocast + channels_last", True, True)):
        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32).to(dev)
        x = x0
        if cl:
            model = model.to(memory_format=torch.channels_last)
            x = x0.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        cast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else \
            (lambda: torch.autocast("cuda", enabled=False))

        def std_step(xb: torch.Tensor) -> None:
            model.train()
            with cast():
                loss = F.cross_entropy(model(xb), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def adv_step() -> None:
            with cast():
                xa = pgd(model, x, y, norm="linf", eps=EPS, step_size=2.5 * EPS / K, steps=K,
                         random_start=True, generator=gen)
            std_step(xa)

        t_adv = _sync_time(adv_step, repeat=repeat)
        t_std = _sync_time(lambda: std_step(x), repeat=repeat * 2)
        rows.append({"what": f"ResNet-18 PGD-{K} adversarial training, batch {batch}, {name}",
                     "step_s": t_adv, "images_per_s": batch / t_adv,
                     "standard_step_s": t_std, "standard_images_per_s": batch / t_std})
        del model, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup_vs_fp32"] = r["images_per_s"] / base
    return rows


# ------------------------------------------------------------------ 2. measures
def _feats(m: int, n: int, d: int, seed: int, noise: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)).astype(np.float32)
    return [base @ rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
            + noise * rng.normal(size=(n, d)).astype(np.float32) for _ in range(m)]


def cka_torch(feats: list[np.ndarray], dtype: torch.dtype) -> np.ndarray:
    """All-pairs biased linear CKA: one GEMM of the stacked centred features (upper half used)."""
    H = torch.cat([torch.from_numpy(f).to(DEV) for f in feats], 1).to(dtype)  # (N, M D)
    H -= H.mean(0, keepdim=True)
    G = H.T @ H  # (M D, M D)
    m, d = len(feats), feats[0].shape[1]
    inner = (G.view(m, d, m, d).double() ** 2).sum((1, 3))  # (M, M) ||X_i^T X_j||_F^2
    diag = inner.diagonal()
    return (inner / torch.sqrt(diag[:, None] * diag[None, :])).cpu().numpy()


def knn_torch(feats: list[np.ndarray], k: int) -> np.ndarray:
    """All-pairs kNN Jaccard (cosine, centred, self excluded) on the GPU, float32 ranking."""
    idx = []
    for f in feats:
        X = torch.from_numpy(f).to(DEV)
        X = X - X.mean(0, keepdim=True)
        X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-30)
        S = X @ X.T  # (N, N) float32
        S.fill_diagonal_(-float("inf"))
        idx.append(S.topk(k, dim=1).indices)  # (N, k)
    m, n = len(feats), feats[0].shape[0]
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            both = torch.cat([idx[i], idx[j]], 1).sort(dim=1).values  # (N, 2k)
            inter = (both[:, 1:] == both[:, :-1]).sum(1).double()  # shared neighbours per row
            out[i, j] = out[j, i] = float((inter / (2 * k - inter)).mean())
    return out


def measure_rows(small: bool = False) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 products for the checks
    rows = []
    sizes = ((6, 800, 64),) if small else ((10, 5000, 512), (50, 10000, 512))
    for m, n, d in sizes:
        feats = _feats(m, n, d, seed=1)
        t_cpu, ref = _wall(lambda: pairwise("linear_cka", feats), repeat=2)
        for dt in (torch.float64, torch.float32):
            t_gpu = _sync_time(lambda: cka_torch(feats, dt), repeat=5)
            err = float(np.abs(cka_torch(feats, dt) - ref).max())
            rows.append({"what": f"linear_cka all pairs M={m} N={n} D={d}, torch {dt}",
                         "gpu_s": t_gpu, "cpu_library_s": t_cpu, "speedup": t_cpu / t_gpu,
                         "max_abs_diff_vs_library": err, "note": "GPU time includes host->device copy"})
    sizes = ((4, 800, 64, 10),) if small else ((6, 5000, 512, 10), (6, 20000, 512, 10))
    for m, n, d, k in sizes:
        feats = _feats(m, n, d, seed=2, noise=0.7)
        t_cpu, ref = _wall(lambda: pairwise("knn_jaccard", feats, k=k), repeat=1)
        t_gpu = _sync_time(lambda: knn_torch(feats, k), repeat=5)
        err = float(np.abs(knn_torch(feats, k) - ref).max())
        rows.append({"what": f"knn_jaccard all pairs M={m} N={n} D={d} k={k}, torch float32",
                     "gpu_s": t_gpu, "cpu_library_s": t_cpu, "speedup": t_cpu / t_gpu,
                     "max_abs_diff_vs_library": err,
                     "note": "diff from near-ties ranked differently by GPU vs CPU float32 rounding"})
    return rows


def _wall(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """(median wall seconds, last result) of fn() on the host."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results_gpu.json")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only checks values, small sizes")
    args = parser.parse_args()
    global DEV
    DEV = torch.device(args.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA device")
    meta = {"device": torch.cuda.get_device_name(0) if DEV.type == "cuda" else platform.processor(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(json.dumps(meta), flush=True)
    out = {"meta": meta, "training": [], "measures": [], "errors": []}
    if not args.skip_training:
        try:
            out["training"] = training_rows()
        except Exception as exc:  # noqa: BLE001 - keep the measures' figures
            traceback.print_exc()
            out["errors"].append(f"training: {type(exc).__name__}: {exc}")
        for r in out["training"]:
            print(f"{r['what']}: {r['images_per_s']:.0f} img/s (step {r['step_s'] * 1e3:.1f} ms, "
                  f"x{r['speedup_vs_fp32']:.2f} vs fp32); standard {r['standard_images_per_s']:.0f} img/s",
                  flush=True)
    try:
        out["measures"] = measure_rows(small=DEV.type == "cpu")
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        out["errors"].append(f"measures: {type(exc).__name__}: {exc}")
    for r in out["measures"]:
        print(f"{r['what']}: GPU {r['gpu_s'] * 1e3:.1f} ms vs CPU library {r['cpu_library_s'] * 1e3:.0f} ms "
              f"(x{r['speedup']:.1f}), max |diff| {r['max_abs_diff_vs_library']:.2e}", flush=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
