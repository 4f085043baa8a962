"""The resumable, tidy result table of all pairwise comparisons (STYLE rule 15).

One parquet file, ``reports/<sweep>/pairs.parquet``, one row per computed comparison:

    model_a, model_b, input_set, measure, params, value, status, error,
    params_hash, inputs_hash, dataset, elapsed_s

keyed by ``(model_a, model_b, input_set, measure, params_hash, inputs_hash)``. Appending skips
rows whose key is already present, so a re-run computes nothing new. A failed comparison is a
row with ``status="error"`` and the message; ``value`` is then NaN *and* says so in ``status``.
Parquet cannot append in place: the file is rewritten atomically (temp file + rename), which is
cheap at this size (50 models x 8 measures x 2 input sets = 40k rows, ~1 MB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainables.errors import DataError

__all__ = [
    "COLUMNS",
    "KEY",
    "ResultStore",
    "canonical_params",
    "params_hash",
]

log = logging.getLogger(__name__)

COLUMNS = (
    "model_a", "model_b", "input_set", "measure", "params", "value", "status", "error",
    "params_hash", "inputs_hash", "dataset", "elapsed_s",
)
KEY = ("model_a", "model_b", "input_set", "measure", "params_hash", "inputs_hash")
_DTYPES = {
    "model_a": "string", "model_b": "string", "input_set": "string", "measure": "string",
    "params": "string", "value": "float64", "status": "string", "error": "string",
    "params_hash": "string", "inputs_hash": "string", "dataset": "string",
    "elapsed_s": "float64",
}
STATUSES = ("ok", "error")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        raise TypeError("arrays are inputs, not measure params; pass them through the input set")
    return value


def canonical_params(params: Mapping[str, Any]) -> str:
    """Measure params as canonical JSON (sorted keys, no spaces): the ``params`` column."""
    return json.dumps(_jsonable(dict(params)), sort_keys=True, separators=(",", ":"))


def params_hash(measure: str, params: Mapping[str, Any]) -> str:
    """16-hex-digit hash of (measure name, canonical params): part of the result key."""
    text = f"{measure}|{canonical_params(params)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in COLUMNS})


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"result rows lack columns {missing}; required: {list(COLUMNS)}")
    bad = sorted(set(frame["status"]) - set(STATUSES))
    if bad:
        raise ValueError(f"status must be one of {STATUSES}, got {bad}")
    ok_nan = frame["status"].eq("ok") & frame["value"].isna()
    if ok_nan.any():
        # a silent NaN is exactly what the table must never hold
        raise ValueError(f"{int(ok_nan.sum())} row(s) have status 'ok' but value NaN")
    return frame.loc[:, list(COLUMNS)].astype(_DTYPES)


class ResultStore:
    """Append-only, key-deduplicated parquet table of pair results.

    Args:
        path: the parquet file (created on first append; parent directories too).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def load(self) -> pd.DataFrame:
        """All rows (an empty frame with the schema if the file does not exist yet).

        Raises:
            DataError: the file is not a readable result table (truncated, not parquet, other
                columns); the file is left as it is.
        """
        if not self.path.exists():
            return _empty()
        try:
            return _normalise(pd.read_parquet(self.path))
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{self.path}: not a readable result table ({exc}); allowed: a "
                            f"pairs.parquet written by `python -m analysis run` (move this one "
                            f"away to recompute it)") from exc

    def keys(self) -> set[tuple[str, ...]]:
        """The keys already stored (tuples in ``KEY`` order)."""
        frame = self.load()
        return set(zip(*(frame[k].astype(str) for k in KEY), strict=True))

    def append(self, rows: pd.DataFrame | Iterable[Mapping[str, Any]], *,
               replace_errors: bool = False) -> int:
        """Add rows whose key is not stored yet; returns how many were written.

        Args:
            rows: result rows with every column of ``COLUMNS``.
            replace_errors: if True, a new row may replace a stored ``status="error"`` row with
                the same key (used by ``--retry-errors``); stored ``ok`` rows are never replaced.
        """
        new = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if new.empty:
            return 0
        new = _normalise(new).drop_duplicates(subset=list(KEY), keep="first")
        old = self.load()
        if replace_errors and not old.empty:
            new_keys = set(zip(*(new[k] for k in KEY), strict=True))
            old_keys = list(zip(*(old[k] for k in KEY), strict=True))
            errors = old["status"].eq("error").to_numpy()
            drop = np.array([(k in new_keys) for k in old_keys]) & errors
            old = old.loc[~drop]
        if not old.empty:
            stored = pd.MultiIndex.from_frame(old[list(KEY)])
            fresh = ~pd.MultiIndex.from_frame(new[list(KEY)]).isin(stored)
            new = new.loc[fresh]
        if new.empty:
            return 0
        out = pd.concat([old, new], ignore_index=True) if not old.empty else new
        self._write(out.reset_index(drop=True))
        return len(new)

    def _write(self, frame: pd.DataFrame) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + f".tmp{os.getpid()}")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.path)  # atomic: a crash never leaves a half-written table
