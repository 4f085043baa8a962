"""Optional tuning phase: Optuna (via Ray Tune's OptunaSearch) picks training hyperparameters
for one grid cell (or one cell per architecture) before the grid runs with the best values.

OptunaSearch cannot take ``tune.grid_search`` (ENV.md), so the phases are separate Tuners: the
HPO trials log to MLflow with tag ``unisweep.role=hpo`` under the sweep's parent run, the best
values go to the parent run (params ``hpo.best.<arch or "all">.<field>`` and artifact
``hpo_best.json``), and the grid's trial config carries them as per-architecture overrides.
The ``hpo:`` block itself (`HpoSpec`) is parsed by `sweeps.spec_hpo`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from ray import tune

from sweeps.cli_util import Echo
from sweeps.grid import ArchSpec
from sweeps.spec_hpo import DIST_KINDS, Dist
from sweeps.tuner import SweepHandle, base_param_space, experiment_path, make_tuner, trainable_for
from trainables import tracking as tr

__all__ = ["run_hpo", "HPO_ARTIFACT"]

log = logging.getLogger(__name__)
HPO_ARTIFACT = "hpo_best.json"


def _to_tune(dist: Dist) -> Any:
    """The Tune search-space object of a spec distribution."""
    if dist.kind == "loguniform":
        return tune.loguniform(*dist.values)
    if dist.kind == "uniform":
        return tune.uniform(*dist.values)
    if dist.kind == "choice":
        return tune.choice(list(dist.values))
    raise ValueError(f"unknown distribution kind {dist.kind!r}; known: {DIST_KINDS}")


def _targets(handle: SweepHandle) -> list[ArchSpec]:
    hpo = handle.spec.hpo
    return list(handle.spec.archs) if hpo.per_arch else [hpo.arch]


def _param_space(handle: SweepHandle, arch: ArchSpec) -> dict[str, Any]:
    spec, hpo = handle.spec, handle.spec.hpo
    space = base_param_space(spec, handle, role="hpo")
    space["train"] = {**space["train"], **{k: _to_tune(d) for k, d in hpo.space}}
    if hpo.epochs is not None:
        space["train"]["epochs"] = hpo.epochs
    space.update(model={"arch": arch.name, "width": arch.width}, threat_model=hpo.threat_model,
                 eps=hpo.eps, seed=hpo.seed)
    return space


def _logged_best(handle: SweepHandle) -> dict[str, dict[str, Any]] | None:
    names = {a.path for a in tr.with_retries(handle.client.list_artifacts, handle.parent_run_id)}
    if HPO_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = handle.client.download_artifacts(handle.parent_run_id, HPO_ARTIFACT, tmp)
        return json.loads(Path(local).read_text())


def _tune_one(handle: SweepHandle, arch: ArchSpec, *, echo: Echo) -> Any:
    """Run (or finish) the Optuna study of one architecture; return its best Tune result."""
    # optuna: imported only by sweeps that have an hpo block.
    from ray.tune.search.optuna import OptunaSearch

    spec, hpo = handle.spec, handle.spec.hpo
    suffix = f"-hpo-{arch.label}"
    path = experiment_path(spec, suffix=suffix)
    echo(f"hpo: {hpo.num_samples} Optuna trials for {arch.label} ({hpo.metric}, {hpo.mode})")
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable_for(spec), resume_errored=True)
    else:
        search = OptunaSearch(metric=hpo.metric, mode=hpo.mode, seed=hpo.sampler_seed)
        tuner = make_tuner(spec, _param_space(handle, arch), name=spec.name + suffix,
                           echo=echo, search_alg=search, num_samples=hpo.num_samples,
                           max_concurrent=hpo.max_concurrent)
    best = tuner.fit().get_best_result(metric=hpo.metric, mode=hpo.mode, scope="last")
    if best is None or best.config is None or not math.isfinite(
            float((best.metrics or {}).get(hpo.metric, math.nan))):
        raise RuntimeError(f"hpo for {arch.label}: no trial reported {hpo.metric}; see "
                           f"{path} for the trial errors")
    return best


def run_hpo(handle: SweepHandle, *, echo: Echo) -> dict[str, dict[str, Any]]:
    """Run (or finish, or reuse) the tuning phase; return the grid's per-arch overrides.

    Returns:
        ``{arch label: {field: best value}}``, or ``{"*": {...}}`` when one cell was tuned.
    """
    done = _logged_best(handle)
    if done is not None:
        echo(f"hpo: reusing best values logged with the sweep: {done}")
        return done
    hpo = handle.spec.hpo
    overrides: dict[str, dict[str, Any]] = {}
    for arch in _targets(handle):
        best = _tune_one(handle, arch, echo=echo)
        values = {k: best.config["train"][k] for k, _ in hpo.space}
        overrides[arch.label if hpo.per_arch else "*"] = values
        echo(f"hpo: best for {arch.label}: "
             + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in values.items())
             + f" ({hpo.metric}={best.metrics[hpo.metric]:.4f})")
    params = [Param(f"hpo.best.{'all' if label == '*' else label}.{k}", str(v))
              for label, vals in overrides.items() for k, v in vals.items()]
    for batch in tr.chunks(params, 100):
        tr.with_retries(handle.client.log_batch, handle.parent_run_id, params=batch)
    tr.with_retries(handle.client.log_text, handle.parent_run_id,
                    json.dumps(overrides, indent=1, sort_keys=True), HPO_ARTIFACT)
    return overrides
