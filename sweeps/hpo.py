"""Optional tuning phase: Optuna (via Ray Tune's OptunaSearch) picks training hyperparameters
for one grid cell (or one cell per architecture) before the grid runs with the best values.

OptunaSearch cannot take ``tune.grid_search`` (ENV.md), so the phases are separate Tuners: the
HPO trials log to MLflow with tag ``unisweep.role=hpo`` under the sweep's parent run, the best
values go to the parent run (params ``hpo.best.<arch or "all">.<field>`` and artifact
``hpo_best.json``), and the grid's trial config carries them as per-architecture overrides.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables import tracking as tr
from sweeps._fields import (Section, as_choice, as_float, as_int, as_list, check_unique, fail,
                            parse_number)
from sweeps.spec import ArchSpec, ThreatSpec

if TYPE_CHECKING:
    from sweeps.launch import FaultSwitch, SweepHandle

__all__ = ["HpoSpec", "Dist", "parse_hpo", "run_hpo", "TUNABLE", "METRICS"]

log = logging.getLogger(__name__)
HPO_ARTIFACT = "hpo_best.json"
DIST_KINDS = ("loguniform", "uniform", "choice")
METRICS = (tr.METRIC_ROBUST_ACC, tr.METRIC_CLEAN_ACC, tr.METRIC_TRAIN_LOSS, tr.METRIC_TRAIN_ACC)
# Tunable `train` fields: (integer?, validator for one value).
TUNABLE: dict[str, tuple[bool, Callable[[Any, str], Any]]] = {
    "lr": (False, lambda v, f: as_float(v, f, lo=0, lo_open=True)),
    "weight_decay": (False, lambda v, f: as_float(v, f, lo=0)),
    "momentum": (False, lambda v, f: as_float(v, f, lo=0, hi=0.999)),
    "lr_gamma": (False, lambda v, f: as_float(v, f, lo=0, hi=1, lo_open=True)),
    "attack_step_size": (False, lambda v, f: as_float(v, f, lo=0, lo_open=True)),
    "batch_size": (True, lambda v, f: as_int(v, f, lo=2)),
    "attack_steps": (True, lambda v, f: as_int(v, f, lo=1)),
    "optimizer": (True, lambda v, f: as_choice(v, f, ("sgd", "adam"))),
}


@dataclass(frozen=True)
class Dist:
    """A search distribution: loguniform/uniform over [lo, hi], or a choice of values."""

    kind: str
    values: tuple[Any, ...]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "choice":
            return tune.choice(list(self.values))
        raise ValueError(f"unknown distribution kind {self.kind!r}; known: {DIST_KINDS}")


@dataclass(frozen=True)
class HpoSpec:
    space: tuple[tuple[str, Dist], ...]
    num_samples: int
    metric: str
    mode: str
    per_arch: bool
    arch: ArchSpec  # the tuned architecture (ignored when per_arch)
    threat_model: str
    eps: float
    seed: int
    epochs: int | None  # None: the grid's train.epochs
    max_concurrent: int | None
    sampler_seed: int

    def describe(self) -> str:
        which = "per architecture" if self.per_arch else self.arch.label
        space = ", ".join(f"{k}~{d.kind}{list(d.values)}" for k, d in self.space)
        return (f"{self.num_samples} Optuna trials {which} at {self.threat_model} "
                f"eps={self.eps:g} seed={self.seed}, {self.mode} {self.metric}; {space}")


def parse_hpo(sec: Section, *, archs: tuple[ArchSpec, ...], threats: tuple[ThreatSpec, ...],
              seeds: tuple[int, ...]) -> HpoSpec:
    """Validate the ``hpo`` block (see docs/spec-reference.md)."""
    space_sec = Section(sec.get("space"), sec.field("space"))
    space = []
    for key in space_sec.raw:
        field = space_sec.field(key)
        if key not in TUNABLE:
            raise fail(field, key, ", ".join(TUNABLE), problem="is not a tunable train field")
        space.append((key, _dist(space_sec.get(key), field, key)))
    space_sec.done()
    if not space:
        raise fail(sec.field("space"), {}, "at least one tunable field", problem="is empty")
    cell = Section(sec.get("cell", {}), sec.field("cell"))
    labels = {a.label: a for a in archs}
    arch_label = as_choice(cell.get("arch", archs[0].label), cell.field("arch"), list(labels))
    models = [t.threat_model for t in threats]
    threat_model = as_choice(cell.get("threat_model", models[0]), cell.field("threat_model"),
                             models)
    eps_allowed = next(t.epsilons for t in threats if t.threat_model == threat_model)
    eps = parse_number(cell.get("eps", max(eps_allowed)), cell.field("eps"))
    if eps not in eps_allowed:
        raise fail(cell.field("eps"), cell.raw.get("eps"),
                   ", ".join(f"{e:g}" for e in eps_allowed) + " (an epsilon of the grid)")
    seed = as_int(cell.get("seed", seeds[0]), cell.field("seed"), lo=0)
    cell.done()
    epochs = sec.get("epochs", None)
    max_concurrent = sec.get("max_concurrent", None)
    per_arch = sec.get("per_arch", False)
    if not isinstance(per_arch, bool):
        raise fail(sec.field("per_arch"), per_arch, "true or false")
    out = HpoSpec(
        space=tuple(space),
        num_samples=as_int(sec.get("num_samples"), sec.field("num_samples"), lo=1),
        metric=as_choice(sec.get("metric", tr.METRIC_ROBUST_ACC), sec.field("metric"), METRICS),
        mode=as_choice(sec.get("mode", "max"), sec.field("mode"), ("max", "min")),
        per_arch=per_arch, arch=labels[arch_label], threat_model=threat_model, eps=eps, seed=seed,
        epochs=None if epochs is None else as_int(epochs, sec.field("epochs"), lo=1),
        max_concurrent=None if max_concurrent is None else as_int(
            max_concurrent, sec.field("max_concurrent"), lo=1),
        sampler_seed=as_int(sec.get("seed", 0), sec.field("seed"), lo=0),
    )
    sec.done()
    return out


def _dist(raw: Any, field: str, key: str) -> Dist:
    sec = Section(raw, field)
    kinds = [k for k in sec.raw if k in DIST_KINDS]
    if len(sec.raw) != 1 or not kinds:
        raise fail(field, raw, "one of {loguniform: [lo, hi]}, {uniform: [lo, hi]}, "
                               "{choice: [v1, v2, ...]}")
    kind = kinds[0]
    values = as_list(sec.get(kind), f"{field}.{kind}")
    integer, check = TUNABLE[key]
    if kind == "choice":
        parsed = tuple(check(v, f"{field}.choice[{i}]") for i, v in enumerate(values))
        check_unique(parsed, f"{field}.choice", values)
        return Dist(kind, parsed)
    if integer:
        raise fail(f"{field}.{kind}", values, f"{{choice: [...]}} ({key} is discrete)")
    if len(values) != 2:
        raise fail(f"{field}.{kind}", values, "[lo, hi]")
    lo, hi = (check(v, f"{field}.{kind}[{i}]") for i, v in enumerate(values))
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise fail(f"{field}.{kind}", values,
                   "[lo, hi] with lo < hi" + (" and lo > 0" if kind == "loguniform" else ""))
    return Dist(kind, (lo, hi))


def _targets(handle: SweepHandle) -> list[ArchSpec]:
    hpo = handle.spec.hpo
    return list(handle.spec.archs) if hpo.per_arch else [hpo.arch]


def _param_space(handle: SweepHandle, arch: ArchSpec) -> dict[str, Any]:
    from sweeps.launch import base_param_space

    spec, hpo = handle.spec, handle.spec.hpo
    space = base_param_space(spec, handle, role="hpo")
    space["train"] = {**space["train"], **{k: d.to_tune() for k, d in hpo.space}}
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


def run_hpo(handle: SweepHandle, *, echo: Callable[[str], None],
            fault: FaultSwitch | None = None) -> dict[str, dict[str, Any]]:
    """Run (or finish, or reuse) the tuning phase; return the grid's per-arch overrides.

    Returns:
        ``{arch label: {field: best value}}``, or ``{"*": {...}}`` when one cell was tuned.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.launch import experiment_path, make_tuner, trainable_for

    done = _logged_best(handle)
    if done is not None:
        echo(f"hpo: reusing best values logged with the sweep: {done}")
        return done
    spec, hpo = handle.spec, handle.spec.hpo
    overrides: dict[str, dict[str, Any]] = {}
    for arch in _targets(handle):
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
        results = tuner.fit()
        best = results.get_best_result(metric=hpo.metric, mode=hpo.mode, scope="last")
        if best is None or best.config is None or not math.isfinite(
                float((best.metrics or {}).get(hpo.metric, math.nan))):
            raise RuntimeError(f"hpo for {arch.label}: no trial reported {hpo.metric}; see "
                               f"{path} for the trial errors")
        values = {k: best.config["train"][k] for k, _ in hpo.space}
        overrides[arch.label if hpo.per_arch else "*"] = values
        echo(f"hpo: best for {arch.label}: "
             + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in values.items())
             + f" ({hpo.metric}={best.metrics[hpo.metric]:.4f})")
    from mlflow.entities import Param

    params = [Param(f"hpo.best.{'all' if label == '*' else label}.{k}", str(v))
              for label, vals in overrides.items() for k, v in vals.items()]
    for batch in tr.chunks(params, 100):
        tr.with_retries(handle.client.log_batch, handle.parent_run_id, params=batch)
    tr.with_retries(handle.client.log_text, handle.parent_run_id,
                    json.dumps(overrides, indent=1, sort_keys=True), HPO_ARTIFACT)
    return overrides
