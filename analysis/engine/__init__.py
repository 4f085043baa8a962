"""The all-pairs engine: measure specs, pair planning, the serial and Ray-actor engines, and the
resumable result store.

- ``spec``: ``MeasureSpec`` (a registered measure plus params), ``parse_measure``,
  ``DEFAULT_MEASURES`` / ``DEMO_MEASURES`` / ``TRANSFER_MEASURES``;
- ``plan``: ``plan_pairs``, the pairs each spec needs that the store does not hold yet;
- ``compare``: what both engines do per item (prepare) and per pair (compare, result row);
- ``serial``: ``SerialEngine``, the in-process reference; ``actors``: ``RayEngine`` on a pool of
  Ray actors, and ``make_engine``;
- ``store``: ``ResultStore``, the keyed parquet table ``pairs.parquet``.
"""

from __future__ import annotations

from analysis.engine.actors import RayEngine, make_engine
from analysis.engine.compare import EngineStats
from analysis.engine.plan import PairTask, item_id, plan_pairs
from analysis.engine.serial import SerialEngine
from analysis.engine.spec import (
    DEFAULT_MEASURES,
    DEMO_MEASURES,
    TRANSFER_MEASURES,
    MeasureSpec,
    parse_measure,
    spec_key,
)
from analysis.engine.store import COLUMNS, KEY, ResultStore, canonical_params, params_hash

__all__ = [
    "MeasureSpec", "parse_measure", "spec_key", "DEFAULT_MEASURES", "DEMO_MEASURES",
    "TRANSFER_MEASURES", "PairTask", "item_id", "plan_pairs", "EngineStats", "SerialEngine",
    "RayEngine", "make_engine", "ResultStore", "COLUMNS", "KEY", "canonical_params", "params_hash",
]
