"""Tensor primitives of the torch backend (float32 compute, float64 reductions), on any device.

Imported only through ``analysis.measures._backend.torch_ops`` (this module imports torch). The
measures' ``_prepare_torch`` / ``_compare_torch`` / ``_block_torch`` are written with these
helpers; each mirrors a numpy helper of ``analysis.measures._linalg`` or ``.knn``, and the tests
hold the two backends to the same values (tests/test_measures_backends.py).

Precision: features are centred in float64 and stored float32 (``WORK``); GEMMs run in float32
(on CUDA with TF32 only where a measure says it tolerates it, ``matmul``); every sum over samples
or over a Gram (HSIC terms, Frobenius norms) accumulates in float64; SVDs whose singular values
are the result (Procrustes, CCA) or decide a rank run in float64 on the small matrices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from trainables.device import pick_device

from ._blocks import upper_slabs

__all__ = ["WORK", "F64", "device", "tensor", "to_numpy", "centred", "row_normalised", "thin",
           "sq_distances", "fro_inner", "block_sq_sums", "gram_inner", "svdvals64", "matmul",
           "knn_indices", "overlap_batches", "neighbour_overlap", "to_portable", "to_device", "u_centre",
           "double_centre", "median_upper", "upper_sq_sums", "upper_nuclear",
           "same", "svd64", "quantile", "cross_slabs", "cross_sq_sums", "cross_nuclear"]

WORK = torch.float32
F64 = torch.float64
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 1 * 2**30}  # one chunk of an N x N computation
GRAM_CHUNK = 2**22  # columns of the flattened Grams per float64 GEMM in `gram_inner`


def device(name: str) -> torch.device:
    """The torch device for ``cpu`` / ``cuda`` / ``cuda:N`` (a missing GPU is a ConfigError)."""
    return pick_device(name)


def tensor(X: Any, dev: str | torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor copy of numpy ``X`` on ``dev`` (its own dtype unless ``dtype`` is given). Copies,
    so read-only arrays from Ray's object store are fine."""
    t = torch.as_tensor(np.array(X, copy=True) if isinstance(X, np.ndarray) else X)
    return t.to(device(str(dev)) if isinstance(dev, str) else dev, dtype or t.dtype)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@contextlib.contextmanager
def matmul(where: Any, *, tf32: bool) -> Iterator[None]:
    """float32 GEMMs with TF32 tensor cores allowed (``tf32``) or not, while in the block, on
    the device of ``where`` (a torch.device, a tensor, or a state holding tensors). Only CUDA has
    TF32; the previous setting is restored."""
    if isinstance(where, Mapping):
        where = next((v for v in where.values() if isinstance(v, torch.Tensor)), None)
    dev = where.device if isinstance(where, torch.Tensor) else where
    if not isinstance(dev, torch.device) or dev.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def centred(X: torch.Tensor, *, center: bool = True, dtype: torch.dtype = WORK) -> torch.Tensor:
    """``X`` minus its column means (taken and subtracted in float64), as ``dtype``."""
    X64 = X.to(F64)
    if center:
        X64 = X64 - X64.mean(0, keepdim=True)
    return X64.to(dtype)


