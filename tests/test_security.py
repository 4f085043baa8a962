"""Security defaults that need no running service: no pickle is ever loaded from a checkpoint or
an artifact, token auth is never switched off by library code, services default to loopback, and
no secret is committed. docs/security.md explains each rule; the live checks (ports actually
bound, 401 without the token) are in tests/integration/test_security.py."""

from __future__ import annotations

import ast
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch

from trainables.errors import CheckpointError, DataError

REPO = Path(__file__).resolve().parents[1]


class _Marker:
    """Unpickling this object creates ``path``: the file's existence would prove code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _good_checkpoint(directory: Path) -> Path:
    from trainables.checkpoints import save_checkpoint
    from trainables.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    meta = {"dataset": "digits", "threat_model": "linf", "eps": 0.0, "seed": 0, "epoch": 1,
            "epochs": 1, "metrics": {}, "data_hash": "0" * 64}
    return save_checkpoint(directory, model, meta, train_state={"epoch": 1, "rng": torch.ones(3)})


def _payloads(marker: Path) -> dict[str, bytes]:
    """Files that would run code if unpickled: protocols 0, 2 and 5, and a torch.save zip."""
    out = {f"pickle-protocol-{p}": pickle.dumps(_Marker(marker), protocol=p) for p in (0, 2, 5)}
    buf = marker.parent / "torch_save.pt"
    torch.save({"state": _Marker(marker)}, buf)
    out["torch-save-zip"] = buf.read_bytes()
    buf.unlink()
    return out


@pytest.mark.parametrize("target", ["model.safetensors", "train_state.safetensors"])
def test_pickled_checkpoint_files_are_refused_and_never_executed(tmp_path, target):
    from trainables.checkpoints import load_checkpoint, load_train_state

    marker = tmp_path / "PWNED"
    for name, payload in _payloads(marker).items():
        ckpt = _good_checkpoint(tmp_path / name)
        (ckpt / target).write_bytes(payload)
        with pytest.raises(CheckpointError) as err:
            if target == "model.safetensors":
                load_checkpoint(ckpt)
            else:
                load_train_state(ckpt)
        assert target in str(err.value), (name, str(err.value))
        assert not marker.exists(), f"{name}: unpickling ran code"


def test_pickled_checkpoint_artifact_in_mlflow_is_refused_by_the_analysis(tmp_path, mlflow_store):
    """The analysis path: a trial run whose logged checkpoint/model.safetensors is a pickle."""
    from mlflow import MlflowClient

    from analysis.inputs import ModelRef, load_model

    marker = tmp_path / "PWNED"
    ckpt = _good_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(_Marker(marker), protocol=4))
    client = MlflowClient(tracking_uri=mlflow_store["tracking_uri"])
    exp = client.create_experiment("sec", artifact_location=Path(
        mlflow_store["artifact_root"]).as_uri())
    run = client.create_run(exp, tags={"unisweep.sweep": "sec", "unisweep.role": "trial"})
    for name in ("model.safetensors", "meta.json"):
        client.log_artifact(run.info.run_id, str(ckpt / name), "checkpoint")
    client.set_terminated(run.info.run_id, "FINISHED")
    ref = ModelRef(run_id=run.info.run_id, label="mlp-e0-s0", arch="mlp", width=1.0,
                   dataset="digits", threat_model="linf", eps=0.0, seed=0, clean_acc=None,
                   robust_acc=None,
                   checkpoint_uri=f"{run.info.artifact_uri}/checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_model(ref, tracking_uri=mlflow_store["tracking_uri"])
    assert "model.safetensors" in str(err.value) and run.info.run_id in str(err.value)
    assert not marker.exists()


def test_malicious_cifar_batch_is_refused_and_never_executed(tmp_path):
    """CIFAR-10's own format is a pickle: only plain data types may come out of it."""
    from trainables.data import load_dataset

    marker = tmp_path / "PWNED"
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    evil = pickle.dumps({b"data": _Marker(marker), b"labels": [0]}, protocol=2)
    (d / "data_batch_1").write_bytes(evil)
    (d / "test_batch").write_bytes(evil)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_1" in str(err.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- static checks


