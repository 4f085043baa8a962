"""A catalogue of malformed specs, arguments and files, each run through the real command lines.

Every case must exit with status 2 (exactly: a crash exits 1, argparse and ``user_errors`` exit
2), print one error line on stderr that names the field or file (and, where there is a closed
set, what is allowed), print no traceback, and leave everything recorded exactly as it was: the
MLflow runs (ids, statuses, end times, metrics, tags), and every file under the test homes
(``pairs.parquet``, ``models.parquet``, the artifact cache, the MLflow artifact store with the
trials' checkpoints, Ray Tune's storage, the broken checkpoints), compared by sha256 before and
after.

How the cases run: every case calls its CLI's ``main(argv)`` in this process (a fresh
interpreter costs seconds with torch + MLflow); `test_real_subprocesses_exit_2_without_traceback`
runs `SUBPROCESS_CASES` (at least three per CLI, every analysis-side kind) again as true
``python -m ...`` subprocesses.

docs/reliability.md lists the cases and the behaviour seen.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from test_analysis_models import build_sweep

# Imported at collection time, outside any capsys capture: analysis's CLI binds sys.stderr as a
# default argument when its module is imported (see docs/reliability.md).
from analysis.__main__ import main as analysis_main
from sweeps.__main__ import main as sweeps_main
from trainables import tracking as tr
from trainables.train import main as train_main

SWEEP = "badinputs-base"        # a finished 2-cell sweep with its analysis
NOFINISHED = "badinputs-none"   # trial runs that FAILED or are still RUNNING, nothing finished
MIXED = "badinputs-mixed"       # two finished models evaluated on different eval sets
# Other UNISWEEP_HOMEs over the same tracking store, each with one broken analysis folder.
HOMES = ("foreign", "corrupt", "nomodels", "badcache")


@dataclass(frozen=True)
class Case:
    """One bad input: which CLI, its argv (built from the fixture paths), what stderr must say."""

    id: str
    cli: str  # sweeps | analysis | train
    argv: Callable[[dict[str, Any]], list[str]]
    expect: tuple[str, ...]  # fragments the one error line must contain
    home: str | None = None  # one of HOMES: run with that UNISWEEP_HOME


# ---------------------------------------------------------------------------- fixtures


def _base_spec(ctx: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spec = {
        "name": "bad-sweep",
        "dataset": {"name": "digits", "eval_size": 60},
        "archs": ["mlp"],
        "threat_model": "linf",
        "epsilons": [0.0, 0.1],
        "seeds": [0],
        "train": {"epochs": 1, "batch_size": 64, "attack_steps": 1},
        "eval": {"attack_steps": 1, "final_steps": 1, "restarts": 1},
        "tracking": {"uri": ctx["uri"]},
        "storage": str(ctx["home"] / "ray_results"),
    }
    for dotted, value in changes.items():
        node, *path = dotted.split(".")
        target = spec
        for key in [node, *path][:-1]:
            target = target[key]
        if value is _DELETE:
            target.pop([node, *path][-1])
        else:
            target[[node, *path][-1]] = value
    return spec


_DELETE = object()


def _spec_file(ctx: dict[str, Any], file_id: str, text: str | None = None, /,
               **changes: Any) -> str:
    path = ctx["specs"] / f"{file_id}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(_base_spec(ctx, **changes)))
    return str(path)


def _run_spec(file_id: str, text: str | None = None, /, **changes: Any):
    return lambda ctx: ["run", _spec_file(ctx, file_id, text, **changes)]


@pytest.fixture(scope="module")
def populated(tmp_path_factory, ray_session) -> dict[str, Any]:
    """A real finished 2-cell sweep (sqlite MLflow) and its analysis table, other sweeps that
    are wrong in one way each, broken analysis folders, and bad files."""
    from analysis.pipeline import run_analysis
    from sweeps.launch import run_sweep
    from sweeps.spec import load_spec

    home = tmp_path_factory.mktemp("bad-inputs-home")
    ctx: dict[str, Any] = {"home": home, "uri": f"sqlite:///{home / 'mlflow.db'}"}
    ctx["specs"] = home / "specs"
    ctx["specs"].mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNISWEEP_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        spec = load_spec(_spec_file(ctx, "good", **{"name": SWEEP}))
        run_sweep(spec, echo=lambda line: None)
        run_analysis(SWEEP, tracking_uri=ctx["uri"], home=home, actors=0,
                     measures=["linear_cka", "knn_jaccard:k=5", "agreement"], log_mlflow=False)
    ctx["reports"] = home / "reports" / SWEEP
    ctx["pairs"] = ctx["reports"] / "pairs.parquet"
    assert ctx["pairs"].is_file()
    _other_sweeps(ctx)
    _broken_analyses(ctx)
    _bad_files(ctx)
    return ctx


def _other_sweeps(ctx: dict[str, Any]) -> None:
    """NOFINISHED (one FAILED, one RUNNING trial) and MIXED (eval_seed 0 vs 7), in the store."""
    store = {"tracking_uri": ctx["uri"], "artifact_root": str(ctx["home"] / "mlartifacts-built")}
    Path(store["artifact_root"]).mkdir()
    build_sweep(store, NOFINISHED, [], extra=[{"status": "FAILED", "seed": 1},
                                              {"status": "RUNNING", "seed": 2}])
    ctx["mixed_ids"] = sorted(build_sweep(store, MIXED, [("mlp", 0.0, 0)],
                                          extra=[{"eval_seed": 7, "seed": 1}]).values())


def _broken_analyses(ctx: dict[str, Any]) -> None:
    """One UNISWEEP_HOME per broken analysis folder of SWEEP (same tracking store)."""
    root = ctx["home"] / "homes"
    for name in HOMES:
        shutil.copytree(ctx["reports"], root / name / "reports" / SWEEP)
        ctx[f"home:{name}"] = root / name
    folder = {name: root / name / "reports" / SWEEP for name in HOMES}
    # foreign: the pair table of another sweep (its models are the MIXED sweep's runs)
    table = pd.read_parquet(folder["foreign"] / "pairs.parquet")
    ours = sorted(set(table["model_a"]) | set(table["model_b"]))
    rename = dict(zip(ours, ctx["mixed_ids"], strict=True))
    for col in ("model_a", "model_b"):
        table[col] = table[col].map(rename)
    table.to_parquet(folder["foreign"] / "pairs.parquet", index=False)
    # corrupt: pairs.parquet is not a parquet file any more (a truncated copy, a bad disk)
    raw = (folder["corrupt"] / "pairs.parquet").read_bytes()
    (folder["corrupt"] / "pairs.parquet").write_bytes(raw[: len(raw) // 2])
    # nomodels: the models table next to pairs.parquet was deleted
    (folder["nomodels"] / "models.parquet").unlink()
    # badcache: one model's cached artifacts are truncated
    cached = sorted((folder["badcache"] / "cache").glob("*/*_penultimate.npz"))
    assert cached, "no cached artifacts"
    cached[0].write_bytes(cached[0].read_bytes()[:200])
    ctx["bad_cache_file"] = cached[0]


class _Marker:
    """A pickle whose loading would create a file: proof that nothing was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bad_files(ctx: dict[str, Any]) -> None:
    """Dataset dirs and checkpoints that are wrong in one way each."""
    home = ctx["home"]
    (home / "empty_dir").mkdir()
    cifar = home / "cifar_wrong" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    (cifar / "data_batch_1").write_bytes(b"not a pickle at all")
    (cifar / "test_batch").write_bytes(b"not a pickle either")
    # A good checkpoint from a 1-epoch run, then broken copies of it.
    good = home / "ckpt_good"
    assert train_main(["--arch", "mlp", "--epochs", "1", "--eval-size", "30",
                       "--final-eval-steps", "1", "--final-eval-restarts", "1",
                       "--out", str(good)]) == 0
    for name, mutate in {
        "ckpt_truncated": lambda d: (d / "model.safetensors").write_bytes(
            (good / "model.safetensors").read_bytes()[:100]),
        "ckpt_bad_meta": lambda d: (d / "meta.json").write_text("{not json"),
        "ckpt_pickled": lambda d: (d / "model.safetensors").write_bytes(
            pickle.dumps(_Marker(str(home / "PWNED-ckpt")), protocol=4)),
        "ckpt_no_state": lambda d: (d / "train_state.json").unlink(),
        "ckpt_flipped": _flip_tensor_byte,
    }.items():
        d = home / name
        d.mkdir()
        for f in good.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        mutate(d)


