"""Prediction measures on class probabilities (N, C): Jensen-Shannon divergence and surrogate churn.

Inputs are probabilities (softmax outputs), validated as rows >= 0 summing to 1 within 1e-3;
logits are refused with a message saying so (SPEC 3.3). Natural logarithms throughout.

JSD per sample: JS(p, q) = 1/2 sum p log p + 1/2 sum q log q - sum m log m, m = (p + q) / 2,
so the per-model entropies are computed once (`prepare`) and a pair only needs the logs of its
mixture, the part no algorithm avoids, done in cache-sized row chunks. 0 log 0 = 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._base import Measure, MeasureInputError, real, register_measure
from ._presets import DISTANCE, ON_PROBS, SIMILARITY

LN2 = float(np.log(2.0))
# States hold p + TINY / 2: equal to p for every p > 1e-284 (float64 rounding), and it keeps every
# log argument positive, so 0 log 0 contributes ~1e-298 instead of NaN, with no extra pass per pair.
TINY = 1e-300


# Row chunks of about this many elements keep a pair's add -> log -> dot in cache (one memory pass).
CHUNK_ELEMS = 2**16


def _sum_xlogx(x: np.ndarray, buf: np.ndarray) -> float:
    """sum(x log x) over all entries of x > 0 (C-contiguous (N, C)), chunked through buf."""
    rows = max(1, CHUNK_ELEMS // x.shape[1])
    total = 0.0
    for start in range(0, x.shape[0], rows):  # row chunks, not samples
        chunk = x[start : start + rows]
        logs = np.log(chunk, out=buf[: chunk.shape[0]])
        total += float(np.einsum("i,i->", chunk.ravel(), logs.ravel()))  # no BLAS threads per chunk
    return total


_JS = dict(
    **ON_PROBS,
    params={},
    reference="Lin 1991, Divergence measures based on the Shannon entropy (IEEE TIT); SPEC 3.3",
    cost="O(N C) logs per pair (the mixture); per-model entropies once",
)


@register_measure(
    "jsd",
    range=(0.0, LN2),
    formula="mean_i JS(p_i, q_i), natural log (= scipy jensenshannon(p, q)**2)",
    variant="jsd",
    **DISTANCE,
    **_JS,
)
@register_measure(
    "jsd_sim",
    range=(0.0, 1.0),
    formula="(ln 2 - JSD) / ln 2",
    variant="jsd_sim",
    **SIMILARITY,
    **_JS,
)
class JensenShannon(Measure):
    """Mean per-sample Jensen-Shannon divergence (`jsd`) or its similarity transform (`jsd_sim`)."""

    min_n = 1

    def _prepare(self, P: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        P = np.array(P, dtype=np.float64, copy=True, order="C")
        P += TINY / 2
        buf = np.empty((max(1, CHUNK_ELEMS // P.shape[1]), P.shape[1]))
        return {"p": P, "plogp": _sum_xlogx(P, buf), "total": float(P.sum())}

    def _pair(self, sa: Mapping[str, Any], sb: Mapping[str, Any], buf: np.ndarray, buf2: np.ndarray) -> float:
        """Mean JS over samples: (1/N)[1/2 sum p log p + 1/2 sum q log q - sum m log m].

        With s = p + q = 2m: sum m log m = 1/2 sum s log s - 1/2 ln2 sum s. Per-sample JS >= 0
        holds exactly, so the sums are taken over all entries at once (BLAS dots), chunked.
        """
        pa, pb = sa["p"], sb["p"]
        n = pa.shape[0]
        rows = buf.shape[0]
        s_log_s = 0.0
        for start in range(0, n, rows):  # row chunks, not samples
            s = np.add(pa[start : start + rows], pb[start : start + rows], out=buf[: min(rows, n - start)])
            logs = np.log(s, out=buf2[: s.shape[0]])
            s_log_s += float(np.einsum("i,i->", s.ravel(), logs.ravel()))
        m_log_m = 0.5 * s_log_s - 0.5 * LN2 * (sa["total"] + sb["total"])
        value = min(max((0.5 * (sa["plogp"] + sb["plogp"]) - m_log_m) / n, 0.0), LN2)
        return value if self.variant == "jsd" else (LN2 - value) / LN2

    def _buffers(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        rows = max(1, CHUNK_ELEMS // shape[1])
        return np.empty((rows, shape[1])), np.empty((rows, shape[1]))

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        if sa["p"].shape != sb["p"].shape:
            raise MeasureInputError(f"{self.name}: class counts differ: {sa['p'].shape} vs {sb['p'].shape}")
        return self._pair(sa, sb, *self._buffers(sa["p"].shape))

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray:
        m = len(states)
        shapes = sorted({s["p"].shape for s in states})
        if len(shapes) > 1:
            raise MeasureInputError(f"{self.name}: inputs have different shapes {shapes}; need the same (N, C)")
        buf, buf2 = self._buffers(shapes[0])  # scratch reused by every pair
        out = np.empty((m, m))
        for i in range(m):  # loop over model pairs only
            for j in range(i, m):
                out[i, j] = out[j, i] = self._pair(states[i], states[j], buf, buf2)
        return out


@register_measure(
    "surrogate_churn",
    range=(0.0, float("inf")),
    params={"alpha": real(1.0, lo=0.0, lo_open=True)},
    reference="Bhojanapalli et al. 2021, On the reproducibility and stability of deep learning (Milani Fard et al. 2016); SPEC 3.3",
    formula="(1/(2N)) sum_i || (p_i/max p_i)^alpha - (q_i/max q_i)^alpha ||_1   (<= (C-1)/2)",
    cost="O(N C) per model and per pair",
    **ON_PROBS,
    **DISTANCE,
)
class SurrogateChurn(Measure):
    """Surrogate churn (SPEC 3.3); lower = more similar, at most (C - 1) / 2."""

    min_n = 1

    def _prepare(self, P: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        P = np.asarray(P, dtype=np.float64)
        return {"q": (P / P.max(axis=1, keepdims=True)) ** p["alpha"]}

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        if sa["q"].shape != sb["q"].shape:
            raise MeasureInputError(f"{self.name}: class counts differ: {sa['q'].shape} vs {sb['q'].shape}")
        return float(np.abs(sa["q"] - sb["q"]).sum() / (2 * sa["q"].shape[0]))
