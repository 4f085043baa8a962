"""The inverted input set the analysis already ran, found from its table: when ``pairs.parquet``
holds ``inverted`` rows for a group's models, the reproduction inverts with the same settings,
so the analysis's cached inversions, artifacts and pair values (inverted-image CKA, the
inversion transfer) are what targets 2, 3 and 8 rest on, and nothing is inverted twice.

The settings are read from the inputs' own cache record (``cache/inputs/<hash16>.npz``, its
``info``) and accepted only when they rebuild the very key of the stored rows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analysis.engine.store import ResultStore
from analysis.inputs import ArtifactCache, EvalSet, InvertedInputs, ModelRef
from trainables.errors import ConfigError

__all__ = ["analysed_inversion"]


def _settings(path: Path) -> tuple[dict, str | None]:
    """(the input set's params, its source run id) from a cached inputs file."""
    with np.load(path, allow_pickle=False) as z:  # reads the small ``info`` member only
        info = json.loads(str(z["info"])) if "info" in z.files else {}
    return info.get("params") or {}, info.get("source")


def analysed_inversion(pairs_path: Path, cache: ArtifactCache, base: EvalSet,
                       models: Sequence[ModelRef]) -> InvertedInputs | None:
    """The ``inverted`` input set behind the table's inverted rows of ``models``, or None.

    Args:
        pairs_path: the analysis table (absent: None).
        cache: the analysis cache the inputs were saved in.
        base: the group's eval set (the key depends on it).
        models: the group's models (rows of other models are ignored).

    Returns:
        The settings that cover the most row models, when several were analysed.
    """
    if not pairs_path.exists():
        return None
    t = ResultStore(pairs_path).load()
    by_id = {m.run_id: m for m in models}
    t = t[(t["input_set"] == "inverted") & (t["status"] == "ok")
          & t["model_a"].isin(list(by_id))]
    found: dict[str, InvertedInputs] = {}
    covered: Counter[str] = Counter()
    for key in t["inputs_hash"].unique():
        path = cache.inputs_path(key)
        if not path.exists():
            continue
        params, source = _settings(path)
        try:
            iset = InvertedInputs(iterations=params["iterations"],
                                  num_targets=params["num_targets"],
                                  pairing_seed=params["pairing_seed"],
                                  step_size=params["step_size"], momentum=params["momentum"])
        except (KeyError, TypeError, ConfigError):  # written by another version: not reused
            continue
        if source not in by_id or iset.key(base, by_id[source]) != key:
            continue  # another eval set, or a setting the constructor cannot rebuild
        name = json.dumps(iset.params(), sort_keys=True)
        found.setdefault(name, iset)
        covered[name] += 1
    if not covered:
        return None
    return found[covered.most_common(1)[0][0]]