def row_normalised(X: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    return X / torch.where(norms > 0, norms, torch.ones_like(norms))


def thin(X: torch.Tensor) -> torch.Tensor:
    """(N, min(N, D)) Z with Z Z^T == X X^T: X when D <= N, else U S (float64 SVD)."""
    n, d = X.shape
    if d <= n:
        return X
    U, S, _ = torch.linalg.svd(X.to(F64), full_matrices=False)
    return (U * S).to(X.dtype)


def sq_distances(X: torch.Tensor) -> torch.Tensor:
    """(N, N) squared Euclidean distances from the Gram, clipped at 0, zero diagonal."""
    sq = (X * X).sum(1)
    D = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    D.clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return D


def fro_inner(A: torch.Tensor, B: torch.Tensor) -> float:
    """sum(A * B), accumulated in float64."""
    return float((A * B).sum(dtype=F64))


def block_sq_sums(cross: torch.Tensor, rows: Sequence[int], cols: Sequence[int]) -> torch.Tensor:
    """(len(rows), len(cols)) float64: the squared Frobenius norm of every block of ``cross``,
    whose row / column blocks have the given widths (the models of a slab)."""
    sq = cross * cross
    if len(set(rows)) == 1 and len(set(cols)) == 1:  # equal widths: one reshape
        return sq.view(len(rows), rows[0], len(cols), cols[0]).sum((1, 3), dtype=F64)
    # unequal widths: block sums from prefix sums along each axis
    def seg(x: torch.Tensor, widths: Sequence[int], dim: int) -> torch.Tensor:
        cs = torch.cumsum(x, dim=dim, dtype=F64)
        pad = torch.zeros_like(cs.narrow(dim, 0, 1))
        cs = torch.cat([pad, cs], dim=dim)
        ends = torch.as_tensor(np.cumsum([0, *widths]), device=x.device)
        hi = cs.index_select(dim, ends[1:])
        return hi - cs.index_select(dim, ends[:-1])

    return seg(seg(sq, cols, 1), rows, 0)


def gram_inner(grams: Sequence[torch.Tensor]) -> torch.Tensor:
    """(M, M) float64 Frobenius inner products <G_i, G_j> of N x N Grams: float64 GEMMs over
    column chunks of the flattened Grams (a float32 inner product over N^2 terms would lose
    ~sqrt(N^2) ulps)."""
    flat = torch.stack([g.reshape(-1) for g in grams])  # (M, N^2)
    out = torch.zeros(len(grams), len(grams), dtype=F64, device=flat.device)
    for j in range(0, flat.shape[1], GRAM_CHUNK):
        c = flat[:, j: j + GRAM_CHUNK].to(F64)
        out += c @ c.T
    return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def svdvals64(C: torch.Tensor) -> torch.Tensor:
    """Singular values of (a batch of) small matrices, in float64.

    On the CPU one matrix at a time on one thread: for 256 x 256 blocks a 2-thread LAPACK SVD
    took 4-20x longer than a 1-thread one on the (shared) 2-core reference machine, and a
    batched call 1.7x longer than a loop (docs/PERFORMANCE.md); on CUDA one batched call.
    """
    C = C.to(F64)
    if C.device.type != "cpu":
        return torch.linalg.svdvals(C)
    with _one_thread():
        if C.dim() == 2:
            return torch.linalg.svdvals(C)
        return torch.stack([torch.linalg.svdvals(c) for c in C.reshape(-1, *C.shape[-2:])]
                           ).reshape(*C.shape[:-2], -1)


def knn_indices(Xc: torch.Tensor, *, k: int, metric: str, work: torch.dtype) -> torch.Tensor:
    """(N, k) int64 indices of the k nearest other rows of centred ``Xc``, nearest first.

    Mirrors ``analysis.measures.knn.knn_indices`` (which documents the rule): ``Xc`` comes in
    float64, is row-normalised (cosine) or gives the squared norms (euclidean) in float64, and
    is ranked in ``work`` (the input's precision, as numpy ranks). Ties inside the k are ordered
    by index; which of several candidates tied at the k-th place is kept is as arbitrary as
    numpy's ``argpartition`` there.
    """
    n = Xc.shape[0]
    if metric == "cosine":
        Xw, bias = row_normalised(Xc).to(work), None
    else:  # euclidean: argmin_j ||x_j||^2 - 2 x_i.x_j
        Xw, bias = Xc.to(work), (Xc * Xc).sum(1).to(work)
    budget = CHUNK_BYTES["cuda" if Xc.device.type == "cuda" else "cpu"]
    rows = max(1, budget // ((Xw.element_size() + 8) * n))
    out = torch.empty((n, k), dtype=torch.int64, device=Xc.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        cost = Xw[start:stop] @ Xw.T  # (chunk, N), turned into "lower = nearer"
        if bias is None:
            cost.neg_()
        else:
            cost.mul_(-2.0).add_(bias[None, :])
        r = torch.arange(stop - start, device=Xc.device)
        cost[r, r + start] = float("inf")  # not its own neighbour
        top = torch.topk(cost, k, dim=1, largest=False).indices.sort(dim=1).values
        order = torch.sort(cost.gather(1, top), dim=1, stable=True).indices
        out[start:stop] = top.gather(1, order)
    return out


def overlap_batches(idx: Sequence[torch.Tensor], i: int, *,
                    budget: int = 256 * 2**20) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (j0, B): the neighbour lists of models j0 .. j0 + len(B) - 1 (from i on), stacked
    (b, N, k) in batches whose sort work stays within ``budget`` bytes."""
    n, k = idx[0].shape
    per = max(1, budget // (n * 2 * k * 32))  # values + indices of the sort, with temporaries
    for j0 in range(i, len(idx), per):
        yield j0, torch.stack(list(idx[j0: j0 + per]))


def neighbour_overlap(A: torch.Tensor, B: torch.Tensor, *,
                      ranks: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``knn.neighbour_overlap`` for tensors, batched over leading dims of ``B``.

    Args:
        A: (N, k) neighbour indices; B: (..., N, k), broadcast against A.

    Returns:
        (inter, rank_sum): (..., N) shared-neighbour counts and (ranks only) float64 sums of
        2 / ((1 + |r_A - r_B|)(r_A + r_B)) over the shared neighbours.
    """
    k = A.shape[-1]
    cat = torch.cat([A.expand_as(B), B], dim=-1)  # (..., N, 2k)
    if not ranks:
        s = cat.sort(dim=-1).values
        return (s[..., 1:] == s[..., :-1]).sum(-1), None
    s, order = cat.sort(dim=-1, stable=True)  # equal values keep A before B
    match = s[..., 1:] == s[..., :-1]
    r_a = order[..., :-1] + 1
    r_b = order[..., 1:] - k + 1
    denom = ((1 + (r_a - r_b).abs()) * (r_a + r_b)).to(F64)
    contrib = torch.where(match, 2.0 / denom, torch.zeros_like(denom))
    return match.sum(-1), contrib.sum(-1)


def to_portable(state: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The state with its tensors as CPU numpy arrays, their names listed under ``key``."""
    out = {k: (to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    out[key] = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))
    return out


def to_device(state: Mapping[str, Any], dev: str, key: str) -> dict[str, Any]:
    """The state with its tensors (or the arrays a portable state lists under ``key``) on
    ``dev``; a tensor already there is not copied."""
    target = device(dev)
    names = set(state.get(key, ()))
    out = {}
    for k, v in state.items():
        if k == key:
            continue
        if k in names:
            v = tensor(v, target)
        elif isinstance(v, torch.Tensor) and v.device != target:
            v = v.to(target)
        out[k] = v
    return out


def u_centre(K: torch.Tensor) -> torch.Tensor:
    """``cka.u_centre`` for a tensor: computed in float64, returned in K's dtype."""
    n = K.shape[0]
    Ku = K.to(F64).clone()
    Ku.fill_diagonal_(0.0)
    m = Ku.sum(0) / (n - 2)
    m -= m.sum() / (2 * (n - 1))
    Ku -= m[:, None]
    Ku -= m[None, :]
    Ku.fill_diagonal_(0.0)
    return Ku.to(K.dtype)


def double_centre(K: torch.Tensor) -> torch.Tensor:
    """H K H (row and column means removed, in float64), returned in K's dtype."""
    K64 = K.to(F64)
    r = K64.mean(0)
    return (K64 - r[:, None] - r[None, :] + r.mean()).to(K.dtype)


def median_upper(D: torch.Tensor) -> float:
    """``np.median`` of the strict upper triangle of a square matrix (the mean of the two
    middle values when their count is even, as numpy takes it)."""
    n = D.shape[0]
    v = D[torch.ones(n, n, dtype=torch.bool, device=D.device).triu(1)].to(F64)
    m = v.numel()
    lo = torch.kthvalue(v, (m + 1) // 2).values
    if m % 2:
        return float(lo)
    return float((lo + torch.kthvalue(v, m // 2 + 1).values) / 2)


def upper_sq_sums(mats: Sequence[torch.Tensor]) -> np.ndarray:
    """(M, M) float64 ||X_i^T X_j||_F^2 for i != j (zero diagonal), from the upper-half GEMM
    slabs of `_blocks.upper_slabs`, each reduced to its block sums at once."""
    m = len(mats)
    widths = [x.shape[1] for x in mats]
    upper = torch.zeros((m, m), dtype=F64, device=mats[0].device)
    for a0, a1, b0, b1, cross in upper_slabs(mats, strict=True):
        upper[a0:a1, b0:b1] = block_sq_sums(cross, widths[a0:a1], widths[b0:b1])
    return to_numpy(upper + upper.T)


def upper_nuclear(mats: Sequence[torch.Tensor], *, batch: int = 256) -> np.ndarray:
    """(M, M) float64 nuclear norms ||X_i^T X_j||_* for i != j (zero diagonal): float32 GEMM
    slabs of `_blocks.upper_slabs`, their blocks' singular values in float64 SVD batches."""
    m = len(mats)
    widths = [x.shape[1] for x in mats]
    out = np.zeros((m, m))
    for a0, a1, b0, b1, cross in upper_slabs(mats, strict=True):
        rw, cw = widths[a0:a1], widths[b0:b1]
        if len(set(rw)) == 1 and len(set(cw)) == 1:  # equal widths: the blocks as one batch
            blocks = cross.view(len(rw), rw[0], len(cw), cw[0]).permute(0, 2, 1, 3)
            blocks = blocks.reshape(-1, rw[0], cw[0])
            nuc = torch.cat([svdvals64(blocks[i: i + batch]).sum(-1)
                             for i in range(0, len(blocks), batch)])
            out[a0:a1, b0:b1] = to_numpy(nuc).reshape(len(rw), len(cw))
            continue
        ro, co = np.cumsum([0, *rw]), np.cumsum([0, *cw])
        for a in range(len(rw)):
            for b in range(len(cw)):
                out[a0 + a, b0 + b] = float(svdvals64(cross[ro[a]:ro[a + 1], co[b]:co[b + 1]]).sum())
    return out + out.T


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values (same shape)."""
    return a.shape == b.shape and bool(torch.equal(a, b))


def svd64(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, Vh) in float64."""
    return torch.linalg.svd(X.to(F64), full_matrices=False)


def quantile(X: torch.Tensor, q: float) -> float:
    """``np.quantile(X, q)`` (linear interpolation) over all entries."""
    return float(torch.quantile(X.reshape(-1).to(F64), q))


def cross_slabs(mats_a: Sequence[torch.Tensor], mats_b: Sequence[torch.Tensor], *,
                budget: int = 512 * 2**20) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (a0, a1, C): C = [A_a0 .. A_a1-1]^T [B_0 .. B_-1] (stacked), in slabs of models of
    ``mats_a`` whose output stays within ``budget`` bytes: every (a, b) block once."""
    right = torch.cat(list(mats_b), 1)  # (N, sum D_b)
    widths = [x.shape[1] for x in mats_a]
    i = 0
    while i < len(mats_a):
        j, rows = i + 1, widths[i]
        while j < len(mats_a) and (rows + widths[j]) * right.shape[1] * right.element_size() <= budget:
            rows += widths[j]
            j += 1
        yield i, j, torch.cat(list(mats_a[i:j]), 1).T @ right
        i = j


def cross_sq_sums(mats_a: Sequence[torch.Tensor], mats_b: Sequence[torch.Tensor]) -> np.ndarray:
    """(len(a), len(b)) float64 ||A_i^T B_j||_F^2 from `cross_slabs`."""
    out = np.empty((len(mats_a), len(mats_b)))
    wb = [x.shape[1] for x in mats_b]
    for a0, a1, cross in cross_slabs(mats_a, mats_b):
        out[a0:a1] = to_numpy(block_sq_sums(cross, [x.shape[1] for x in mats_a[a0:a1]], wb))
    return out


def cross_nuclear(mats_a: Sequence[torch.Tensor], mats_b: Sequence[torch.Tensor]) -> np.ndarray:
    """(len(a), len(b)) float64 nuclear norms ||A_i^T B_j||_* from `cross_slabs`."""
    out = np.empty((len(mats_a), len(mats_b)))
    cb = np.cumsum([0, *[x.shape[1] for x in mats_b]])
    for a0, a1, cross in cross_slabs(mats_a, mats_b):
        ra = np.cumsum([0, *[x.shape[1] for x in mats_a[a0:a1]]])
        blocks = [cross[ra[a]:ra[a + 1], cb[b]:cb[b + 1]] for a in range(a1 - a0)
                  for b in range(len(mats_b))]
        if len({blk.shape for blk in blocks}) == 1:  # one batch (CUDA: one call)
            nuc = svdvals64(torch.stack(blocks)).sum(-1)
        else:
            nuc = torch.stack([svdvals64(blk).sum() for blk in blocks])
        out[a0:a1] = to_numpy(nuc).reshape(a1 - a0, len(mats_b))
    return out
