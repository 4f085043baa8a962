"""Shared linear-algebra helpers for representational measures (float64, vectorised).

Everything here works on (N, D) float arrays with samples in rows. Helpers never loop over samples;
the only loops are over models (blocks of an all-pairs computation) or over row chunks that keep
an N x N computation within a memory budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._backend import torch_ops
from ._inputs import MeasureInputError
from ._blocks import CROSS_BYTES, upper_slabs

#: Working-memory budget (bytes) for one chunk of an N x N computation or one stacked Gram block.
CHUNK_BYTES = 64 * 2**20
GRAM_STACK_BYTES = 1 * 2**30


def centred(X: np.ndarray, *, name: str, center: bool = True) -> np.ndarray:
    """float64 copy of X with column means removed (or not); refuses an all-constant input.

    Args:
        X: (N, D) float features.
        name: measure name for the error message.
        center: subtract column means.

    Returns:
        (N, D) float64, a new array.
    """
    if center:  # two passes (mean, cast-and-subtract) instead of copy, mean, subtract
        Xc = np.subtract(X, X.mean(axis=0, keepdims=True, dtype=np.float64), dtype=np.float64)
    else:
        Xc = np.array(X, dtype=np.float64, copy=True)
    if not np.any(Xc):
        raise MeasureInputError(f"{name}: the representation is constant across samples (zero after centring)")
    return Xc


def centred_tensor(X: np.ndarray, dev: Any, *, name: str, center: bool = True,
                   dtype: Any = None) -> Any:
    """The torch backend's `centred`: a tensor on ``dev`` (float32 unless ``dtype``), centred
    in float64; refuses an all-constant input like `centred`."""
    T = torch_ops()
    Xc = T.centred(T.tensor(X, dev), center=center, dtype=dtype or T.WORK)
    if not bool(Xc.any()):
        raise MeasureInputError(f"{name}: the representation is constant across samples (zero after centring)")
    return Xc


def thin(X: np.ndarray) -> np.ndarray:
    """An (N, r) matrix Z with Z Z^T == X X^T, r = min(N, D): X itself when D <= N, else U S.

    Every orthogonally invariant measure that depends on X only through X X^T can use Z instead
    of X; this is the "N x N form" for wide representations (D > N). Uses an SVD, not an
    eigendecomposition of X X^T, so small singular values keep their accuracy.
    """
    n, d = X.shape
    if d <= n:
        return X
    U, S, _ = np.linalg.svd(X, full_matrices=False)  # U (N, N), S (N,)
    return U * S


def row_normalised(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine to anything is 0)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def upper_blocks(mats: Sequence[np.ndarray], *, strict: bool = False) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (i, j, X_i^T X_j) for all i <= j (i < j when strict), in a few large GEMMs.

    The GEMMs are those of `_blocks.upper_slabs` (the upper half of the GEMM of the hstacked
    features with itself, in large pieces); strict skips the diagonal blocks (callers that
    already hold them from `prepare`).

    Args:
        mats: M arrays (N, D_m) float64 with the same N.
        strict: skip j == i.

    Yields:
        (i, j, C) with C of shape (D_i, D_j).
    """
    offsets = np.concatenate([[0], np.cumsum([m.shape[1] for m in mats])]).astype(int)
    for a0, a1, b0, b1, cross in upper_slabs(mats, strict=strict, cross_bytes=CROSS_BYTES):
        for a in range(a0, a1):
            for b in range(b0, b1):
                yield a, b, cross[offsets[a] - offsets[a0]: offsets[a + 1] - offsets[a0],
                                  offsets[b] - offsets[b0]: offsets[b + 1] - offsets[b0]]


def gram_stack_inner(grams: Sequence[np.ndarray]) -> np.ndarray | None:
    """(M, M) Frobenius inner products <G_i, G_j> via one GEMM of the flattened Grams.

    Returns None when the stack would exceed GRAM_STACK_BYTES (callers then go pair by pair).
    """
    m = len(grams)
    n = grams[0].shape[0]
    if m * n * n * 8 > GRAM_STACK_BYTES:
        return None
    flat = np.empty((m, n * n))
    for i, g in enumerate(grams):
        flat[i] = g.ravel()
    return flat @ flat.T


def sq_distances(X: np.ndarray) -> np.ndarray:
    """(N, N) squared Euclidean distances from the Gram, clipped at 0, exact zeros on the diagonal."""
    sq = np.einsum("ij,ij->i", X, X)
    D = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D
