"""The reproduction run: the paper's experiments on a finished sweep and an honest report on
SPEC §8's eight targets.

``run_reproduction(sweep)`` goes in steps, for every (dataset, threat model) group of the sweep
on its own: discover the sweep's models (``analysis.inputs.discovery``) and reload the group's
eval set with the options the trials used; plan
the input sets (clean, the training split for probes, every model's inverted images); extract
each model's features and logits once on each (``analysis.inputs.extract``, cached and shared
with ``python -m analysis run``); gather them into a ``StudyData``, with the clean and inverted
pair values ``pairs.parquet`` already holds; measure robust accuracy and train the probes; hand
the arrays to ``evaluate_targets``; write ``reports/<sweep>/reproduction.{md,json}``
(``analysis.reproduction.writer``) and attach them to the sweep's analysis run in MLflow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.engine.spec import spec_key
from analysis.engine.store import ResultStore
from analysis.inputs import (
    ArtifactCache,
    Block,
    CleanInputs,
    Discovery,
    EvalSet,
    InputSet,
    InvertedInputs,
    ModelRef,
    TrainSplitInputs,
    discover_models,
    extract_all,
    load_eval_sets,
    load_model,
)
from analysis.measures import MeasureInputError, get_measure
from analysis.reproduction.probes import run_probes
from analysis.reproduction.study import (
    INVERSION_NOT_DISCRIMINATIVE,
    REP_MEASURES,
    ModelInfo,
    ReproConfig,
    StudyData,
    TargetResult,
)
from analysis.reproduction.targets import evaluate_targets
from analysis.reproduction.writer import write_report
from trainables import tracking as tr
from trainables.attacks import robust_accuracy
from trainables.device import pick_device
from trainables.errors import UserError

__all__ = ["run_reproduction"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
Arrays = dict[str, dict[str, np.ndarray]]  # model label -> artifact name -> array


def run_reproduction(sweep: str, *, tracking_uri: str | None = None,
                     reports_root: str | Path | None = None, config: ReproConfig | None = None,
                     data_root: str | None = None, data_seed: int | None = None,
                     eval_size: int | None = None, max_train: int | None = None,
                     use_ray: bool = False, progress: Progress | None = None) -> Path:
    """Run inversion, probes and subgroups on a sweep and write the reproduction report.

    Args:
        sweep: sweep name (MLflow experiment).
        tracking_uri: MLflow store (default: ``trainables.tracking.resolve_tracking_uri()``).
        reports_root: folder holding ``<sweep>/`` (default: ``<UNISWEEP_HOME>/reports``).
        config: what to run and how; default ``ReproConfig()``.
        data_root, data_seed, eval_size: override how the eval set is drawn; by default the
            options are read from the trial runs (``ModelRef.data``), and the eval set's hash
            must match the models' ``data_hash``.
        max_train: cap on training-split images used for probes (seeded subset); None = all.
        use_ray: run input building (inversion) and extraction as Ray tasks (Ray must be
            initialised).
        progress: ``progress(stage, done, total)`` for the long stages.

    Returns:
        Path of ``reports/<sweep>/reproduction.md``.

    Raises:
        UserError: unknown sweep, no finished model, or an eval set that does not match.
    """
    cfg = config or ReproConfig()
    tracking_uri = tr.resolve_tracking_uri(tracking_uri)
    out_dir = Path(reports_root or tr.default_paths().reports) / sweep
    disc, groups = _models(sweep, tracking_uri)
    where = _Where(tracking_uri, out_dir, data_root, data_seed, eval_size, max_train, use_ray)
    done = [_run_group(sweep, disc, refs, cfg, where, progress) for refs in groups.values()]
    md, js = write_report(done, out_dir, sweep=sweep)
    _log_to_mlflow(sweep, [md, js], tracking_uri)
    return md


@dataclass(frozen=True)
class _Where:
    """Where a group's inputs come from and its outputs go (``run_reproduction``'s options)."""

    tracking_uri: str
    out_dir: Path
    data_root: str | None
    data_seed: int | None
    eval_size: int | None
    max_train: int | None
    use_ray: bool


def _run_group(sweep: str, disc: Discovery, refs: list[ModelRef], cfg: ReproConfig,
               where: _Where, progress: Progress | None) -> tuple[dict[str, Any],
                                                                   list[TargetResult]]:
    """Extract, measure and evaluate one (dataset, threat model) group: (header, results)."""
    base = load_eval_sets(refs, data_root=where.data_root, eval_size=where.eval_size,
                          data_seed=where.data_seed)[refs[0].dataset]
    inputs = _Inputs.plan(base, cfg, where.max_train)
    blocks, failures = extract_all(refs, inputs.sets, bases={base.dataset: base},
                                   cache=ArtifactCache(where.out_dir / "cache"),
                                   tracking_uri=where.tracking_uri, use_ray=where.use_ray,
                                   progress=progress)
    refs = [m for m in refs if m.run_id not in failures]
    study, train = _gather(refs, base, blocks, inputs, where.out_dir / "pairs.parquet")
    n_known = len(study.known)
    eps_values = sorted({m.eps for m in refs})
    study.robust_acc = _robust_at(refs, base.X, base.y, eps_values[-1], cfg, where.tracking_uri,
                                  progress=progress)
    _train_probes(study, refs, base, train, cfg)
    results = evaluate_targets(study, config=cfg)
    header = _header(sweep, disc, failures, refs, base, study, train, inputs, cfg)
    header["pair_values_available_from_analysis_table"] = n_known
    return header, results


def _models(sweep: str, tracking_uri: str) -> tuple[Discovery, dict[tuple[str, str],
                                                                    list[ModelRef]]]:
    """The sweep's finished models, per (dataset, threat model) group (item 9: every group is
    reported, each on its own)."""
    disc = discover_models(sweep, tracking_uri=tracking_uri)
    refs = list(disc.models)
    if not refs:
        raise UserError(f"sweep {sweep!r} has no finished models to analyse\n{disc.describe()}")
    groups: dict[tuple[str, str], list[ModelRef]] = {}
    for m in sorted(refs, key=lambda r: (r.dataset, r.threat_model)):
        groups.setdefault((m.dataset, m.threat_model), []).append(m)
    return disc, groups


@dataclass(frozen=True)
class _Inputs:
    """The reproduction's input sets besides ``clean``: the training split (probes), the
    inversion, and its sensitivity run (None where it is skipped)."""

    train: TrainSplitInputs
    inverted: InvertedInputs
    inverted_alt: InvertedInputs | None
    iterations: int

    @classmethod
    def plan(cls, base: EvalSet, cfg: ReproConfig, max_train: int | None) -> _Inputs:
        train = TrainSplitInputs(max_train=max_train, seed=int(base.options.get("seed") or 0))
        testable = base.dataset not in INVERSION_NOT_DISCRIMINATIVE
        targets, iterations = cfg.inversion_targets, cfg.inversion_iterations
        if targets is None and not testable:  # SPEC §9: only a convergence check, kept small
            targets = min(cfg.inversion_check_targets, len(base.y))
            iterations = min(cfg.inversion_check_iterations, iterations)
        inv = InvertedInputs(iterations=iterations, num_targets=targets)
        inv.size(base)  # a num_targets above the eval set's size stops here, before any work
        alt = None
        if testable and cfg.inversion_iterations_alt:
            alt = InvertedInputs(iterations=cfg.inversion_iterations_alt, num_targets=targets)
        return cls(train, inv, alt, iterations)

    @property
    def sets(self) -> list[InputSet]:
        alt = [self.inverted_alt] if self.inverted_alt is not None else []
        return [CleanInputs(), self.train, self.inverted, *alt]


def _arrays(blocks: Sequence[Block], base: EvalSet, label: Mapping[str, str], iset: InputSet,
            source: ModelRef | None = None) -> Arrays:
    """The cached artifacts of every model on ``iset``'s inputs (made from ``source``)."""
    key = iset.key(base, source)
    blk = next((b for b in blocks if b.inputs_key == key), None)
    if blk is None:
        return {}
    return {label[r]: ArtifactCache.load(p) for r, p in blk.artifacts.items() if r in label}


