"""The paper's experiments on a finished sweep and an honest report on SPEC §8's eight targets.

``run_reproduction(sweep)`` discovers the sweep's models (``analysis.models``), reloads the eval
set with the options the trials used, extracts each model's features and logits once on the
clean eval set, on the training split (for probes) and on every model's inverted images
(``analysis.extract`` with the ``clean``, ``train_split`` and ``inverted`` input sets; cached and
shared with ``python -m analysis run``), takes clean and inverted pair values already in
``pairs.parquet``, trains the probes and measures robust accuracy, then hands the arrays to
``analysis.targets.evaluate_targets`` and writes ``reports/<sweep>/reproduction.{md,json}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from analysis.probes import run_probes
from analysis.targets import (
    FAILS,
    HOLDS,
    INVERSION_NOT_DISCRIMINATIVE,
    REP_MEASURES,
    UNTESTABLE,
    ModelInfo,
    ReproConfig,
    StudyData,
    TargetResult,
    evaluate_targets,
    spec_key,
)

__all__ = ["ReproConfig", "ModelInfo", "StudyData", "TargetResult", "evaluate_targets",
           "write_report", "run_reproduction", "HOLDS", "FAILS", "UNTESTABLE"]

log = logging.getLogger(__name__)


# --- report ----------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v and "ci95" in v:
        if v["mean"] is None:
            return "n/a (fewer than two models)"
        ci = v["ci95"]
        ci_txt = f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else " (no interval: one seed/pair)"
        extra = ", ".join(f"{k}={v[k]}" for k in ("n_pairs", "n_models", "n_seeds") if k in v)
        return f"{v['mean']:.4f}{ci_txt}" + (f" ({extra})" if extra else "")
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and v and all(isinstance(x, float | int) for x in v):
        return "[" + ", ".join(_fmt(x) if isinstance(x, float) else str(x) for x in v) + "]"
    return str(v)


def _figure_lines(figs: Mapping[str, Any], depth: int = 0) -> list[str]:
    lines = []
    pad = "  " * depth
    for k, v in figs.items():
        if isinstance(v, dict) and not ("mean" in v and "ci95" in v) and v:
            lines.append(f"{pad}- {k}:")
            lines.extend(_figure_lines(v, depth + 1))
        elif isinstance(v, list) and v and isinstance(v[0], dict) and "mean" not in v[0]:
            lines.append(f"{pad}- {k}:")
            lines.extend(f"{pad}  - " + ", ".join(f"{a}={_fmt(b)}" for a, b in row.items())
                         for row in v)
        elif isinstance(v, list) and v and isinstance(v[0], dict | type(None)):
            lines.append(f"{pad}- {k}: " + "; ".join(_fmt(x) for x in v))
        else:
            lines.append(f"{pad}- {k}: {_fmt(v)}")
    return lines


def write_report(results: Sequence[TargetResult], directory: str | Path, *,
                 header: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``reproduction.md`` and ``reproduction.json`` into ``directory``.

    Args:
        results: the eight target results.
        directory: output folder (created).
        header: context shown first (sweep, dataset, models table rows, settings).

    Returns:
        ``(md_path, json_path)``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"header": dict(header), "targets": [asdict(r) for r in results]}
    json_path = out / "reproduction.json"
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default))
    lines = [f"# Reproduction report: sweep `{header.get('sweep', '?')}`", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in header.items() if k not in ("models", "sweep")]
    if header.get("models"):
        cols = list(header["models"][0])
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in header["models"]]
    lines += ["", "Statistics: means over model pairs; 95% intervals are percentile bootstraps "
              "that resample models (architecture x seed cells); group differences resample each "
              "group independently. A target holds only if its interval says so.", "",
              "| # | target | status |", "|---|---|---|"]
    lines += [f"| {r.number} | {r.title} | **{r.status}** |" for r in results]
    for r in results:
        lines += ["", f"## {r.number}. {r.title}: **{r.status}**", "", r.reason, ""]
        lines += _figure_lines(r.figures)
    md_path = out / "reproduction.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --- orchestration -------------------------------------------------------------------------------


def _robust_at(refs, X: np.ndarray, y: np.ndarray, eps: float, cfg: ReproConfig,
               tracking_uri: str, *, progress=None) -> dict[str, float]:
    """Robust accuracy of every model under the same PGD attack at ``eps`` (target 1)."""
    import torch

    from analysis.models import load_model
    from trainables.attacks import robust_accuracy

    out = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for ref in refs:
        model, _ = load_model(ref, tracking_uri=tracking_uri)
        gen = torch.Generator().manual_seed(cfg.seed)
        out[ref.label] = robust_accuracy(
            model.to(device), torch.from_numpy(X), torch.from_numpy(y), norm=ref.threat_model,
            eps=eps, steps=cfg.attack_steps, restarts=cfg.attack_restarts, generator=gen)
        if progress:
            progress("robust accuracy", len(out), len(refs))
    return out


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
    from analysis.measures._base import MeasureInputError
    from analysis.store import ResultStore

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


def run_reproduction(sweep: str, *, tracking_uri: str | None = None,
                     reports_root: str | Path | None = None, config: ReproConfig | None = None,
                     data_root: str | None = None, data_seed: int | None = None,
                     eval_size: int | None = None, max_train: int | None = None,
                     use_ray: bool = False,
                     progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Run inversion, probes and subgroups on a sweep and write the reproduction report.

    Args:
        sweep: sweep name (MLflow experiment).
        tracking_uri: MLflow store (default: ``trainables.tracking.default_paths()``).
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
    from analysis.extract import ArtifactCache, extract_all
    from analysis.inputs import CleanInputs, TrainSplitInputs, load_eval_sets
    from analysis.inversion import InvertedInputs
    from analysis.models import discover_models
    from trainables import tracking as tr
    from trainables.errors import UserError

    from analysis.pipeline import resolve_tracking_uri

    cfg = config or ReproConfig()
    paths = tr.default_paths()
    tracking_uri = resolve_tracking_uri(tracking_uri)
    out_dir = Path(reports_root or paths.reports) / sweep
    disc = discover_models(sweep, tracking_uri=tracking_uri)
    refs = list(disc.models)
    if not refs:
        raise UserError(f"sweep {sweep!r} has no finished models to analyse\n{disc.describe()}")
    groups = sorted({(m.dataset, m.threat_model) for m in refs})
    if len(groups) > 1:
        log.warning("sweep has %d (dataset, threat model) groups; reporting on %s", len(groups),
                    groups[0])
    dataset, threat = groups[0]
    refs = [m for m in refs if (m.dataset, m.threat_model) == (dataset, threat)]
    base = load_eval_sets(refs, data_root=data_root, eval_size=eval_size,
                          data_seed=data_seed)[dataset]
    train_set = TrainSplitInputs(max_train=max_train, seed=int(base.options.get("seed") or 0))
    testable = dataset not in INVERSION_NOT_DISCRIMINATIVE
    targets, iterations = cfg.inversion_targets, cfg.inversion_iterations
    if targets is None and not testable:  # SPEC §9: only a convergence check, kept small
        targets = min(cfg.inversion_check_targets, len(base.y))
        iterations = min(cfg.inversion_check_iterations, iterations)
    inv = InvertedInputs(iterations=iterations, num_targets=targets)
    inv.size(base)  # a num_targets above the eval set's size stops here, before any work
    isets = [CleanInputs(), train_set, inv]
    inv_alt = None
    if testable and cfg.inversion_iterations_alt:
        inv_alt = InvertedInputs(iterations=cfg.inversion_iterations_alt, num_targets=targets)
        isets.append(inv_alt)
    cache = ArtifactCache(out_dir / "cache")
    blocks, failures = extract_all(refs, isets, bases={dataset: base}, cache=cache,
                                   tracking_uri=tracking_uri, use_ray=use_ray,
                                   progress=progress)
    refs = [m for m in refs if m.run_id not in failures]
    label = {m.run_id: m.label for m in refs}

    def arrays(iset, source=None) -> dict[str, dict[str, np.ndarray]]:
        key = iset.key(base, source)
        blk = next((b for b in blocks if b.inputs_key == key), None)
        if blk is None:
            return {}
        return {label[r]: ArtifactCache.load(p) for r, p in blk.artifacts.items() if r in label}

    clean = arrays(CleanInputs())
    train = arrays(train_set)
    study = StudyData(dataset, base.num_classes,
                      [ModelInfo(m.label, m.label, m.arch, m.eps, m.seed) for m in refs], clean)
    where = {base.hash: "clean"}
    where.update({inv.key(base, m): "inverted" for m in refs})
    if inv_alt is not None:
        where.update({inv_alt.key(base, m): "inverted_alt" for m in refs})
    study.known = _known_values(out_dir / "pairs.parquet", where, label)
    seed_idx, target_idx = inv.pairs(base)
    inverted: dict[str, dict[str, np.ndarray]] = {}
    for m in refs:
        got = arrays(inv, m)
        if m.label in got:
            inverted[m.label] = {k: v["features"] for k, v in got.items()}
            loss = _rel_loss(got[m.label]["features"], clean[m.label]["features"][target_idx])
            study.inversion_summary[m.label] = {
                "median": float(np.median(loss)), "p90": float(np.quantile(loss, 0.9)),
                "frac_below_0.1": float(np.mean(loss < 0.1)), "n": int(loss.size),
                "iterations": iterations}
        if inv_alt is not None:
            got = arrays(inv_alt, m)
            if got:
                study.inverted_alt = study.inverted_alt or {}
                study.inverted_alt[m.label] = {k: v["features"] for k, v in got.items()}
    study.inverted = inverted or None
    eps_values = sorted({m.eps for m in refs})
    study.robust_acc = _robust_at(refs, base.X, base.y, eps_values[-1], cfg, tracking_uri,
                                  progress=progress)
    for e in {eps_values[0], eps_values[-1]}:
        ids = [m.label for m in refs if m.eps == e]
        if len(ids) >= 2 and all(i in train for i in ids):
            study.probes[f"eps={e:g}"] = run_probes(
                {i: train[i]["features"] for i in ids}, train[ids[0]]["labels"],
                {i: clean[i]["features"] for i in ids}, base.y, num_classes=base.num_classes,
                eval_ids=base.indices, head_logits={i: clean[i]["logits"] for i in ids},
                config=cfg.probes)
    results = evaluate_targets(study, config=cfg)
    header = {
        "sweep": sweep, "dataset": dataset, "threat_model": threat,
        "eval_inputs": int(base.y.size), "eval_hash": base.hash[:16],
        "probe_train_inputs": int(next(iter(train.values()))["labels"].size) if train else 0,
        "epsilons": eps_values, "seeds": sorted({m.seed for m in refs}),
        "pair_values_available_from_analysis_table": len(study.known),
        "skipped_runs": [f"{s.label}: {s.reason}" for s in disc.skipped]
        + [f"{k}: {v}" for k, v in failures.items()],
        "settings": {"n_bootstrap": cfg.n_bootstrap, "n_permutations": cfg.n_permutations,
                     "seed": cfg.seed, "inversion_iterations": iterations,
                     "inversion_targets_per_model": int(target_idx.size),
                     "probe_epochs": cfg.probes.epochs, "probe_batch": cfg.probes.batch_size,
                     "probes_per_model": cfg.probes.num_probes,
                     "attack": f"PGD-{cfg.attack_steps} x{cfg.attack_restarts} "
                               f"{threat} eps={eps_values[-1]:g}"},
        "models": [{"model": m.label, "arch": m.arch, "eps": m.eps, "seed": m.seed,
                    "clean_acc": float((clean[m.label]["logits"].argmax(1) == base.y).mean()),
                    f"robust_acc@{eps_values[-1]:g}": study.robust_acc.get(m.label)}
                   for m in refs],
    }
    md, js = write_report(results, out_dir, header=header)
    _log_to_mlflow(sweep, [md, js], tracking_uri)
    return md


def _log_to_mlflow(sweep: str, files: Sequence[Path], tracking_uri: str) -> None:
    """Attach the report to the sweep's newest analysis run, if one exists."""
    from trainables import tracking as tr

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
