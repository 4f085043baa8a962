"""The all-pairs GEMM tiling over stacked features, for numpy arrays and torch tensors alike.

All pairs (i <= j) of X_i^T X_j are the upper half of one GEMM of the stacked features with
themselves. ``upper_slabs`` computes that half in a few large GEMMs: models are split
recursively into halves L | R; the L x R cross blocks come from one GEMM of the stacked L
features with the stacked R features (in row slabs of at most ``cross_bytes`` of output), then
L and R recurse. Only slicing, ``.T`` and ``@`` are used, so one implementation serves both
array libraries (STYLE rule 12). No project imports: the torch backend imports this too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["CROSS_BYTES", "upper_slabs", "stack_t"]

#: Working-memory budget (bytes) of one cross slab.
CROSS_BYTES = 512 * 2**20


def _itemsize(x: Any) -> int:
    return x.element_size() if hasattr(x, "element_size") else x.dtype.itemsize


def stack_t(mats: Sequence[Any]) -> Any:
    """(sum D, N) C-contiguous: the transposed features of all models, one under the other, so
    the rows of any contiguous range of models are one contiguous slab."""
    if hasattr(mats[0], "detach"):  # torch tensors (without importing torch here)
        import torch  # already loaded: the inputs are tensors

        return torch.cat([m.T for m in mats], 0)
    return np.concatenate([m.T for m in mats], axis=0)


def upper_slabs(mats: Sequence[Any], *, strict: bool = False,
                cross_bytes: int = CROSS_BYTES) -> Iterator[tuple[int, int, int, int, Any]]:
    """Yield ``(a0, a1, b0, b1, C)``: C = [X_a0 .. X_a1-1]^T [X_b0 .. X_b1-1] (stacked).

    Every pair i < j lies in exactly one slab (a0 <= i < a1 <= b0 <= j < b1); unless
    ``strict``, every i == i pair comes as its own slab (a0 = b0 = i, a1 = b1 = i + 1).

    Args:
        mats: M arrays (N, D_m) with the same N and dtype (numpy or torch, not mixed).
        strict: skip the diagonal blocks (callers that hold them from ``prepare``).
        cross_bytes: bound on one slab's output.

    Yields:
        slab bounds and C of shape (sum D over [a0, a1), sum D over [b0, b1)).
    """
    if not mats:
        return
    widths = [m.shape[1] for m in mats]
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    stacked = stack_t(mats)
    itemsize = _itemsize(mats[0])

    def rec(lo: int, hi: int) -> Iterator[tuple[int, int, int, int, Any]]:
        if hi - lo == 1:
            if not strict:
                yield lo, hi, lo, hi, mats[lo].T @ mats[lo]
            return
        mid = (lo + hi) // 2
        right = stacked[offsets[mid]: offsets[hi]]  # (sum D_R, N)
        width = right.shape[0]
        i = lo
        while i < mid:  # slabs of left models so the cross output stays within cross_bytes
            j, rows = i + 1, widths[i]
            while j < mid and (rows + widths[j]) * width * itemsize <= cross_bytes:
                rows += widths[j]
                j += 1
            yield i, j, mid, hi, stacked[offsets[i]: offsets[j]] @ right.T
            i = j
        yield from rec(lo, mid)
        yield from rec(mid, hi)

    yield from rec(0, len(mats))