def _gather(refs: list[ModelRef], base: EvalSet, blocks: Sequence[Block], inputs: _Inputs,
            pairs_path: Path) -> tuple[StudyData, Arrays]:
    """The ``StudyData`` of the extracted arrays (clean, inverted) and the train-split arrays."""
    label = {m.run_id: m.label for m in refs}
    clean = _arrays(blocks, base, label, CleanInputs())
    train = _arrays(blocks, base, label, inputs.train)
    study = StudyData(base.dataset, base.num_classes,
                      [ModelInfo(m.label, m.label, m.arch, m.eps, m.seed) for m in refs], clean)
    where = {base.hash: "clean"}
    where.update({inputs.inverted.key(base, m): "inverted" for m in refs})
    if inputs.inverted_alt is not None:
        where.update({inputs.inverted_alt.key(base, m): "inverted_alt" for m in refs})
    study.known = _known_values(pairs_path, where, label)
    _, target_idx = inputs.inverted.pairs(base)
    inverted: Arrays = {}
    for m in refs:
        got = _arrays(blocks, base, label, inputs.inverted, m)
        if m.label in got:
            inverted[m.label] = {k: v["features"] for k, v in got.items()}
            loss = _rel_loss(got[m.label]["features"], clean[m.label]["features"][target_idx])
            study.inversion_summary[m.label] = {
                "median": float(np.median(loss)), "p90": float(np.quantile(loss, 0.9)),
                "frac_below_0.1": float(np.mean(loss < 0.1)), "n": int(loss.size),
                "iterations": inputs.iterations}
        if inputs.inverted_alt is not None:
            got = _arrays(blocks, base, label, inputs.inverted_alt, m)
            if got:
                study.inverted_alt = study.inverted_alt or {}
                study.inverted_alt[m.label] = {k: v["features"] for k, v in got.items()}
    study.inverted = inverted or None
    return study, train


