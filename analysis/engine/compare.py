"""What both pair engines do per item and per pair: pick a measure's input from a model's
artifacts, prepare its state, compare two states, and turn the outcome into a result row.

Failures never raise here: a failed prepare is a state ``{"__error__": msg}``, a failed compare
an error message, and either becomes a row with ``status="error"`` (STYLE rule 15). The one
exception is a cached artifacts file that cannot be read: that is no property of the pair but of
the cache, so ``load_item`` stops the run with a ``DataError`` naming the file.

Both engines take ``backend`` / ``device`` (``analysis.measures._backend``) and resolve them per
measure with ``engine_backend``: a measure without a torch implementation runs on numpy.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.engine.plan import PairTask
from analysis.engine.spec import MeasureSpec
from analysis.measures import Backend, Measure, MeasureInputError, get_measure, resolve_backend
from trainables.errors import DataError

__all__ = ["EngineStats", "Rows", "Sink", "Progress", "Items", "Extras", "measure_arrays",
           "load_item", "prepare_state", "compare_pair", "has_block", "result_row", "error_text",
           "emit_rows", "engine_backend"]

Rows = list[dict[str, Any]]
Sink = Callable[[Rows], None]
Progress = Callable[[int, int], None]
Items = Mapping[str, Mapping[str, np.ndarray] | str | os.PathLike]
#: inputs hash -> arrays describing those inputs, shared by every item on them (``seed_labels``)
Extras = Mapping[str, Mapping[str, np.ndarray]]


@dataclass
class EngineStats:
    """What an engine run did: pairs and error rows, seconds per stage and per measure, and
    (Ray engine) actor restarts and re-queued tiles."""

    pairs: int = 0
    errors: int = 0
    prepare_s: float = 0.0
    compare_s: float = 0.0
    per_measure_s: dict[str, float] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)  # spec -> "numpy" / "torch:cuda"
    restarts: int = 0
    requeued_tiles: int = 0


def measure_arrays(name: str, arrays: Mapping[str, np.ndarray],
                   extras: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """The input a measure takes (features / predicted labels / probs) and its label param.

    Args:
        name: registered measure.
        arrays: one item's artifacts (``features``, ``preds``, ``probs``, ``labels``, ...).
        extras: arrays describing the item's inputs, shared by every model on them (the
            inverted set's ``seed_labels``); the item's own arrays win on a name clash.

    Raises:
        MeasureInputError: the measure's ``labels_from`` array is in neither.
    """
    m = get_measure(name)
    which = {"features": "features", "labels": "preds", "probs": "probs"}[m.input]
    if "labels" not in m.params:
        return arrays[which], {}
    found = {**(extras or {}), **arrays}
    if m.labels_from not in found:
        raise MeasureInputError(
            f"measure {name!r} takes labels= from the array {m.labels_from!r}, which these "
            f"inputs do not carry (they have {sorted(found)}); it runs on input sets "
            f"{list(m.input_sets or ['any'])}")
    return arrays[which], {"labels": found[m.labels_from]}


def load_item(source: Mapping[str, np.ndarray] | str | os.PathLike) -> Mapping[str, np.ndarray]:
    """An item's arrays: given as a mapping, or read from its cached ``.npz`` (no pickle)."""
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read cached model artifacts ({type(exc).__name__}: "
                        f"{exc}); allowed: an .npz the analysis wrote (delete this one and run "
                        f"the analysis again to recompute it)") from exc


def result_row(t: PairTask, spec: MeasureSpec, value: float | None, error: str,
               elapsed: float) -> dict[str, Any]:
    """The result row of one pair (``analysis.engine.store.COLUMNS``); a non-finite value is an
    error row, never a silent NaN."""
    ok = error == "" and value is not None and math.isfinite(value)
    if error == "" and not ok:
        error = f"measure returned a non-finite value ({value!r})"
    return {"model_a": t.model_a, "model_b": t.model_b, "input_set": t.input_set,
            "measure": spec.name, "params": spec.canonical, "value": value if ok else math.nan,
            "status": "ok" if ok else "error", "error": error, "params_hash": spec.hash,
            "inputs_hash": t.inputs_hash, "dataset": t.dataset, "elapsed_s": float(elapsed)}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def engine_backend(name: str, backend: str = "numpy", device: str | None = None) -> Backend:
    """The backend an engine runs measure ``name`` on (torch asked for a measure without a torch
    implementation: numpy). Raises ConfigError for an unknown backend or device."""
    return resolve_backend(get_measure(name), backend, device, fallback=True)


def prepare_state(name: str, params: dict, X: np.ndarray, extra: dict,
                  backend: Backend = Backend("numpy")) -> dict:
    """Measure.prepare on ``backend``, with a failure returned as ``{"__error__": msg}`` (never
    raised)."""
    try:
        return get_measure(name).prepare(np.asarray(X), backend=backend.name,
                                         device=backend.device, **params, **extra)
    except Exception as exc:  # noqa: BLE001 - becomes error rows of every pair of this item
        return {"__error__": error_text(exc)}


def compare_pair(name: str, params: dict, sa: dict, sb: dict, extra: dict,
                 who: tuple[str, str]) -> tuple[float | None, str]:
    """compare_states, with a failure (or a failed prepare) returned as an error message."""
    for s, model in ((sa, who[0]), (sb, who[1])):
        if "__error__" in s:
            return None, f"prepare failed for {model}: {s['__error__']}"
    try:
        return get_measure(name).compare_states(sa, sb, **params, **extra), ""
    except Exception as exc:  # noqa: BLE001 - recorded as an error row
        return None, error_text(exc)


def has_block(name: str, backend: Backend = Backend("numpy")) -> bool:
    """Whether the measure has a vectorised ``pairwise_block`` on ``backend`` (its class
    overrides ``_block``, or ``_block_torch`` for the torch backend)."""
    hook = "_block_torch" if backend.name == "torch" else "_block"
    return getattr(type(get_measure(name)), hook) is not getattr(Measure, hook)


def emit_rows(stats: EngineStats, rows: Rows, sink: Sink, progress: Progress | None, done: int,
              total: int) -> None:
    """Count ``rows`` into ``stats``, hand them to ``sink`` and report ``done`` of ``total``."""
    stats.pairs += len(rows)
    stats.errors += sum(r["status"] == "error" for r in rows)
    sink(rows)
    if progress:
        progress(done, total)
