"""Measure registry and calling contract (the input checks are `_inputs`).

Every similarity / agreement measure is one `Measure` instance in `MEASURES`, keyed by a stable
string name (it ends up in result tables). A measure compares two inputs over the same N samples
in three steps, so that all-pairs work touches each model's data once:

    state = measure.prepare(A, **params)            # per model: picklable dict of numpy arrays
    value = measure.compare_states(sa, sb, **params)
    block = measure.pairwise_block(states, **params)  # (M, M) in one vectorised pass, or None

`compare(name, A, B)` and `pairwise(name, items)` are the convenience entry points. Each takes
`backend="numpy" | "torch" | "auto"` and `device="cpu" | "cuda" | "cuda:N"` (`_backend`): the
torch backend's states hold tensors on that device, and compare / block run there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ._backend import is_torch_state, resolve_backend, torch_ops
from ._inputs import (  # noqa: F401 (Param and its constructors: the measures import them from here)
    LABELS,
    MeasureInputError,
    Param,
    check_input,
    check_labels,
    choice,
    positive_int,
    real,
    to_numpy,
)

Kind = Literal["representational", "functional"]
InputKind = Literal["features", "labels", "probs"]

#: The invariance vocabulary. Each name is a transformation T applied to ONE input
#: (measure(A, T(B)) == measure(A, B), and likewise for A), except `class_relabel`, which applies
#: the same class permutation to both inputs (and to `labels=`).
INVARIANCES = frozenset(
    {
        "orthogonal",  # B -> B @ Q, Q orthogonal (D x D)
        "isotropic_scale",  # B -> c * B, c > 0
        "translation",  # B -> B + v (same v for every row)
        "permutation",  # B -> B[:, perm] (feature order)
        "invertible_linear",  # B -> B @ W, W invertible
        "class_relabel",  # both inputs: class c -> perm[c]
    }
)

class Measure:
    """A registered measure: metadata plus prepare / compare_states / pairwise_block.

    Subclasses implement `_prepare(X, p)`, `_compare(sa, sb, p)` and optionally `_block(states, p)`;
    the public methods validate inputs and parameters around them. `p` is the resolved parameter
    dict (defaults filled in, `labels` validated).

    Two declarations tell the pair engine how to feed a measure: ``labels_from`` names the
    item array that becomes ``labels=`` ("labels", the inputs' own labels, by default;
    "seed_labels" for the inversion's seed classes) and ``input_sets`` the input sets the
    measure means something on (None: every set; the engine plans no pairs on the others).
    """

    #: Smallest N the measure is defined for (debiased HSIC needs 4).
    min_n: int = 2

    #: The torch backend may run this measure's float32 GEMMs on TF32 tensor cores (CUDA only):
    #: set where the values stay within the backend tolerance under TF32 operand rounding
    #: (tests/test_measures_backends.py checks it by emulating that rounding on the CPU).
    tf32: bool = False

    #: Smallest N at which a representational measure means something (SPEC §10); families
    #: with their own rule (k-NN, CCA, biased CKA) raise it in ``meaningful_n``.
    small_n_floor: int = 20

    def __init__(
        self,
        *,
        name: str,
        kind: Kind,
        input: InputKind,
        higher_is_more_similar: bool,
        symmetric: bool,
        self_value: float | None,
        range: tuple[float, float],
        invariances: Sequence[str],
        params: Mapping[str, Param],
        reference: str,
        formula: str,
        cost: str,
        variant: str | None = None,
        labels_from: str = "labels",
        input_sets: Sequence[str] | None = None,
    ) -> None:
        unknown = set(invariances) - INVARIANCES
        if unknown:
            raise ValueError(f"measure {name!r}: unknown invariances {sorted(unknown)}; known: {sorted(INVARIANCES)}")
        self.name = name
        self.kind = kind
        self.input = input
        self.higher_is_more_similar = higher_is_more_similar
        self.symmetric = symmetric
        # None: no fixed self value (a model's inversion transfer to itself is its own rate)
        self.self_value = None if self_value is None else float(self_value)
        self.range = (float(range[0]), float(range[1]))
        self.invariances = frozenset(invariances)
        self.params = dict(params)
        self.reference = reference
        self.formula = formula
        self.cost = cost
        self.variant = variant
        self.labels_from = labels_from
        self.input_sets = None if input_sets is None else tuple(input_sets)

    def __repr__(self) -> str:
        return f"<Measure {self.name} ({self.kind}, {self.input})>"

    @property
    def backends(self) -> tuple[str, ...]:
        """The array libraries that can compute this measure: numpy, and torch where the class
        defines the torch hooks (`_prepare_torch`, `_compare_torch`, optional `_block_torch`)."""
        has_torch = type(self)._prepare_torch is not Measure._prepare_torch
        return ("numpy", "torch") if has_torch else ("numpy",)

    # ------------------------------------------------------------------ validation
    def resolve_params(self, params: Mapping[str, Any], n: int | None = None) -> dict[str, Any]:
        """Fill defaults, reject unknown names and invalid values.

        Args:
            params: caller's keyword parameters.
            n: number of samples, when known (checks `labels` length and kNN-style `k < n`).

        Returns:
            dict with every declared parameter.
        """
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise MeasureInputError(
                f"measure {self.name!r}: unknown parameter(s) {unknown}; allowed: {sorted(self.params) or 'none'}"
            )
        out: dict[str, Any] = {}
        for key, spec in self.params.items():
            value = params.get(key, spec.default)
            if key == "labels":
                if value is None:
                    raise MeasureInputError(f"measure {self.name!r} needs labels=: {spec.allowed}")
                value = check_labels(self.name, value, n)
            elif not spec.check(value):
                raise MeasureInputError(f"measure {self.name!r}: {key}={value!r} is invalid; allowed: {spec.allowed}")
            out[key] = value
        self._check_params(out, n)
        return out

    def _check_params(self, p: dict[str, Any], n: int | None) -> None:
        """Cross-parameter checks that need N (e.g. k < N); subclasses override."""

    def validate(self, A: Any, what: str = "A") -> np.ndarray:
        """Check one input against the declared input kind; returns it as a numpy array (no copy)."""
        return check_input(self.name, self.input, self.min_n, A, what)

    def meaningful_n(self, p: Mapping[str, Any], dims: Sequence[int] = ()) -> tuple[int, str]:
        """The smallest N at which the measure's value means something, and the rule behind it.

        A similarity on a handful of rows is noise (SPEC §10): ``compare`` and ``pairwise``
        refuse fewer rows unless the caller passes ``allow_small_n=True``; the reproduction's
        subgroup experiment marks such subsets "too small". Functional measures are exact
        counts or means over inputs: only ``min_n``.

        Args:
            p: resolved params (``resolve_params``).
            dims: the inputs' feature widths (Da, Db), where known.
        """
        if self.kind == "functional":
            return self.min_n, f"N >= {self.min_n}"
        need = max(self.min_n, self.small_n_floor)
        return need, f"N >= {need}"

    def check_small_n(self, n: int, p: Mapping[str, Any], dims: Sequence[int] = ()) -> None:
        """Raise MeasureInputError when N is below ``meaningful_n``."""
        need, rule = self.meaningful_n(p, dims)
        if n < need:
            raise MeasureInputError(
                f"{self.name}: N={n} samples is below the smallest N it is meaningful at ({rule}); "
                "pass allow_small_n=True to compute it anyway"
            )

    def _state_key(self, p: Mapping[str, Any]) -> str:
        """Fingerprint of (measure, params) stored in every state, so mismatched states are caught."""
        parts = []
        for key in sorted(p):
            value = p[key]
            if isinstance(value, np.ndarray):
                value = hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()[:12]
            parts.append(f"{key}={value!r}")
        return f"{self.name}({','.join(parts)})"

    # ------------------------------------------------------------------ public contract
    def prepare(self, A: Any, *, backend: str = "numpy", device: str | None = None,
                **params: Any) -> dict[str, Any]:
        """Validate one input and compute its per-model state.

        Args:
            A: features (N, D) float, labels (N,) int or probs (N, C) float, per `self.input`.
            backend: `numpy`, `torch` or `auto` (`analysis.measures._backend`).
            device: `cpu` (default), `cuda` or `cuda:N`; CUDA needs the torch backend.
            **params: the measure's parameters (see `self.params`).

        Returns:
            Picklable dict; always holds `n` and `key`. Numpy states hold numpy arrays and
            scalars; torch states (`backend: "torch"`) hold tensors on the device.
        """
        A = self.validate(A)
        p = self.resolve_params(params, A.shape[0])
        chosen = resolve_backend(self, backend, device)
        if chosen.name == "torch":
            dev = torch_ops().device(chosen.device)
            with torch_ops().matmul(dev, tf32=self.tf32):
                state = self._prepare_torch(A, p, dev)
            state["backend"] = "torch"
        else:
            state = self._prepare(A, p)
        state["n"] = int(A.shape[0])
        state["key"] = self._state_key(p)
        return state

    def _check_states(self, states: Sequence[Mapping[str, Any]], p: Mapping[str, Any]) -> None:
        key = self._state_key(p)
        for i, s in enumerate(states):
            if not isinstance(s, Mapping) or "key" not in s or "n" not in s:
                raise MeasureInputError(f"{self.name}: state {i} is not a prepared state (use Measure.prepare)")
            if s["key"] != key:
                raise MeasureInputError(f"{self.name}: state {i} was prepared as {s['key']}, but compared as {key}")
        ns = sorted({int(s["n"]) for s in states})
        if len(ns) > 1:
            raise MeasureInputError(f"{self.name}: inputs have different numbers of samples N: {ns}; rows must align")
        kinds = sorted({str(s.get("backend", "numpy")) for s in states})
        if len(kinds) > 1:
            raise MeasureInputError(f"{self.name}: states were prepared by different backends {kinds}; "
                                    "prepare every input with the same backend")

    def compare_states(self, sa: Mapping[str, Any], sb: Mapping[str, Any], **params: Any) -> float:
        """Value of the measure from two prepared states (same params as at prepare time)."""
        p = self.resolve_params(params, int(sa.get("n", 0)) or None)
        self._check_states([sa, sb], p)
        if not is_torch_state(sa):
            return float(self._compare(sa, sb, p))
        with torch_ops().matmul(sa, tf32=self.tf32):
            return float(self._compare_torch(sa, sb, p))

    def pairwise_block(self, states: Sequence[Mapping[str, Any]], **params: Any) -> np.ndarray | None:
        """All (M, M) values in one vectorised pass, or None where the math gives no shortcut."""
        if not states:
            return np.zeros((0, 0))
        p = self.resolve_params(params, int(states[0].get("n", 0)) or None)
        self._check_states(states, p)
        if is_torch_state(states[0]):
            with torch_ops().matmul(states[0], tf32=self.tf32):
                block = self._block_torch(states, p)
        else:
            block = self._block(states, p)
        return None if block is None else np.asarray(block, dtype=np.float64)

    def cross_block(self, states_a: Sequence[Mapping[str, Any]], states_b: Sequence[Mapping[str, Any]],
                    **params: Any) -> np.ndarray | None:
        """(len(a), len(b)) values measure(a_i, b_j) in one vectorised pass (a tile of the pair
        list on a Ray actor), or None where there is none (numpy states: always None)."""
        if not states_a or not states_b or not is_torch_state(states_a[0]):
            return None
        p = self.resolve_params(params, int(states_a[0].get("n", 0)) or None)
        self._check_states([*states_a, *states_b], p)
        with torch_ops().matmul(states_a[0], tf32=self.tf32):
            block = self._cross_torch(states_a, states_b, p)
        return None if block is None else np.asarray(block, dtype=np.float64)

    def pairwise_states(self, states: Sequence[Mapping[str, Any]], **params: Any) -> np.ndarray:
        """(M, M) matrix from prepared states: the block path if any, else pair by pair.

        Entry (i, j) is measure(items[i], items[j]); both orders are computed for asymmetric
        measures, one for symmetric ones. The diagonal is computed, never assumed.
        """
        block = self.pairwise_block(states, **params)
        if block is not None:
            return block
        m = len(states)
        out = np.empty((m, m))
        for i in range(m):
            for j in range(i if self.symmetric else 0, m):
                out[i, j] = self.compare_states(states[i], states[j], **params)
                if self.symmetric:
                    out[j, i] = out[i, j]
        return out

    def compare(self, A: Any, B: Any, *, backend: str = "numpy", device: str | None = None,
                allow_small_n: bool = False, **params: Any) -> float:
        """measure(A, B) for two inputs over the same N samples (backend, device: `prepare`;
        N below ``meaningful_n`` is refused unless ``allow_small_n``)."""
        A = self.validate(A, "A")
        B = self.validate(B, "B")
        if A.shape[0] != B.shape[0]:
            raise MeasureInputError(
                f"{self.name}: A and B must have the same number of samples (rows); got A {A.shape}, B {B.shape}"
            )
        if not allow_small_n:
            dims = (A.shape[1], B.shape[1]) if self.input == "features" else ()
            self.check_small_n(A.shape[0], self.resolve_params(params, A.shape[0]), dims)
        on = dict(backend=backend, device=device)
        return self.compare_states(self.prepare(A, **on, **params), self.prepare(B, **on, **params), **params)

    # ------------------------------------------------------------------ subclass hooks
    def _prepare(self, X: np.ndarray, p: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _compare(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        raise NotImplementedError

    def _block(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        return None

    # torch backend hooks (see `backends`); `dev` is a torch.device, the states hold tensors
    def _prepare_torch(self, X: np.ndarray, p: dict[str, Any], dev: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _compare_torch(self, sa: Mapping[str, Any], sb: Mapping[str, Any], p: dict[str, Any]) -> float:
        raise NotImplementedError

    def _block_torch(self, states: Sequence[Mapping[str, Any]], p: dict[str, Any]) -> np.ndarray | None:
        return None

    def _cross_torch(self, sa: Sequence[Mapping[str, Any]], sb: Sequence[Mapping[str, Any]],
                     p: dict[str, Any]) -> np.ndarray | None:
        return None


MEASURES: dict[str, Measure] = {}


def register_measure(name: str, **meta: Any) -> Callable[[type[Measure]], type[Measure]]:
    """Class decorator: instantiate `cls(name=name, **meta)` into `MEASURES[name]`.

    The same class may be registered under several names with different metadata (e.g. `variant`);
    a name can be registered only once.
    """

    def deco(cls: type[Measure]) -> type[Measure]:
        if name in MEASURES:
            raise ValueError(f"measure name {name!r} is already registered (by {type(MEASURES[name]).__name__})")
        MEASURES[name] = cls(name=name, **meta)
        return cls

    return deco


def get_measure(name: str) -> Measure:
    """The registered measure called `name`; unknown names list the known ones."""
    try:
        return MEASURES[name]
    except (KeyError, TypeError):
        raise MeasureInputError(f"unknown measure {name!r}; known: {sorted(MEASURES)}") from None


def compare(name: str, A: Any, B: Any, *, backend: str = "numpy", device: str | None = None,
            allow_small_n: bool = False, **params: Any) -> float:
    """Value of measure `name` between A and B (see `Measure.compare`)."""
    return get_measure(name).compare(A, B, backend=backend, device=device,
                                     allow_small_n=allow_small_n, **params)


def pairwise(name: str, items: Sequence[Any], *, backend: str = "numpy", device: str | None = None,
             allow_small_n: bool = False, **params: Any) -> np.ndarray:
    """(M, M) matrix of measure `name` over M inputs; each input is prepared once.

    Args:
        name: registered measure name.
        items: M inputs of the measure's input kind, all with the same N.
        backend: `numpy`, `torch` or `auto`; device: `cpu`, `cuda` or `cuda:N` (`Measure.prepare`).
        allow_small_n: compute even when N is below the measure's ``meaningful_n`` (for the
            widest two inputs).
        **params: measure parameters.

    Returns:
        float64 (M, M); entry (i, j) = compare(name, items[i], items[j], **params).
    """
    measure = get_measure(name)
    items = list(items)
    ns = sorted({int(to_numpy(x).shape[0]) if to_numpy(x).ndim else -1 for x in items})
    if len(ns) > 1:
        raise MeasureInputError(f"{name}: items have different numbers of samples N: {ns}; rows must align")
    states = [measure.prepare(x, backend=backend, device=device, **params) for x in items]
    if states and not allow_small_n:
        dims = sorted(to_numpy(x).shape[1] for x in items)[-2:] if measure.input == "features" else ()
        measure.check_small_n(states[0]["n"], measure.resolve_params(params, states[0]["n"]), dims)
    return measure.pairwise_states(states, **params)


def orient(name: str, value: Any) -> Any:
    """Value turned so that higher = more similar (distances are negated); works on arrays."""
    return value if get_measure(name).higher_is_more_similar else -value