def _robust_at(refs: Sequence[ModelRef], X: np.ndarray, y: np.ndarray, eps: float,
               cfg: ReproConfig, tracking_uri: str, *,
               progress: Progress | None = None) -> dict[str, float]:
    """Robust accuracy of every model under the same PGD attack at ``eps`` (target 1)."""
    out = {}
    device = pick_device()
    for ref in refs:
        model, _ = load_model(ref, tracking_uri=tracking_uri)
        gen = torch.Generator().manual_seed(cfg.seed)
        out[ref.label] = robust_accuracy(
            model.to(device), torch.from_numpy(X), torch.from_numpy(y), norm=ref.threat_model,
            eps=eps, steps=cfg.attack_steps, restarts=cfg.attack_restarts, generator=gen)
        if progress:
            progress("robust accuracy", len(out), len(refs))
    return out


def _train_probes(study: StudyData, refs: Sequence[ModelRef], base: EvalSet, train: Arrays,
                  cfg: ReproConfig) -> None:
    """Probes (target 7) for the smallest and the largest eps, where >= 2 models have features
    on the training split."""
    clean = study.clean
    eps_values = sorted({m.eps for m in refs})
    for e in {eps_values[0], eps_values[-1]}:
        ids = [m.label for m in refs if m.eps == e]
        if len(ids) >= 2 and all(i in train for i in ids):
            study.probes[f"eps={e:g}"] = run_probes(
                {i: train[i]["features"] for i in ids}, train[ids[0]]["labels"],
                {i: clean[i]["features"] for i in ids}, base.y, num_classes=base.num_classes,
                eval_ids=base.indices, head_logits={i: clean[i]["logits"] for i in ids},
                config=cfg.probes)