def _flip_tensor_byte(d: Path) -> None:
    """One bit flipped inside model.safetensors' tensor data (past its JSON header)."""
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[8 + int.from_bytes(raw[:8], "little") + 5] ^= 0x01
    (d / "model.safetensors").write_bytes(bytes(raw))


_SKIP_SUFFIXES = (".db", ".db-journal", ".db-wal", ".db-shm")


def _fingerprint(ctx: dict[str, Any]) -> tuple:
    """Every MLflow experiment and run (id, status, end time, metrics, tags) plus the sha256 of
    every file under the test home (tables, caches, artifacts, checkpoints, Tune storage)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ctx["uri"])
    runs = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            runs.append((run.info.run_id, run.info.status, run.info.end_time,
                         tuple(sorted(run.data.metrics.items())),
                         tuple(sorted(run.data.tags.items()))))
    files = {}
    for path in sorted(ctx["home"].rglob("*")):
        if path.is_file() and not path.name.endswith(_SKIP_SUFFIXES):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[str(path.relative_to(ctx["home"]))] = digest
    experiments = sorted(e.name for e in client.search_experiments())
    return experiments, sorted(runs), files


# ---------------------------------------------------------------------------- the catalogue

def _train(*args: str, out: str = "train_out"):
    return lambda ctx: [*args, "--out", str(ctx["home"] / out)]


def _analysis(*args: str):
    return lambda ctx: [a.replace("{uri}", ctx["uri"]) for a in args]


CASES = [
    # -- sweep specs (python -m sweeps run SPEC) --
    Case("yaml-syntax", "sweeps", _run_spec("syntax", "name: x\narchs: [mlp\n"),
         ("YAML syntax error", "line")),
    Case("spec-not-mapping", "sweeps", _run_spec("list", "- a\n- b\n"), ("spec", "mapping")),
    Case("spec-missing-file", "sweeps", lambda ctx: ["run", str(ctx["home"] / "nope.yaml")],
         ("nope.yaml", "cannot be read")),
    Case("unknown-top-key", "sweeps", _run_spec("unk", epsilon=[0.1]),
         ("epsilon", "unknown key", "allowed")),
    Case("unknown-nested-key", "sweeps", _run_spec("unk2", **{"train.epoch": 3}),
         ("train.epoch", "unknown key", "epochs")),
    Case("missing-name", "sweeps", _run_spec("noname", name=_DELETE), ("name", "missing")),
    Case("empty-name", "sweeps", _run_spec("emptyname", name=""), ("name", "allowed")),
    Case("name-with-slash", "sweeps", _run_spec("slash", name="a/b"), ("name", "'a/b'", "allowed")),
    Case("epochs-wrong-type", "sweeps", _run_spec("ep-type", **{"train.epochs": "ten"}),
         ("train.epochs", "'ten'", "integer")),
    Case("epochs-zero", "sweeps", _run_spec("ep0", **{"train.epochs": 0}),
         ("train.epochs", "integer >= 1")),
    Case("epochs-float", "sweeps", _run_spec("epf", **{"train.epochs": 2.5}),
         ("train.epochs", "integer")),
    Case("batch-size-one", "sweeps", _run_spec("bs1", **{"train.batch_size": 1}),
         ("train.batch_size", ">= 2")),
    Case("lr-negative", "sweeps", _run_spec("lr", **{"train.lr": -0.1}), ("train.lr", "allowed")),
    Case("optimizer-unknown", "sweeps", _run_spec("opt", **{"train.optimizer": "adamw"}),
         ("train.optimizer", "sgd", "adam")),
    Case("eps-linf-above-1", "sweeps", _run_spec("eps8", epsilons=[0, 8]),
         ("epsilons[1]", "8/255")),
    Case("eps-negative", "sweeps", _run_spec("epsneg", epsilons=[-0.1]),
         ("epsilons[0]", "negative", ">= 0")),
    Case("eps-l2-covers-cube", "sweeps", _run_spec("epsl2", threat_model="l2", epsilons=[9.0]),
         ("epsilons[0]", "l2", "digits")),
    Case("eps-divide-by-zero", "sweeps", _run_spec("eps-div0", epsilons=["8/0"]),
         ("epsilons[0]", "divides by zero")),
    Case("eps-not-a-number", "sweeps", _run_spec("eps-nan", epsilons=["eight"]),
         ("epsilons[0]", "fraction")),
    Case("eps-duplicate", "sweeps", _run_spec("epsdup", epsilons=[0.1, 0.1]),
         ("epsilons[1]", "duplicates", "distinct")),
    Case("eps-empty-axis", "sweeps", _run_spec("epsempty", epsilons=[]),
         ("epsilons", "empty", "non-empty")),
    Case("seeds-duplicate", "sweeps", _run_spec("seeddup", seeds=[0, 0]),
         ("seeds[1]", "duplicates")),
    Case("seeds-string", "sweeps", _run_spec("seedstr", seeds=["a"]), ("seeds[0]", "integer")),
    Case("threat-model-unknown", "sweeps", _run_spec("tm", threat_model="l3"),
         ("threat_model", "l2", "linf")),
    Case("arch-unknown", "sweeps", _run_spec("arch", archs=["resnet9000"]),
         ("archs[0]", "resnet9000", "mlp")),
    Case("arch-duplicate", "sweeps", _run_spec("archdup", archs=["mlp", "mlp"]),
         ("archs[1]", "duplicates")),
    Case("dataset-unknown", "sweeps", _run_spec("ds", **{"dataset.name": "mnist"}),
         ("dataset.name", "mnist", "digits", "cifar10")),
    Case("dataset-root-missing", "sweeps", _run_spec("cifar-noroot", **{"dataset.name": "cifar10"}),
         ("dataset.root", "required for cifar10")),
    Case("dataset-root-not-found", "sweeps",
         _run_spec("cifar-nodir", **{"dataset.name": "cifar10", "dataset.root": "/nonexistent/c10"}),
         ("dataset.root", "/nonexistent/c10", "does not exist")),
    Case("tracking-file-store", "sweeps", _run_spec("filestore", **{"tracking.uri": "file:./mlruns"}),
         ("tracking.uri", "sqlite", "http")),
    Case("resources-cpu-zero", "sweeps", _run_spec("cpu0", **{"resources": {"cpu": 0}}),
         ("resources.cpu", "allowed")),
    Case("max-failures-negative", "sweeps", _run_spec("mf", max_failures=-1),
         ("max_failures", ">= 0")),
    Case("sweep-already-exists", "sweeps", _run_spec("exists", name=SWEEP),
         (SWEEP, "already exists", "resume")),
    # -- sweep commands --
    Case("resume-unknown-sweep", "sweeps", lambda ctx: ["resume", "no-such-sweep"],
         ("no-such-sweep", "no sweep named")),
    Case("status-unknown-sweep", "sweeps", lambda ctx: ["status", "no-such-sweep"],
         ("no-such-sweep", "no sweep named")),
    Case("submit-without-ray-address", "sweeps",
         lambda ctx: ["submit", _spec_file(ctx, "submit")], ("RAY_ADDRESS", "allowed")),
    Case("sweeps-unknown-command", "sweeps", lambda ctx: ["explode"], ("invalid choice", "run")),
    Case("sweeps-missing-argument", "sweeps", lambda ctx: ["run"], ("spec", "required")),
    # -- analysis --
    Case("analyze-unknown-sweep", "analysis", _analysis("run", "no-such-sweep", "--actors", "0"),
         ("no-such-sweep",)),
    Case("measure-unknown", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--measures", "not_a_measure"),
         ("not_a_measure", "linear_cka")),
    Case("measure-bad-param", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--measures", "knn_jaccard:k=banana"),
         ("knn_jaccard", "k")),
    Case("measure-k-at-least-n", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--measures", "knn_jaccard:k=100000"),
         ("k=100000", "N=")),
    Case("input-set-unknown", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--input-sets", "noisy"),
         ("noisy", "clean")),
    Case("actors-negative", "analysis", _analysis("run", SWEEP, "--actors", "-1"),
         ("actors", ">= 0")),
    Case("input-set-mismatch", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--eval-size", "30"),
         ("eval set", "hash", "--eval-size")),
    Case("report-before-analysis", "analysis", _analysis("report", "no-such-sweep"),
         ("no-such-sweep", "python -m analysis run")),
    Case("analysis-bad-int-arg", "analysis", _analysis("run", SWEEP, "--actors", "two"),
         ("--actors", "invalid int")),
    Case("measure-unknown-param", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--measures", "knn_jaccard:q=3"),
         ("knn_jaccard", "unknown parameter", "'q'", "allowed", "'k'")),
    Case("analyze-no-finished-runs", "analysis", _analysis("run", NOFINISHED, "--actors", "0"),
         (NOFINISHED, "no finished model", "FAILED", "trial failed", "trial still running")),
    Case("analyze-mixed-eval-sets", "analysis", _analysis("run", MIXED, "--actors", "0"),
         ("digits", "2 different eval sets", "eval_seed=0", "eval_seed=7", "--data-seed")),
    Case("analyze-table-from-other-sweep", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--tracking-uri", "{uri}"),
         ("pairs.parquet", "2 model(s) that are not runs of sweep", SWEEP, "allowed"),
         home="foreign"),
    Case("report-table-from-other-sweep", "analysis",
         _analysis("report", SWEEP, "--tracking-uri", "{uri}"),
         ("pairs.parquet", "not runs of sweep", SWEEP, "allowed"), home="foreign"),
    Case("analyze-unreadable-parquet", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--tracking-uri", "{uri}"),
         ("pairs.parquet", "not a readable result table", "allowed"), home="corrupt"),
    Case("report-unreadable-parquet", "analysis",
         _analysis("report", SWEEP, "--tracking-uri", "{uri}"),
         ("pairs.parquet", "not a readable result table", "allowed"), home="corrupt"),
    Case("report-models-table-missing", "analysis",
         _analysis("report", SWEEP, "--tracking-uri", "{uri}"),
         ("models.parquet", "is missing", f"python -m analysis run {SWEEP}"), home="nomodels"),
    Case("analyze-cache-file-corrupt", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--tracking-uri", "{uri}",
                   "--measures", "procrustes_sim"),
         ("_penultimate.npz", "cannot read cached model artifacts", "allowed", "delete"),
         home="badcache"),
    Case("analyze-epoch-beyond-training", "analysis",
         _analysis("run", SWEEP, "--actors", "0", "--tracking-uri", "{uri}", "--epoch", "99"),
         ("epoch 99 is not available", SWEEP, "checkpoints of epochs", "allowed")),
    # -- single training runs (python -m trainables.train) --
    Case("train-arch-unknown", "train", _train("--arch", "nope"), ("arch", "nope", "mlp")),
    Case("train-dataset-unknown", "train", _train("--dataset", "svhn"),
         ("dataset", "svhn", "digits")),
    Case("train-eps-above-1", "train", _train("--eps", "2"), ("eps",)),
    Case("train-epochs-zero", "train", _train("--epochs", "0"), ("epochs",)),
    Case("train-threat-model", "train", _train("--threat-model", "l3"), ("threat_model", "l3")),
    Case("train-cifar-no-dir", "train",
         _train("--dataset", "cifar10", "--data-root", "/nonexistent/c10"),
         ("/nonexistent/c10", "cifar-10-batches-py")),
    Case("train-cifar-empty-dir", "train",
         lambda ctx: ["--dataset", "cifar10", "--data-root", str(ctx["home"] / "empty_dir"),
                      "--out", str(ctx["home"] / "o1")],
         ("empty_dir", "no CIFAR-10 data", "data_batch_1")),
    Case("train-cifar-wrong-layout", "train",
         lambda ctx: ["--dataset", "cifar10", "--data-root", str(ctx["home"] / "cifar_wrong"),
                      "--out", str(ctx["home"] / "o2")],
         ("data_batch_1", "cannot read CIFAR-10 batch")),
    Case("train-resume-truncated-ckpt", "train",
         lambda ctx: ["--arch", "mlp", "--epochs", "2", "--resume",
                      "--out", str(ctx["home"] / "ckpt_truncated")],
         ("model.safetensors",)),
    Case("train-resume-bad-meta", "train",
         lambda ctx: ["--arch", "mlp", "--epochs", "2", "--resume",
                      "--out", str(ctx["home"] / "ckpt_bad_meta")],
         ("meta.json", "JSON")),
    Case("train-resume-pickled-ckpt", "train",
         lambda ctx: ["--arch", "mlp", "--epochs", "2", "--resume",
                      "--out", str(ctx["home"] / "ckpt_pickled")],
         ("model.safetensors", "pickle")),
    Case("train-resume-no-train-state", "train",
         lambda ctx: ["--arch", "mlp", "--epochs", "2", "--resume",
                      "--out", str(ctx["home"] / "ckpt_no_state")],
         ("train_state.json", "missing")),
    Case("train-resume-flipped-byte", "train",
         lambda ctx: ["--arch", "mlp", "--epochs", "2", "--resume",
                      "--out", str(ctx["home"] / "ckpt_flipped")],
         ("model.safetensors", "sha256", "does not match", "meta.json")),
    Case("train-resume-nothing-there", "train",
         lambda ctx: ["--arch", "mlp", "--epochs", "2", "--resume",
                      "--out", str(ctx["home"] / "never_written")],
         ("never_written",)),
    Case("train-bad-float-arg", "train", _train("--eps", "lots"), ("--eps", "invalid float")),
]


def _main(cli: str):
    return {"sweeps": sweeps_main, "analysis": analysis_main, "train": train_main}[cli]


def _error_lines(err: str) -> list[str]:
    """stderr lines that are not argparse's usage block or logging noise from libraries."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    usage = [i for i, ln in enumerate(lines) if ln.startswith("usage:")]
    if usage:  # argparse: "usage: ..." (possibly wrapped) then "prog: error: ..."
        lines = [ln for ln in lines[usage[0]:] if "error:" in ln]
    return lines