def _repo_files() -> list[Path]:
    """Files git would commit: tracked plus untracked-but-not-ignored."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=REPO, capture_output=True, check=True).stdout
    paths = [REPO / p for p in out.decode().split("\0") if p]
    return [p for p in paths if p.is_file() and p.stat().st_size < 2_000_000]


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (UnicodeDecodeError, OSError):
        return None


_LIBRARY_DIRS = ("sweeps", "trainables", "analysis", "bench", "scripts")


def _library_files() -> list[Path]:
    files = [p for p in _repo_files() if p.relative_to(REPO).parts[0] in _LIBRARY_DIRS]
    files += [REPO / n for n in ("Makefile", "cluster.yaml") if (REPO / n).is_file()]
    assert any(p.suffix == ".py" for p in files), "no library sources found"
    return files


def test_library_code_never_disables_ray_token_auth():
    """Only tests may set RAY_AUTH_MODE=disabled (tests/conftest.py); real clusters keep tokens."""
    offenders = []
    for path in _library_files():
        text = _text(path) or ""
        for match in re.finditer(r"RAY_AUTH_MODE[\"']?\s*[\]=:,)]*\s*[\"']?(\w+)", text):
            if match.group(1).lower() not in ("token",):
                offenders.append(f"{path.relative_to(REPO)}: {match.group(0)}")
        if re.search(r"AUTH_MODE[\"']?\s*:\s*[\"']disabled", text):
            offenders.append(f"{path.relative_to(REPO)}: system_config AUTH_MODE disabled")
    assert not offenders, offenders


_WIDE = re.compile(r"(dashboard[-_]host|--host)[\"']?\s*[= ,:]\s*[\"']?([\w.:\[\]]+)")


def wide_binds(name: str, text: str) -> list[str]:
    """Binds to all interfaces in one file's text, except the sanctioned one: in cluster.yaml,
    the team MLflow server on the head (the GPU workers log to it), and only when the same
    command runs MLflow's basic-auth app and sets MLflow's Host-header allow-list."""
    wide = []
    for match in _WIDE.finditer(text):
        if match.group(2) not in ("0.0.0.0", "::", "[::]"):
            continue
        # the shell command around the match: from the YAML list item's "- " to the next one
        start = text.rfind("\n  - ", 0, match.start())
        end = text.find("\n  - ", match.end())
        command = text[start:end if end > 0 else len(text)]
        if (name == "cluster.yaml" and match.group(1) == "--host"
                and "mlflow server --app-name basic-auth" in command
                and "--allowed-hosts" in command):
            continue
        wide.append(f"{name}: {match.group(0)}")
    return wide


def test_services_default_to_loopback():
    """`python -m sweeps ui` and any Ray dashboard the project configures bind 127.0.0.1; the one
    wide bind (the team MLflow server) runs with basic auth."""
    from ray.scripts.scripts import start as ray_start

    from sweeps.__main__ import _parser

    assert _parser().parse_args(["ui"]).host == "127.0.0.1"
    # `ray start --head` without --dashboard-host (what cluster.yaml relies on) stays local.
    option = next(p for p in ray_start.params if p.name == "dashboard_host")
    assert option.default == "127.0.0.1"
    wide = []
    for path in _library_files():
        wide += wide_binds(str(path.relative_to(REPO)), _text(path) or "")
    assert not wide, wide


def test_the_wide_bind_check_fails_without_auth():
    """The check above would fail on a cluster.yaml whose MLflow server binds 0.0.0.0 without
    the basic-auth app (or without the Host allow-list), and on 0.0.0.0 anywhere else."""
    text = (REPO / "cluster.yaml").read_text()
    assert "mlflow server --app-name basic-auth" in text
    assert wide_binds("cluster.yaml", text) == []
    assert wide_binds("cluster.yaml", text.replace(" --app-name basic-auth", ""))
    assert wide_binds("cluster.yaml", text.replace("--allowed-hosts", "--allowed-origins"))
    assert wide_binds("Makefile", "ui:\n\tmlflow server --host 0.0.0.0 --app-name basic-auth")
    assert wide_binds("cluster.yaml", text + "\n  - ray start --head --dashboard-host=0.0.0.0\n")


def test_team_mlflow_server_takes_its_credentials_from_the_environment():
    """cluster.yaml: the server's admin and the sweeps' user get their passwords from Secrets
    Manager into environment variables on each node; no file in the repo or on a node holds
    one (the env file and the auth config carry names and paths only)."""
    import yaml

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    server = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(server) == 1, server
    server = server[0]
    for var, secret in (("MLFLOW_AUTH_ADMIN_PASSWORD", "UNISWEEP_MLFLOW_ADMIN_SECRET"),
                        ("MLFLOW_TRACKING_PASSWORD", "UNISWEEP_MLFLOW_PASSWORD_SECRET"),
                        ("MLFLOW_BACKEND_URI", "UNISWEEP_MLFLOW_DB_SECRET")):
        assert f'secret {var} "${secret}"' in server, var
    assert "aws secretsmanager get-secret-value" in server
    assert "fresh MLFLOW_FLASK_SERVER_SECRET_KEY" in server  # CSRF key, new per start
    assert "MLFLOW_AUTH_CONFIG_PATH=~/mlflow-auth.ini" in server
    assert "scripts/mlflow_user.py" in server  # creates the sweeps' user from the environment
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert len(start) == 1 and \
            'secret MLFLOW_TRACKING_PASSWORD "$UNISWEEP_MLFLOW_PASSWORD_SECRET"' in start[0], key
    written = " ".join(c for c in config["setup_commands"] + config["head_setup_commands"]
                       if "printf" in c)
    assert "MLFLOW_TRACKING_USERNAME=unisweep" in written and "database_uri = sqlite" in written
    assert not re.search(r"(?i)password\s*[=:]\s*\S", written.replace(
        "MLFLOW_TRACKING_USERNAME", "")), written


# Every unpickling entry point a library module could reach for, by module alias.
_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib"}
_PICKLE_CALLS = {"load", "loads", "Unpickler"}
# The one sanctioned unpickler: CIFAR-10's batches are pickles by format, read with a subclass
# whose find_class admits only numpy's array reconstruction (trainables/data.py).
_UNPICKLER_ALLOWED = {("trainables/data.py", "_NumpyOnlyUnpickler")}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unpickling_sites(source: str, rel: str) -> list[str]:
    """Lines of ``source`` that could unpickle: ``pickle.load(s)``/``Unpickler`` (and dill,
    joblib, ...), ``torch.load`` without ``weights_only=True``, ``pandas.read_pickle``, any
    ``allow_pickle`` that is not literally False, and Unpickler subclasses not allow-listed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module in _PICKLE_MODULES:
            names = {a.name for a in node.names} & _PICKLE_CALLS
            if names:
                found.append(f"{where}: from {node.module} import {sorted(names)}")
        if isinstance(node, ast.ClassDef):
            bases = {_dotted(b) for b in node.bases}
            if any(b.rsplit(".", 1)[-1] == "Unpickler" for b in bases) and \
                    (rel, node.name) not in _UNPICKLER_ALLOWED:
                found.append(f"{where}: class {node.name}({', '.join(sorted(bases))})")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        module, _, attr = name.rpartition(".")
        kwargs = {k.arg: k.value for k in node.keywords}
        if module in _PICKLE_MODULES and attr in _PICKLE_CALLS:
            found.append(f"{where}: {name}(...)")
        if name == "torch.load" and not _true(kwargs.get("weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if attr == "read_pickle":
            found.append(f"{where}: {name}(...)")
        if "allow_pickle" in kwargs and not (isinstance(kwargs["allow_pickle"], ast.Constant)
                                             and kwargs["allow_pickle"].value is False):
            found.append(f"{where}: {name}(allow_pickle={ast.unparse(kwargs['allow_pickle'])})")
    return found


def test_library_code_never_unpickles_outside_the_cifar_reader():
    """No pickle.load, torch.load without weights_only=True or allow_pickle=True in library
    code; the only Unpickler is the CIFAR reader's allow-listed one."""
    offenders, unpicklers = [], set()
    for path in _library_files():
        if path.suffix != ".py":
            continue
        rel = str(path.relative_to(REPO))
        source = path.read_text()
        offenders += unpickling_sites(source, rel)
        unpicklers |= {(rel, n.name) for n in ast.walk(ast.parse(source))
                       if isinstance(n, ast.ClassDef)
                       and any("Unpickler" in ast.unparse(b) for b in n.bases)}
    assert not offenders, offenders
    assert unpicklers == _UNPICKLER_ALLOWED, unpicklers  # the allow-list is not stale


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.load(f)",
    "import pickle\nx = pickle.loads(b)",
    "import pickle\npickle.Unpickler(f).load()",
    "from pickle import loads\n",
    "import pickle as pkl\nclass U(pickle.Unpickler):\n    pass",
    "import torch\ntorch.load(p)",
    "import torch\ntorch.load(p, weights_only=False)",
    "import torch\ntorch.load(p, map_location='cpu', weights_only=flag)",
    "import numpy as np\nnp.load(p, allow_pickle=True)",
    "import numpy as np\nnp.load(p, allow_pickle=flag)",
    "import pandas as pd\npd.read_pickle(p)",
    "import joblib\njoblib.load(p)",
])
def test_unpickling_scan_catches_what_it_should(snippet):
    assert unpickling_sites(snippet, "analysis/x.py"), snippet


