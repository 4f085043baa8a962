"""The spec's optional ``hpo:`` block: what to tune, on which cell, how many Optuna trials.

`parse_hpo` validates the block into an `HpoSpec` (one-line errors naming the field, like the
rest of the spec); `sweeps.hpo.run_hpo` runs it. The tunable fields are the ``train:`` settings
declared ``tunable`` in `trainables.config`; each value of a search space is checked against
that setting's rule. Field reference: docs/spec-reference.md, section ``hpo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeps._fields import (Section, as_choice, as_int, as_list, check_unique, fail, parse_number,
                            read_value)
from sweeps.grid import ArchSpec, ThreatSpec
from trainables import tracking as tr
from trainables.config import spec_settings
from trainables.settings import Setting

__all__ = ["HpoSpec", "Dist", "parse_hpo", "TUNABLE", "METRICS", "DIST_KINDS"]

DIST_KINDS = ("loguniform", "uniform", "choice")
METRICS = (tr.METRIC_ROBUST_ACC, tr.METRIC_CLEAN_ACC, tr.METRIC_TRAIN_LOSS, tr.METRIC_TRAIN_ACC)
# The `train:` keys a search space may name (declared `tunable` in trainables.config).
TUNABLE: dict[str, Setting] = {k: s for k, s in spec_settings("train").items() if s.tunable}


@dataclass(frozen=True)
class Dist:
    """A search distribution: loguniform/uniform over [lo, hi], or a choice of values."""

    kind: str  # one of DIST_KINDS
    values: tuple[Any, ...]


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
    rule = TUNABLE[key].rule
    if kind == "choice":
        parsed = tuple(read_value(v, f"{field}.choice[{i}]", rule) for i, v in enumerate(values))
        check_unique(parsed, f"{field}.choice", values)
        return Dist(kind, parsed)
    if rule.kind in ("int", "choice"):
        raise fail(f"{field}.{kind}", values, f"{{choice: [...]}} ({key} is discrete)")
    if len(values) != 2:
        raise fail(f"{field}.{kind}", values, "[lo, hi]")
    lo, hi = (read_value(v, f"{field}.{kind}[{i}]", rule) for i, v in enumerate(values))
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise fail(f"{field}.{kind}", values,
                   "[lo, hi] with lo < hi" + (" and lo > 0" if kind == "loguniform" else ""))
    return Dist(kind, (lo, hi))