def _environment(ctx: dict[str, Any], case: Case) -> dict[str, str]:
    """What a case runs with: its UNISWEEP_HOME, no tracking URI or Ray address from outside."""
    home = ctx[f"home:{case.home}"] if case.home else ctx["home"]
    return {"UNISWEEP_HOME": str(home)}


def _check_error(case: Case, code: object, err: str) -> str:
    assert code == 2, f"{case.id}: exit {code!r} (want 2); stderr:\n{err}"
    assert "Traceback" not in err, f"{case.id}:\n{err}"
    lines = _error_lines(err)
    assert len(lines) == 1, f"{case.id}: expected one error line, got {len(lines)}:\n{err}"
    for fragment in case.expect:
        assert fragment in lines[0], f"{case.id}: {fragment!r} not in: {lines[0]}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_error_and_changes_nothing(case: Case, populated, capsys,
                                                         monkeypatch):
    for key, value in _environment(populated, case).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = case.argv(populated)
    before = _fingerprint(populated)
    capsys.readouterr()
    try:
        code = _main(case.cli)(argv)
    except SystemExit as exc:  # argparse exits by itself
        code = exc.code
    line = _check_error(case, code, capsys.readouterr().err)
    print(f"{case.id} -> exit {code}: {line}")  # shown with pytest -rP
    assert _fingerprint(populated) == before, "a bad input changed existing runs or results"
    assert not (populated["home"] / "PWNED-ckpt").exists()