def test_unpickling_scan_accepts_safe_loads():
    safe = ("import torch, numpy as np, pickle\n"
            "torch.load(p, weights_only=True)\n"
            "np.load(p, allow_pickle=False)\n"
            "np.load(p)\n"
            "pickle.dumps(obj)\n")
    assert unpickling_sites(safe, "analysis/x.py") == []
    allowed = "import pickle\nclass _NumpyOnlyUnpickler(pickle.Unpickler):\n    pass\n"
    assert unpickling_sites(allowed, "trainables/data.py") == []
    assert unpickling_sites(allowed, "analysis/other.py")  # the same class elsewhere is not


# Patterns are assembled from pieces so this file does not match itself.
_SECRET_PATTERNS = {
    "AWS access key id": re.compile("AK" + r"IA[0-9A-Z]{16}"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}"),
    "private key": re.compile("-----BEGIN [A-Z ]*PRIV" + "ATE KEY-----"),
    "GitHub token": re.compile("gh" + r"[pousr]_[A-Za-z0-9]{36}"),
    "Slack token": re.compile("xo" + r"x[baprs]-[A-Za-z0-9-]{10,}"),
    "password literal": re.compile(r"(?i)\b(pass(word|wd)?|secret)\b[\"']?\s*[:=]\s*[\"']"
                                   r"(?!\$\{)(?!<)[^\"'\s]{6,}[\"']"),
    "credentials in a URL": re.compile(r"\b(postgres(ql)?|mysql|https?)(\+\w+)?://[^:/\s\"']+:"
                                       r"(?![{$<])[^@/\s\"']{4,}@"),
}


def test_no_secrets_in_the_repository():
    hits = []
    for path in _repo_files():
        text = _text(path)
        if text is None:
            continue
        for what, pattern in _SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                hits.append(f"{path.relative_to(REPO)}: {what}: {match.group(0)[:40]}")
    assert not hits, hits


def test_secret_scan_catches_what_it_should():
    """The scan above would fail on real-looking secrets (so its silence means something)."""
    samples = {
        "AWS access key id": "key = " + "AK" + "IA" + "ABCDEFGHIJKLMNOP",
        "password literal": 'password: "' + "hunter2hunter2" + '"',
        "credentials in a URL": "postgresql://mlflow:" + "s3cr3tpw" + "@db.internal/mlflow",
        "private key": "-----BEGIN RSA " + "PRIVATE KEY-----",
    }
    for what, text in samples.items():
        assert _SECRET_PATTERNS[what].search(text), what
    assert not _SECRET_PATTERNS["password literal"].search('password: "${MLFLOW_DB_PASSWORD}"')
    assert not _SECRET_PATTERNS["credentials in a URL"].search(
        "postgresql://{user}:{password}@{host}/mlflow")
