"""A catalogue of malformed specs, arguments and files, each run through the real command lines.

Every case must exit non-zero with one error line on stderr that names the field or file (and,
where there is a closed set, what is allowed), print no traceback, and leave the existing
sweep (MLflow runs) and analysis table (pairs.parquet) exactly as they were. Most cases call the
CLI's ``main(argv)`` in this process (a fresh interpreter costs seconds with torch + MLflow);
`test_real_subprocesses_exit_2_without_traceback` runs one case per CLI as a true subprocess.

docs/reliability.md lists the cases and the behaviour seen.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

# Imported at collection time, outside any capsys capture: analysis's CLI binds sys.stderr as a
# default argument when its module is imported (see docs/reliability.md).
from analysis.__main__ import main as analysis_main
from sweeps.__main__ import main as sweeps_main
from trainables.train import main as train_main

SWEEP = "badinputs-base"


@dataclass(frozen=True)
class Case:
    """One bad input: which CLI, its argv (built from the fixture paths), what stderr must say."""

    id: str
    cli: str  # sweeps | analysis | train
    argv: Callable[[dict[str, Any]], list[str]]
    expect: tuple[str, ...]  # fragments the one error line must contain
    env: tuple[tuple[str, str], ...] = ()


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
    """A real finished 2-cell sweep (sqlite MLflow) and its analysis table, plus bad files."""
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
    ctx["pairs"] = home / "reports" / SWEEP / "pairs.parquet"
    assert ctx["pairs"].is_file()
    _bad_files(ctx)
    return ctx


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
    }.items():
        d = home / name
        d.mkdir()
        for f in good.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        mutate(d)


def _fingerprint(ctx: dict[str, Any]) -> tuple:
    """Every MLflow run (id, status, end time, metrics) + the analysis table's bytes + files."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ctx["uri"])
    runs = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            runs.append((run.info.run_id, run.info.status, run.info.end_time,
                         tuple(sorted(run.data.metrics.items()))))
    files = {}
    for base in ("ckpt_truncated", "ckpt_bad_meta", "ckpt_pickled", "ckpt_no_state"):
        for f in sorted((ctx["home"] / base).iterdir()):
            files[f"{base}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    experiments = sorted(e.name for e in client.search_experiments())
    return (experiments, sorted(runs), hashlib.sha256(ctx["pairs"].read_bytes()).hexdigest(),
            files)


# ---------------------------------------------------------------------------- the catalogue

def _train(*args: str, out: str = "train_out"):
    return lambda ctx: [*args, "--out", str(ctx["home"] / out)]


def _analysis(*args: str):
    return lambda ctx: [*(a.replace("{uri}", ctx["uri"]) for a in args)]


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


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_error_and_changes_nothing(case: Case, populated, capsys,
                                                         monkeypatch):
    monkeypatch.setenv("UNISWEEP_HOME", str(populated["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    argv = case.argv(populated)
    before = _fingerprint(populated)
    capsys.readouterr()
    try:
        code = _main(case.cli)(argv)
    except SystemExit as exc:  # argparse exits by itself
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"exit {code} for {argv}; stderr: {err}"
    assert "Traceback" not in err, err
    lines = _error_lines(err)
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err}"
    print(f"{case.id} -> exit {code}: {lines[0]}")  # shown with pytest -rP
    for fragment in case.expect:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    assert _fingerprint(populated) == before, "a bad input changed existing runs or results"
    assert not (populated["home"] / "PWNED-ckpt").exists()


def test_catalogue_size():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


SUBPROCESS_CASES = ["yaml-syntax", "resume-unknown-sweep", "measure-unknown",
                    "train-cifar-wrong-layout"]


def test_real_subprocesses_exit_2_without_traceback(populated):
    """One case per CLI in a fresh interpreter: exit status 2, one stderr line, no traceback."""
    modules = {"sweeps": "sweeps", "analysis": "analysis", "train": "trainables.train"}
    env = {**os.environ, "UNISWEEP_HOME": str(populated["home"])}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    cases = {c.id: c for c in CASES}
    procs = {}
    before = _fingerprint(populated)
    for case_id in SUBPROCESS_CASES:  # started together: the interpreters import in parallel
        case = cases[case_id]
        procs[case_id] = subprocess.Popen(
            [sys.executable, "-m", modules[case.cli], *case.argv(populated)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for case_id, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case_id, proc.returncode, err)
        assert "Traceback" not in err, (case_id, err)
        lines = _error_lines(err)
        assert len(lines) == 1, (case_id, err)
        for fragment in cases[case_id].expect:
            assert fragment in lines[0], (case_id, fragment, lines[0])
    assert _fingerprint(populated) == before