def test_catalogue_size():
    assert len(CASES) >= 70
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.cli for c in CASES} == set(MODULES)


MODULES = {"sweeps": "sweeps", "analysis": "analysis", "train": "trainables.train"}
# Run again as real `python -m ...` subprocesses: at least three per CLI, and every kind of
# analysis-side input (store, table, cache, eval sets).
SUBPROCESS_CASES = [
    "yaml-syntax", "eps-linf-above-1", "resume-unknown-sweep", "sweeps-unknown-command",
    "measure-unknown", "measure-unknown-param", "analyze-no-finished-runs",
    "analyze-mixed-eval-sets", "analyze-table-from-other-sweep", "report-unreadable-parquet",
    "analyze-cache-file-corrupt",
    "train-cifar-wrong-layout", "train-resume-pickled-ckpt", "train-resume-flipped-byte",
    "train-bad-float-arg",
]


def test_real_subprocesses_exit_2_without_traceback(populated):
    """The cases above in fresh interpreters: exit status 2, one stderr line, no traceback."""
    cases = {c.id: c for c in CASES}
    assert {cases[c].cli for c in SUBPROCESS_CASES} == set(MODULES)
    before = _fingerprint(populated)

    def run(case_id: str) -> tuple[str, int, str]:
        case = cases[case_id]
        env = {**os.environ, **_environment(populated, case)}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([sys.executable, "-m", MODULES[case.cli], *case.argv(populated)],
                              env=env, capture_output=True, text=True, timeout=300)
        return case_id, proc.returncode, proc.stderr

    # Two at a time: the interpreters' imports overlap, and this 2-core machine stays usable.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, SUBPROCESS_CASES))
    for case_id, code, err in results:
        _check_error(cases[case_id], code, err)
    assert _fingerprint(populated) == before
    assert not (populated["home"] / "PWNED-ckpt").exists()


def test_a_deleted_cache_file_is_recomputed_and_the_table_is_untouched(populated, tmp_path):
    """Not an error: the artifact cache is a cache. A deleted file is recomputed, bit for bit,
    and a re-run with every pair stored writes no row."""
    import numpy as np

    from analysis.pipeline import run_analysis

    home = tmp_path / "home"
    shutil.copytree(populated["reports"], home / "reports" / SWEEP)
    victim = sorted((home / "reports" / SWEEP / "cache").glob("*/*_penultimate.npz"))[0]
    with np.load(victim) as z:
        before = {k: z[k] for k in z.files}
    victim.unlink()
    pairs = home / "reports" / SWEEP / "pairs.parquet"
    digest = hashlib.sha256(pairs.read_bytes()).hexdigest()
    res = run_analysis(SWEEP, tracking_uri=populated["uri"], home=home, actors=0,
                       measures=["linear_cka", "knn_jaccard:k=5", "agreement"], log_mlflow=False)
    assert res.new_rows == 0 and res.error_rows == 0
    assert hashlib.sha256(pairs.read_bytes()).hexdigest() == digest
    with np.load(victim) as z:
        assert set(z.files) == set(before)
        for k in z.files:
            np.testing.assert_array_equal(z[k], before[k])
