"""Sweep specs: one YAML file -> `SweepSpec` (frozen dataclasses), validated at load.

Every error is a `ConfigError` on one line naming the dotted field, the value and what is
allowed, e.g. ``train.epochs=0 is not allowed; allowed: an integer >= 1``. Unknown keys are
errors. Epsilons are floats on the [0, 1] pixel scale; ``"8/255"`` is parsed once, at load, by
a tiny fraction parser (never ``eval``). The per-field readers live in `sweeps._fields`, the
grid's value types in `sweeps.grid`, the ``hpo:`` block in `sweeps.spec_hpo`, the ``analysis:``
block in `sweeps.spec_analysis`. The keys, defaults and ranges of the ``dataset:``, ``train:`` and
``eval:`` sections are the settings declared in `trainables.config` (one declaration for the
spec, the trial and the docs).
Field reference: docs/spec-reference.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeps._fields import (Section, as_choice, as_float, as_int, as_list, as_location, as_name,
                            check_unique, fail, parse_number, read_section, read_value,
                            section_class)
from sweeps.grid import ArchSpec, Cell, ThreatSpec
from sweeps.spec_analysis import AnalysisSpec, parse_analysis
from sweeps.spec_hpo import HpoSpec, parse_hpo
from trainables import tracking as tr
from trainables.config import (LOCAL_DATASETS, SETTINGS, THREAT_MODELS, check_set_sizes,
                               spec_settings)
from trainables.errors import ConfigError

__all__ = ["SweepSpec", "DatasetSpec", "TrainSpec", "EvalSpec", "ResourceSpec", "TrackingSpec",
           "load_spec", "parse_spec", "parse_number", "Section"]

# Input dimension C*H*W where fixed; an L2 epsilon at or above sqrt(dim) covers the whole cube.
_INPUT_DIM = {"digits": 1 * 8 * 8, "shapes": 3 * 32 * 32, "cifar10": 3 * 32 * 32}
_DATASET, _TRAIN, _EVAL = (spec_settings(s) for s in ("dataset", "train", "eval"))

# The sections whose keys are declared settings: one attribute per key (spec.train.epochs, ...).
DatasetSpec = section_class("DatasetSpec", _DATASET, module=__name__)
TrainSpec = section_class("TrainSpec", _TRAIN, module=__name__)
EvalSpec = section_class("EvalSpec", _EVAL, module=__name__)


@dataclass(frozen=True)
class ResourceSpec:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class TrackingSpec:
    uri: str  # MLflow tracking URI
    artifact_location: str | None  # absolute path or URI; None lets an MLflow server decide


@dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: DatasetSpec
    archs: tuple[ArchSpec, ...]
    threats: tuple[ThreatSpec, ...]
    seeds: tuple[int, ...]
    train: TrainSpec
    eval: EvalSpec
    resources: ResourceSpec
    max_concurrent: int | None
    max_failures: int
    tracking: TrackingSpec
    storage: str  # Ray Tune storage path (absolute) or URI (s3://...)
    hpo: HpoSpec | None = None
    analysis: AnalysisSpec = AnalysisSpec()
    description: str = ""
    source: str = ""  # the YAML text as loaded (logged with the sweep)

    def cells(self) -> list[Cell]:
        """Every grid cell, in the order Tune's grid search expands them."""
        return [Cell(a, t.threat_model, e, s) for t in self.threats for e in t.epsilons
                for a in self.archs for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for logging and dry runs); the YAML source is left out."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def load_spec(path: str | os.PathLike[str], *, check_paths: bool = True) -> SweepSpec:
    """Load and validate a sweep spec.

    Args:
        path: YAML file.
        check_paths: check that ``dataset.root`` exists (the CLI does; loading the shipped
            examples on a machine without their datasets does not).

    Raises:
        ConfigError: unreadable file, YAML syntax error, or any invalid field.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"spec file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    try:
        return parse_spec(raw, check_paths=check_paths, source=text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_spec(raw: Any, *, check_paths: bool = True, source: str = "") -> SweepSpec:
    """Validate an already-parsed YAML tree (see `load_spec`)."""
    top = Section(raw, "")
    paths = tr.default_paths()
    name = as_name(top.get("name"), "name")
    dataset = _dataset(Section(top.get("dataset"), "dataset"), home=paths.home,
                       check_paths=check_paths)
    archs, arch_fields = _archs(top.get("archs"))
    threats = _threats(top.get("threat_model"), top.get("epsilons"), dataset.name)
    seeds_raw = as_list(top.get("seeds", [0]), "seeds", allow_scalar=True)
    seeds = tuple(read_value(s, f"seeds[{i}]", SETTINGS["seed"].rule)
                  for i, s in enumerate(seeds_raw))
    check_unique(seeds, "seeds", seeds_raw)
    train = _train(Section(top.get("train", {}), "train"))
    evaluation = EvalSpec(**read_section(Section(top.get("eval", {}), "eval"), _EVAL))
    res = Section(top.get("resources", {}), "resources")
    resources = ResourceSpec(
        cpu=as_float(res.get("cpu", 1.0), res.field("cpu"), lo=0, lo_open=True),
        gpu=as_float(res.get("gpu", 0.0), res.field("gpu"), lo=0))
    res.done()
    max_concurrent = top.get("max_concurrent", None)
    if max_concurrent is not None:
        max_concurrent = as_int(max_concurrent, "max_concurrent", lo=1)
    max_failures = as_int(top.get("max_failures", 2), "max_failures", lo=0)
    tracking = _tracking(Section(top.get("tracking", {}), "tracking"), paths=paths)
    storage_raw = top.get("storage", os.environ.get("UNISWEEP_STORAGE") or str(paths.storage_path))
    storage = as_location(storage_raw, "storage", home=paths.home)
    description = top.get("description", "")
    if not isinstance(description, str):
        raise fail("description", description, "a string")
    hpo = None
    if top.get("hpo", None) is not None:
        hpo = parse_hpo(Section(top.get("hpo"), "hpo"), archs=archs, threats=threats, seeds=seeds)
    analysis = parse_analysis(Section(top.get("analysis", {}), "analysis"))
    top.done()
    _check_arch_names(archs, arch_fields)
    return SweepSpec(name=name, dataset=dataset, archs=archs, threats=threats, seeds=seeds,
                     train=train, eval=evaluation, resources=resources,
                     max_concurrent=max_concurrent, max_failures=max_failures, tracking=tracking,
                     storage=storage, hpo=hpo, analysis=analysis, description=description,
                     source=source)


def _dataset(sec: Section, *, home: Path, check_paths: bool) -> DatasetSpec:
    values = read_section(sec, _DATASET, home=home)
    name, root = values["name"], values["root"]
    check_set_sizes(name, n_train=values["n_train"], n_test=values["n_test"], prefix="dataset.")
    if name in LOCAL_DATASETS and root is None:
        raise fail(sec.field("root"), None, f"the local directory holding {name}",
                   problem=f"is missing (required for {name}; nothing is downloaded)")
    if root is not None and check_paths and not Path(root).is_dir():
        raise fail(sec.field("root"), root, "an existing directory", problem="does not exist")
    return DatasetSpec(**values)


def _archs(value: Any) -> tuple[tuple[ArchSpec, ...], tuple[str, ...]]:
    """The architectures and the field each name came from; names are checked against the
    model registry later, by `_check_arch_names` (it imports torch)."""
    raw = as_list(value, "archs", allow_scalar=True)
    archs, fields = [], []
    for i, item in enumerate(raw):
        field = f"archs[{i}]"
        if isinstance(item, Mapping):
            sec = Section(item, field)
            width = SETTINGS["width"]
            arch = ArchSpec(name=sec.get("name"), width=read_value(
                sec.get("width", width.default), sec.field("width"), width.rule))
            field = sec.field("name")
            sec.done()
        elif isinstance(item, str):
            arch = ArchSpec(name=item)
        else:
            raise fail(field, item, "an architecture name or a mapping {name: ..., width: ...}")
        if not isinstance(arch.name, str):
            _check_arch_names([arch], [field])  # not a name at all: the error lists the names
        archs.append(arch)
        fields.append(field)
    check_unique(archs, "archs", raw)
    return tuple(archs), tuple(fields)


def _check_arch_names(archs: Sequence[ArchSpec], fields: Sequence[str]) -> None:
    """Each name must be a key of `trainables.models.MODELS` (the declared ``arch`` rule).

    Run after every other field is checked, so that a typo elsewhere in the spec is reported
    without first importing torch (seconds at the command line): the rule imports the model
    registry only when it is asked for its names.
    """
    for arch, field in zip(archs, fields):
        read_value(arch.name, field, SETTINGS["arch"].rule)


def _threats(threat_value: Any, eps_value: Any, dataset: str) -> tuple[ThreatSpec, ...]:
    raw_models = as_list(threat_value, "threat_model", allow_scalar=True)
    models = [as_choice(m, f"threat_model[{i}]" if len(raw_models) > 1 else "threat_model",
                        THREAT_MODELS) for i, m in enumerate(raw_models)]
    check_unique(models, "threat_model", raw_models)
    if isinstance(eps_value, Mapping):
        sec = Section(eps_value, "epsilons")
        per_model = {m: sec.get(m) for m in models}
        sec.done()
    else:
        per_model = {m: eps_value for m in models}
    threats = []
    for model, value in per_model.items():
        field = f"epsilons.{model}" if isinstance(eps_value, Mapping) else "epsilons"
        raw = as_list(value, field, allow_scalar=True)
        eps = tuple(_epsilon(v, f"{field}[{i}]", model, dataset) for i, v in enumerate(raw))
        check_unique(eps, field, raw)
        threats.append(ThreatSpec(threat_model=model, epsilons=eps))
    return tuple(threats)


def _epsilon(value: Any, field: str, threat_model: str, dataset: str) -> float:
    eps = parse_number(value, field)
    if eps < 0:
        raise fail(field, value, "a number >= 0 on the [0, 1] pixel scale",
                   problem="is negative")
    if threat_model == "linf" and eps > 1:
        raise fail(field, value, "a number in [0, 1] (pixel scale)",
                   problem=f"is above 1 for linf (did you mean {value}/255?)")
    dim = _INPUT_DIM.get(dataset)
    if threat_model == "l2" and dim is not None and eps >= math.sqrt(dim):
        raise fail(field, value, f"a number in [0, {math.sqrt(dim):.3g}) for l2 on {dataset} "
                                 f"(the L2 diameter of its [0,1] input cube)",
                   problem=f"covers the whole input space (did you mean {value}/255?)")
    return eps


def _train(sec: Section) -> TrainSpec:
    values = read_section(sec, _TRAIN)
    rule, size = values["attack_step_rule"], values["attack_step_size"]
    if rule != "auto" and size is None:
        raise fail(sec.field("attack_step_size"), None, "a number > 0",
                   problem=f"is missing (required when attack_step_rule is {rule!r})")
    if rule == "auto" and size is not None:
        raise fail(sec.field("attack_step_size"), size, "null with attack_step_rule 'auto' "
                   "(2.5*eps/steps), or set attack_step_rule to relative/absolute")
    return TrainSpec(**values)


def _tracking(sec: Section, *, paths: tr.Paths) -> TrackingSpec:
    uri = sec.get("uri", tr.resolve_tracking_uri(home=paths.home))
    if not isinstance(uri, str) or not re.match(r"^(sqlite|https?|postgresql|mysql|databricks)"
                                                r"(\+\w+)?:", uri):
        raise fail(sec.field("uri"), uri, "sqlite:///<abs path>/mlflow.db or http(s)://host:port "
                   "(file stores are disabled in MLflow 3)")
    if uri.startswith("sqlite:///"):
        db = Path(os.path.expandvars(uri.removeprefix("sqlite:///"))).expanduser()
        uri = f"sqlite:///{db if db.is_absolute() else (paths.home / db).resolve()}"
    remote = uri.startswith(("http://", "https://", "databricks"))
    default_art = None if remote else str(paths.artifact_root)
    art = sec.get("artifact_location", default_art)
    art = None if art is None else as_location(art, sec.field("artifact_location"), home=paths.home)
    sec.done()
    return TrackingSpec(uri=uri, artifact_location=art)
