"""Intervals and three-way verdicts at the right level (SPEC §10).

The unit of replication is the trained model *cell* (architecture, seed), not the pair: every pair
that shares a model is dependent, and every model that shares an architecture is too. A study
quantity is a mean of pair values, taken over *architecture pairs* first (cross-architecture:
a != a'; intra-architecture: the same architecture across seeds), so that each architecture pair
weighs the same whatever its number of seeds; a contrast is a weighted sum of such group means
over conditions (robust minus standard, inverted minus clean, ...) computed on the same cells.

Interval methods, chosen by what the grid can support (the method's name travels with every
interval):

- ``loao-jackknife``: A >= 3 architectures (cross) or A >= 2 (intra). Leave one architecture out
  (all its models, in every condition at once, so a paired contrast stays paired), jackknife
  standard error, Student-t quantile on A - 1 degrees of freedom. The estimand is the mean over
  architectures as a population: the grid's architectures are a sample of those a user cares
  about. Measured calibration (tests/test_stats_calibration.py, docs/reproduction.md): about 95%
  coverage at 3-6 architectures x 2 seeds.
- ``cell-jackknife (conditional)``: exactly 2 architectures, cross pairs. Leave one (architecture,
  seed) cell out, t on A (S - 1) degrees of freedom (the seed replicates). The estimand is then
  the mean *for these two architectures* (fixed effects): it says nothing about other
  architectures, and the interval says so in its method name.
- none: fewer units than that (one architecture, one seed per architecture with A = 2, a
  condition without pairs): no interval, and every verdict on it is "inconclusive".

A verdict compares an interval with a declared boundary (``Prediction``): "holds" when the whole
interval lies on the predicted side, "does not hold" when it lies on the other side, and
"inconclusive" when it contains the boundary (or no interval exists).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _st

__all__ = ["HOLDS", "FAILS", "INCONCLUSIVE", "UNTESTABLE", "PARTIAL", "LEVEL", "LOAO", "CELL_JACK",
           "NO_INTERVAL", "Estimate", "PairSet", "Prediction", "estimate", "decide",
           "seed_interval"]

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
UNTESTABLE, PARTIAL = "cannot be tested on this data", "partially tested"
LEVEL = 0.95
LOAO, CELL_JACK = "loao-jackknife", "cell-jackknife (conditional on these architectures)"
NO_INTERVAL = "none"


@dataclass(frozen=True)
class Estimate:
    """A study quantity with its interval and the size of what it rests on.

    Attributes:
        value: the point estimate (None when no pair contributes).
        lo, hi: the ``level`` interval (None when the grid cannot give one; see ``note``).
        n_archs, n_seeds: architectures and seeds per architecture (max) behind it.
        n_pairs: model pairs that contribute, over all conditions.
        method: interval method (``loao-jackknife``, the conditional cell jackknife, or ``none``).
        df: degrees of freedom of the t quantile (None without interval).
        note: why there is no interval, or what the interval is conditional on.
    """

    value: float | None
    lo: float | None
    hi: float | None
    n_archs: int
    n_seeds: int
    n_pairs: int
    method: str
    df: int | None = None
    level: float = LEVEL
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None

    def text(self, fmt: str = "{:+.4f}") -> str:
        """``+0.0065 [95% CI -0.0210, +0.0360] (3 archs x 2 seeds, 45 pairs, loao-jackknife)``."""
        if self.value is None:
            return f"n/a ({self.note or 'no pairs'})"
        ci = (f" [{100 * self.level:.0f}% CI {fmt.format(self.lo)}, {fmt.format(self.hi)}]"
              if self.has_interval else " (no interval)")
        size = (f"{self.n_archs} arch{'s' * (self.n_archs != 1)} x {self.n_seeds} "
                f"seed{'s' * (self.n_seeds != 1)}"
                + (f", {self.n_pairs} pair{'s' * (self.n_pairs != 1)}" if self.n_pairs else "")
                + f", {self.method}")
        return f"{fmt.format(self.value)}{ci} ({size}{'; ' + self.note if self.note else ''})"

    @classmethod
    def from_dict(cls, d: Mapping) -> Estimate:
        """The inverse of ``to_dict``."""
        lo, hi = d["ci"] if d.get("ci") else (None, None)
        return cls(d["value"], lo, hi, n_archs=d["n_archs"], n_seeds=d["n_seeds"],
                   n_pairs=d["n_pairs"], method=d["method"], df=d.get("df"),
                   level=d.get("level", LEVEL), note=d.get("note", ""))

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi] if self.has_interval else None,
                "level": self.level, "n_archs": self.n_archs, "n_seeds": self.n_seeds,
                "n_pairs": self.n_pairs, "method": self.method, "df": self.df,
                "note": self.note}


@dataclass
class PairSet:
    """Pair values of one quantity over conditions, with each endpoint's (architecture, seed).

    Build it with ``add(condition, cell_a, cell_b, value)`` where a cell is ``(arch, seed)``;
    ``symmetric=True`` treats (a, b) and (b, a) as the same architecture pair (values stored
    once per unordered pair); ordered quantities (inverted images: row model's inversions) keep
    (a, b) and (b, a) apart.
    """

    symmetric: bool = True
    rows: list[tuple[Hashable, Hashable, Hashable, float]] = field(default_factory=list)

    def add(self, condition: Hashable, cell_a: tuple, cell_b: tuple, value: float) -> None:
        if cell_a == cell_b:
            raise ValueError(f"a model is never paired with itself (cell {cell_a})")
        if value is not None and math.isfinite(float(value)):
            self.rows.append((condition, tuple(cell_a), tuple(cell_b), float(value)))

    def __len__(self) -> int:
        return len(self.rows)


class _Design:
    """PairSet rows as integer arrays, so every jackknife replicate is a few bincounts."""

    def __init__(self, pairs: PairSet, contrast: Mapping[Hashable, float], kind: str):
        if kind not in ("cross", "intra"):
            raise ValueError(f"kind must be 'cross' or 'intra', got {kind!r}")
        rows = [r for r in pairs.rows if r[0] in contrast
                and ((r[1][0] != r[2][0]) if kind == "cross" else (r[1][0] == r[2][0]))]
        self.conds = list(contrast)
        self.weights = np.array([float(contrast[c]) for c in self.conds])
        cells = sorted({c for r in rows for c in (r[1], r[2])}, key=repr)
        self.cells = cells
        self.archs = sorted({c[0] for c in cells}, key=repr)
        cell_ix = {c: i for i, c in enumerate(cells)}
        arch_ix = {a: i for i, a in enumerate(self.archs)}
        self.cell_arch = np.array([arch_ix[c[0]] for c in cells], dtype=np.int64)
        keys: dict[tuple, int] = {}
        cond_of, key_of, ca, cb, val = [], [], [], [], []
        for cond, a, b, v in rows:
            pa, pb = (a[0], b[0])
            if pairs.symmetric:
                pa, pb = sorted((pa, pb), key=repr)
            k = keys.setdefault((cond, pa, pb), len(keys))
            cond_of.append(self.conds.index(cond))
            key_of.append(k)
            ca.append(cell_ix[a])
            cb.append(cell_ix[b])
            val.append(v)
        self.n_keys = len(keys)
        self.key_cond = np.zeros(self.n_keys, dtype=np.int64)
        for (cond, _, _), k in keys.items():
            self.key_cond[k] = self.conds.index(cond)
        self.key = np.array(key_of, dtype=np.int64)
        self.a, self.b = np.array(ca, dtype=np.int64), np.array(cb, dtype=np.int64)
        self.value = np.array(val, dtype=np.float64)
        seeds: dict[int, set] = {}
        for c in cells:
            seeds.setdefault(arch_ix[c[0]], set()).add(c[1])
        self.n_seeds = max((len(s) for s in seeds.values()), default=0)
        self.seeds_per_arch = {a: len(s) for a, s in seeds.items()}

    def stat(self, keep_cell: np.ndarray) -> float | None:
        """The contrast over the rows whose two cells are kept (None if a condition is empty)."""
        m = keep_cell[self.a] & keep_cell[self.b]
        if not m.any():
            return None
        s = np.bincount(self.key[m], weights=self.value[m], minlength=self.n_keys)
        n = np.bincount(self.key[m], minlength=self.n_keys)
        live = n > 0
        key_mean = np.where(live, s / np.maximum(n, 1), 0.0)
        cs = np.bincount(self.key_cond[live], weights=key_mean[live], minlength=len(self.conds))
        cn = np.bincount(self.key_cond[live], minlength=len(self.conds))
        if (cn == 0).any():
            return None
        return float(self.weights @ (cs / cn))


def _jackknife(design: _Design, groups: np.ndarray, full: float, df: int,
               level: float) -> tuple[float, float] | None:
    reps = []
    for g in np.unique(groups):
        r = design.stat(groups != g)
        if r is None:
            return None
        reps.append(r)
    reps = np.asarray(reps)
    k = reps.size
    se = math.sqrt((k - 1) / k * float(((reps - reps.mean()) ** 2).sum()))
    t = float(_st.t.ppf(0.5 + level / 2, df))
    return full - t * se, full + t * se


def estimate(pairs: PairSet, contrast: Mapping[Hashable, float], *, kind: str = "cross",
             level: float = LEVEL) -> Estimate:
    """A contrast of group means (see module docstring) with its interval.

    Args:
        pairs: the pair values, per condition.
        contrast: condition -> weight, e.g. ``{"eps=0.1": 1, "eps=0": -1}`` (a paired difference
            of the same cells) or ``{"eps=0": 1}`` (one group's mean).
        kind: ``cross`` (pairs of different architectures: the headline) or ``intra`` (the same
            architecture across seeds: the baseline).
        level: interval level (0.95).
    """
    d = _Design(pairs, contrast, kind)
    A, S, n = len(d.archs), d.n_seeds, int(d.value.size)
    keep_all = np.ones(len(d.cells), dtype=bool)
    full = d.stat(keep_all) if n else None
    base = dict(n_archs=A, n_seeds=S, n_pairs=n, level=level)
    if full is None:
        missing = [c for c in d.conds if not np.any(d.key_cond == d.conds.index(c))] or d.conds
        return Estimate(None, None, None, method=NO_INTERVAL,
                        note=f"no {kind}-architecture pairs in {missing}", **base)
    min_archs = 3 if kind == "cross" else 2
    why = (f"{A} architecture(s) x {S} seed(s) cannot give an interval "
           f"(needs >= {min_archs} architectures" + (", or 2 with >= 2 seeds each)" if kind ==
                                                     "cross" else ")"))
    gap = (f"leaving one {'architecture' if A >= min_archs else 'cell'} out leaves a condition "
           f"without {kind}-architecture pairs (too few pairs have values), so the jackknife "
           "cannot run")
    if A >= min_archs:
        ci = _jackknife(d, d.cell_arch, full, A - 1, level)
        if ci is not None:
            return Estimate(full, *ci, method=LOAO, df=A - 1, **base)
        why = gap
    elif kind == "cross" and A == 2:
        df = sum(s - 1 for s in d.seeds_per_arch.values())
        if df >= 1:
            ci = _jackknife(d, np.arange(len(d.cells)), full, df, level)
            if ci is not None:
                return Estimate(full, *ci, method=CELL_JACK, df=df,
                                note="2 architectures: the interval covers these two only", **base)
            why = gap
    return Estimate(full, None, None, method=NO_INTERVAL, note=why, **base)


@dataclass(frozen=True)
class Prediction:
    """What a target predicts, declared before any data is seen.

    ``direction=+1``: the quantity is predicted above ``margin``; ``-1``: below it.
    """

    quantity: str
    direction: int
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {self.direction!r}")

    def text(self) -> str:
        return f"{self.quantity} {'>' if self.direction > 0 else '<'} {self.margin:g}"


def decide(est: Estimate, pred: Prediction) -> str:
    """Three-way verdict of an estimate against a prediction (see module docstring)."""
    if not est.has_interval:
        return INCONCLUSIVE
    lo, hi = est.lo - pred.margin, est.hi - pred.margin
    if (pred.direction > 0 and lo > 0) or (pred.direction < 0 and hi < 0):
        return HOLDS
    if (pred.direction > 0 and hi < 0) or (pred.direction < 0 and lo > 0):
        return FAILS
    return INCONCLUSIVE


def seed_interval(values: Sequence[float], *, level: float = LEVEL) -> Estimate:
    """Mean over seeds of one architecture's per-seed values (e.g. paired accuracy changes),
    with a t interval on S - 1 degrees of freedom (conditional on the architecture)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    base = dict(n_archs=1, n_seeds=int(v.size), n_pairs=0, level=level)
    if v.size == 0:
        return Estimate(None, None, None, method=NO_INTERVAL, note="no values", **base)
    mean = float(v.mean())
    if v.size < 2:
        return Estimate(mean, None, None, method=NO_INTERVAL, note="one seed: no interval", **base)
    half = float(_st.t.ppf(0.5 + level / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Estimate(mean, mean - half, mean + half, method="seed-t", df=int(v.size - 1), **base)