def _header(sweep: str, disc: Discovery, failures: Mapping[str, str], refs: Sequence[ModelRef],
            base: EvalSet, study: StudyData, train: Arrays, inputs: _Inputs,
            cfg: ReproConfig) -> dict[str, Any]:
    """What the report shows before the targets: the data, the settings, the models table."""
    eps_values = sorted({m.eps for m in refs})
    threat = refs[0].threat_model
    _, target_idx = inputs.inverted.pairs(base)
    return {
        "sweep": sweep, "dataset": base.dataset, "threat_model": threat,
        "eval_inputs": int(base.y.size), "eval_hash": base.hash[:16],
        "probe_train_inputs": int(next(iter(train.values()))["labels"].size) if train else 0,
        "epsilons": eps_values, "seeds": sorted({m.seed for m in refs}),
        "skipped_runs": [f"{s.label}: {s.reason}" for s in disc.skipped]
        + [f"{k}: {v}" for k, v in failures.items()],
        "settings": {"interval": f"{100 * cfg.level:.0f}% leave-one-architecture-out jackknife, "
                                 "t on A - 1 df (SPEC §10)",
                     "n_permutations": cfg.n_permutations, "seed": cfg.seed,
                     "subgroup_measures (target 6)": ", ".join(map(str, cfg.subgroup_measures)),
                     "rtd_setting (target 6)": _rtd_setting(cfg),
                     "inversion_iterations": inputs.iterations,
                     "inversion_targets_per_model": int(target_idx.size),
                     "probe_epochs": cfg.probes.epochs, "probe_batch": cfg.probes.batch_size,
                     "probes_per_model": cfg.probes.num_probes,
                     "attack": f"PGD-{cfg.attack_steps} x{cfg.attack_restarts} "
                               f"{threat} eps={eps_values[-1]:g}"},
        "models": [{"model": m.label, "arch": m.arch, "eps": m.eps, "seed": m.seed,
                    "clean_acc": float((study.clean[m.label]["logits"].argmax(1)
                                        == base.y).mean()),
                    f"robust_acc_at_{eps_values[-1]:g}": study.robust_acc.get(m.label)}
                   for m in refs],
    }


def _rtd_setting(cfg: ReproConfig) -> str:
    """Which RTD setting target 6 used, beside the paper's (RTD's default)."""
    rtd = next((s for s in cfg.subgroup_measures if s.name == "rtd"), None)
    if rtd is None:
        return "not used"
    p = get_measure("rtd").resolve_params(rtd.kwargs)
    paper = p["n_subsamples"] == 10 and p["subsample_size"] == 500
    return (f"{p['n_subsamples']} subsamples x {p['subsample_size']} points, seed {p['seed']}"
            + (" (the paper's)" if paper else " (the paper: 10 x 500; cheaper because the "
               "permutation test recomputes RTD on every permutation)"))


def _rel_loss(f: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.linalg.norm(f - t, axis=1) / np.maximum(np.linalg.norm(t, axis=1), 1e-12)


def _known_values(path: Path, where_by_inputs: Mapping[str, str],
                  label: Mapping[str, str]) -> dict[tuple[str, str, str, str], float]:
    """Pair values of ``pairs.parquet`` that the targets can use (the ``REP_MEASURES`` measures on
    this reproduction's inputs, status ok), keyed for ``StudyData.known``:
    ``(where, spec_key, label_a, label_b) -> value``.

    Args:
        path: the analysis table (absent: nothing is reused).
        where_by_inputs: inputs hash -> "clean" / "inverted" / "inverted_alt".
        label: run id -> model label (the ids of ``StudyData``).
    """
    if not path.exists():
        return {}
    t = ResultStore(path).load()
    t = t[(t["status"] == "ok") & t["inputs_hash"].isin(list(where_by_inputs))
          & t["measure"].isin([s.name for s in REP_MEASURES])  # what the targets compute
          & t["model_a"].isin(list(label)) & t["model_b"].isin(list(label))]
    keys: dict[tuple[str, str], str | None] = {}
    for name, params in set(zip(t["measure"], t["params"], strict=True)):
        try:
            keys[(name, params)] = spec_key(name, json.loads(params))
        except (MeasureInputError, json.JSONDecodeError):  # params this version no longer takes
            keys[(name, params)] = None
    out = {}
    for r in t.itertuples(index=False):
        key = keys[(r.measure, r.params)]
        if key is not None:
            out[(where_by_inputs[r.inputs_hash], key, label[r.model_a], label[r.model_b])] = \
                float(r.value)
    return out


def _log_to_mlflow(sweep: str, files: Sequence[Path], tracking_uri: str) -> None:
    """Attach the report to the sweep's newest analysis run, if one exists."""
    client = tr.make_client(tracking_uri)
    exp = tr.with_retries(client.get_experiment_by_name, sweep)
    if exp is None:
        return
    runs = tr.search_sweep_runs(client, exp.experiment_id, sweep=sweep, role="analysis")
    if not runs:
        log.info("no analysis run for sweep %s: report not logged to MLflow", sweep)
        return
    for f in files:
        tr.with_retries(client.log_artifact, runs[-1].info.run_id, str(f), "reproduction")
