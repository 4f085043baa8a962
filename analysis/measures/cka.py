"""Centered kernel alignment: linear (biased and debiased HSIC) and RBF.

CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = k(X), L = k(Y) the N x N Grams
(Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019).

Linear kernels never need the N x N Gram when D <= N: with centred X, <XX^T, YY^T> = ||X^T Y||_F^2
(feature-space form, O(N Da Db) per pair). Wide representations (D > N) keep the N x N Gram as
their state instead (Gram form, O(N^2) per pair). All pairs are computed either with one GEMM per
block row of X_i^T [X_i..X_M] or with one GEMM of the stacked flattened Grams, chosen by cost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import is_torch_state, torch_ops
from ._base import Measure, MeasureInputError, real, register_measure
from ._linalg import GRAM_STACK_BYTES, centred, centred_tensor, gram_stack_inner, sq_distances, upper_blocks
from ._presets import REPRESENTATIONAL, ROTATION_INVARIANT, SIMILARITY

GRAM_PENALTY = 8.0


def u_centre(K: np.ndarray) -> np.ndarray:
    """U-centring of a Gram matrix (Szekely & Rizzo 2014), as in SPEC 3.1a.

    Zero the diagonal; m_j = sum_i K_ij / (N-2); m_j -= sum(m) / (2(N-1)); K_ij -= m_i + m_j;
    zero the diagonal again. <U(K), U(L)> is proportional to the unbiased HSIC of Song et al. 2012.

    Args:
        K: (N, N) symmetric Gram, N >= 4.

    Returns:
        (N, N) float64, new array.
    """
    n = K.shape[0]
    Ku = np.array(K, dtype=np.float64, copy=True)
    np.fill_diagonal(Ku, 0.0)
    m = Ku.sum(axis=0) / (n - 2)
    m -= m.sum() / (2 * (n - 1))
    Ku -= m[:, None]
    Ku -= m[None, :]
    np.fill_diagonal(Ku, 0.0)
    return Ku


def _cka_from_hsic(hab: np.ndarray | float, haa: np.ndarray | float, hbb: np.ndarray | float) -> Any:
    return hab / np.sqrt(haa * hbb)


@dataclass(frozen=True)
class _Ops:
    """The two array-library primitives HSIC needs: a float64 Frobenius inner product and
    U-centring (numpy for numpy states, `_torch` for torch states)."""

    fro: Callable[[Any, Any], float]
    u_centre: Callable[[Any], Any]


_NUMPY_OPS = _Ops(lambda a, b: float(np.einsum("ij,ij->", a, b)), u_centre)


def _ops(state: Mapping[str, Any]) -> _Ops:
    if is_torch_state(state):
        T = torch_ops()
        return _Ops(T.fro_inner, T.u_centre)
    return _NUMPY_OPS


_LINEAR = dict(
    invariances=ROTATION_INVARIANT,
    params={},
    cost="O(N Da Db) per pair (D <= N), O(N^2 D) per model + O(N^2) per pair (Gram form)",
    **REPRESENTATIONAL,
    **SIMILARITY,
)


@register_measure(
    "linear_cka",
    range=(0.0, 1.0),
    reference="Kornblith et al. 2019, Similarity of Neural Network Representations Revisited (ICML)",
    formula="||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)  (biased HSIC, linear kernel)",
    variant="biased",
    **_LINEAR,
)
@register_measure(
    "linear_cka_debiased",
    range=(-1.0, 1.0),
    reference="Song et al. 2012 (unbiased HSIC, JMLR); Nguyen et al. 2021 (ICLR); SPEC 3.1a",
    formula="<U(XX^T), U(YY^T)> / sqrt(<U(XX^T),U(XX^T)> <U(YY^T),U(YY^T)>), U = U-centring (unbiased HSIC)",
    variant="debiased",
    **_LINEAR,
)
class LinearCKA(Measure):
    """Linear CKA with biased (`linear_cka`) or unbiased (`linear_cka_debiased`) HSIC.

    Debiased feature-space identity used here (centred X, d_i = ||x_i||^2, t = sum d):
    n(n-3) HSIC_u = ||X^T Y||_F^2 + t_X t_Y / ((n-1)(n-2)) - n/(n-2) d_X . d_Y,
    which equals <U(XX^T), U(YY^T)>. The debiased value can be slightly negative.
    """

    tf32 = True  # TF32-rounded operands move the values by ~1e-6 (tests/test_measures_backends.py)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.debiased = self.variant == "debiased"
        self.min_n = 4 if self.debiased else 2

    def meaningful_n(self, p: Mapping[str, Any], dims: Sequence[int] = ()) -> tuple[int, str]:
        """Biased CKA needs N > D (SPEC §10: with D >= N it is inflated towards 1 even on
        noise); the debiased estimator only the common floor."""
        if self.debiased or not dims:
            return super().meaningful_n(p, dims)
        need = max(self.small_n_floor, max(dims) + 1)
        return need, f"N > D = {max(dims)} (biased HSIC)"

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        Xc = centred(X, name=self.name)
        n, d = Xc.shape
        if d <= n:
            state: dict[str, Any] = {"form": "feat", "X": Xc}
            if self.debiased:
                rows = np.einsum("ij,ij->i", Xc, Xc)
                state.update(d=rows, t=float(rows.sum()))
        else:
            K = Xc @ Xc.T
            state = {"form": "gram", "K": u_centre(K) if self.debiased else K}
        state["self"] = float(self._hsic(state, state, n))
        if not state["self"] > 0:
            raise MeasureInputError(f"{self.name}: degenerate representation (self-HSIC {state['self']:.3g} <= 0)")
        return state

    def _gram(self, s: Mapping[str, Any]) -> Any:
        if s["form"] == "gram":
            return s["K"]
        K = s["X"] @ s["X"].T
        return _ops(s).u_centre(K) if self.debiased else K

    def _hsic(self, sa: Mapping[str, Any], sb: Mapping[str, Any], n: int) -> float:
        """Unnormalised HSIC (biased: <K, L>; debiased: <U(K), U(L)>), on either backend."""
        fro = _ops(sa).fro
        if sa["form"] == "feat" and sb["form"] == "feat":
            cross = sa["X"].T @ sb["X"]
            h = fro(cross, cross)
            if self.debiased:
                h += sa["t"] * sb["t"] / ((n - 1) * (n - 2)) - n / (n - 2) * float(sa["d"] @ sb["d"])
            return h
        if sa["form"] == "gram" and sb["form"] == "gram":
            return fro(sa["K"], sb["K"])
        gram_s, feat_s = (sa, sb) if sa["form"] == "gram" else (sb, sa)
        if self.debiased:  # U-centring is not a projection of X, so build the other Gram
            return fro(gram_s["K"], self._gram(feat_s))
        X = feat_s["X"]
        return fro(gram_s["K"] @ X, X)  # tr(X^T K X), O(N^2 D)

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return _cka_from_hsic(self._hsic(sa, sb, int(sa["n"])), sa["self"], sb["self"])

    _compare_torch = _compare  # `_hsic` picks the primitives by the states' backend

    def _use_gram(self, states: Sequence[Mapping[str, Any]]) -> bool:
        """All pairs through the stacked Grams (else the feature-space blocks), by flop count."""
        m, n = len(states), int(states[0]["n"])
        if not all(s["form"] == "feat" for s in states):
            return True
        total_d = sum(s["X"].shape[1] for s in states)
        cost_feat = n * total_d**2 / 2
        cost_gram = n * n * total_d + m * m * n * n / 2
        # Gram builds are thin GEMMs (inner dimension D) that run several times below peak
        # flop rate, so the Gram form must win by a wide flop margin (measured, 16 cores).
        return GRAM_PENALTY * cost_gram < cost_feat and m * n * n * 8 <= 2**30

    def _debias_block(self, inner: Any, states: Sequence[Mapping[str, Any]], stack: Callable,
                      others: Sequence[Mapping[str, Any]] | None = None) -> Any:
        """Add the debiased HSIC's correction terms to the (M, M') ||X_i^T Y_j||^2 block of
        ``states`` against ``others`` (default: themselves)."""
        n = int(states[0]["n"])
        d = stack([s["d"] for s in states])  # (M, N) float64
        t = np.array([s["t"] for s in states])
        if others is None:
            return inner + (np.outer(t, t) / ((n - 1) * (n - 2)) - n / (n - 2) * np.asarray(d @ d.T))
        d2 = stack([s["d"] for s in others])
        t2 = np.array([s["t"] for s in others])
        return inner + (np.outer(t, t2) / ((n - 1) * (n - 2)) - n / (n - 2) * np.asarray(d @ d2.T))

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        m = len(states)
        self_h = np.array([s["self"] for s in states])
        use_gram = self._use_gram(states)
        if use_gram:
            inner = gram_stack_inner([self._gram(s) for s in states])
            if inner is None:
                return None
        else:
            inner = np.empty((m, m))
            for i, j, cross in upper_blocks([s["X"] for s in states], strict=True):
                inner[i, j] = inner[j, i] = np.einsum("ij,ij->", cross, cross)
            if self.debiased:
                inner = self._debias_block(inner, states, np.stack)
            np.fill_diagonal(inner, self_h)  # diagonal blocks were computed once, in prepare
        return _cka_from_hsic(inner, self_h[:, None], self_h[None, :])

    # ------------------------------------------------------------------ torch backend
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        T = torch_ops()
        Xc = centred_tensor(X, dev, name=self.name)
        n, d = Xc.shape
        if d <= n:
            state: dict[str, Any] = {"form": "feat", "X": Xc, "backend": "torch"}
            if self.debiased:
                rows = (Xc.to(T.F64) ** 2).sum(1)  # float64 squared row norms
                state.update(d=rows, t=float(rows.sum()))
        else:
            K = Xc @ Xc.T
            state = {"form": "gram", "K": T.u_centre(K) if self.debiased else K, "backend": "torch"}
        state["self"] = float(self._hsic(state, state, n))
        if not state["self"] > 0:
            raise MeasureInputError(f"{self.name}: degenerate representation (self-HSIC {state['self']:.3g} <= 0)")
        return state

    def _block_torch(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        """`_block` on tensors: the upper-half GEMM slabs with the block Frobenius sums taken per
        slab in one reduction (`_torch.upper_sq_sums`), or the stacked Grams in float64."""
        T = torch_ops()
        m, n = len(states), int(states[0]["n"])
        self_h = np.array([s["self"] for s in states])
        if self._use_gram(states):
            if m * n * n * 8 > GRAM_STACK_BYTES:
                return None
            inner = T.to_numpy(T.gram_inner([self._gram(s) for s in states]))
        else:
            inner = T.upper_sq_sums([s["X"] for s in states])
            if self.debiased:
                inner = self._debias_block(inner, states, lambda v: np.stack([T.to_numpy(x) for x in v]))
        # the diagonal as prepare computed it: a feature-form state's float32 Gram would give
        # its self-HSIC again only to float32 precision
        np.fill_diagonal(inner, self_h)
        return _cka_from_hsic(inner, self_h[:, None], self_h[None, :])

    def _cross_torch(self, sa: Sequence[Mapping[str, Any]], sb: Sequence[Mapping[str, Any]],
                     p: dict[str, Any]) -> np.ndarray | None:
        """A tile of pairs (feature-form states): one stacked GEMM per slab of ``sa``."""
        if any(s["form"] != "feat" for s in (*sa, *sb)):
            return None
        T = torch_ops()
        inner = T.cross_sq_sums([s["X"] for s in sa], [s["X"] for s in sb])
        if self.debiased:
            inner = self._debias_block(inner, sa, lambda v: np.stack([T.to_numpy(x) for x in v]), sb)
        ha, hb = np.array([s["self"] for s in sa]), np.array([s["self"] for s in sb])
        return _cka_from_hsic(inner, ha[:, None], hb[None, :])


@register_measure(
    "rbf_cka",
    range=(0.0, 1.0),
    invariances=ROTATION_INVARIANT,
    params={"sigma": real(1.0, lo=0.0, lo_open=True)},
    reference="Kornblith et al. 2019 (ICML), RBF kernel with bandwidth relative to the median distance",
    formula="biased-HSIC CKA of K_ij = exp(-||x_i-x_j||^2 / (2 (sigma * median_dist)^2))",
    cost="O(N^2 D) per model, O(N^2) per pair; state is the N x N centred Gram",
    **REPRESENTATIONAL,
    **SIMILARITY,
)
class RbfCKA(Measure):
    """CKA with Gaussian kernels; bandwidth = sigma x median off-diagonal Euclidean distance."""

    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        Xc = centred(X, name=self.name)
        sq = sq_distances(Xc)
        iu = np.triu_indices(sq.shape[0], k=1)
        median = float(np.sqrt(np.median(sq[iu])))
        if median <= 0:
            raise MeasureInputError(f"{self.name}: median pairwise distance is 0 (most samples identical)")
        bandwidth = p["sigma"] * median
        K = np.exp(-sq / (2.0 * bandwidth**2))
        r = K.mean(axis=0)
        K -= r[:, None]
        K -= r[None, :]
        K += r.mean()  # K <- H K H
        return {"K": K, "self": float(np.einsum("ij,ij->", K, K))}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return _cka_from_hsic(float(np.einsum("ij,ij->", sa["K"], sb["K"])), sa["self"], sb["self"])

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        inner = gram_stack_inner([s["K"] for s in states])
        if inner is None:
            return None
        h = np.array([s["self"] for s in states])
        return _cka_from_hsic(inner, h[:, None], h[None, :])

    # ------------------------------------------------------------------ torch backend
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        T = torch_ops()
        sq = T.sq_distances(centred_tensor(X, dev, name=self.name))  # float32 (N, N)
        median = float(np.sqrt(T.median_upper(sq)))
        if median <= 0:
            raise MeasureInputError(f"{self.name}: median pairwise distance is 0 (most samples identical)")
        K = T.double_centre((sq / (-2.0 * (p["sigma"] * median) ** 2)).exp_())  # H K H
        return {"K": K, "self": T.fro_inner(K, K)}

    def _compare_torch(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        return _cka_from_hsic(torch_ops().fro_inner(sa["K"], sb["K"]), sa["self"], sb["self"])

    def _block_torch(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        n = int(states[0]["n"])
        if len(states) * n * n * 8 > GRAM_STACK_BYTES:
            return None
        T = torch_ops()
        h = np.array([s["self"] for s in states])
        return _cka_from_hsic(T.to_numpy(T.gram_inner([s["K"] for s in states])), h[:, None], h[None, :])
