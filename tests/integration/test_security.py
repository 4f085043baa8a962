"""Live security checks: what the services actually listen on, who they answer, and that
`make ui` cleans up after itself.

The static rules (no pickle, no disabled auth in library code, no unauthenticated wide bind, no
secrets) are in tests/test_security.py; docs/security.md explains both and carries the socket
table these tests print (run with ``-rP`` to see it).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests

from trainables import tracking as tr

from .harness import RAY_BIN, MlflowServer, _alive, free_port, kill_pids, process_tree, wait_for
from .sockets import listening_addresses, listening_sockets
from .workload import PY, assert_one_finished_run_per_cell, finish, spec_cells, tiny_spec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# Ray 2.60 has no option to bind these to one address: they listen on every interface, and only
# the token (GCS, raylet, agents, every worker's and driver's gRPC server) or nothing (the
# metrics exporters) guards them. On a cluster the security group must admit them from the
# cluster's own nodes only (docs/security.md). `ray::<name>` workers and job drivers are
# allowed on all interfaces too (their core-worker gRPC servers).
RAY_WIDE = {"gcs_server", "raylet", "ray::DashboardAgent", "python:dashboard.py",
            "python:monitor.py"}
# ... and these listen on loopback addresses only (127.0.0.1 or the node's 127.0.0.x address).
RAY_LOOPBACK = {"ray::RuntimeEnvAgent", "python:ray.util.client.server"}


def _table(listeners) -> str:
    return "\n".join(f"  {'loopback' if s.loopback_only else 'ALL INTERFACES':14s} {s}"
                     for s in listeners)


_HOLD = """
import os, pathlib, time, ray
ray.init()
Hold = ray.remote(num_cpus=1)(type("Hold", (), {"pid": lambda self: os.getpid()}))
holders = [Hold.remote() for _ in range(2)]
ray.get([h.pid.remote() for h in holders])
pathlib.Path(os.environ["HOLD_MARKER"]).write_text("up")
time.sleep(600)
"""


def test_every_listening_socket_of_the_cluster_is_accounted_for(live, tmp_path):
    """Lists every TCP listener of both nodes' processes (GCS, raylet, agents, dashboard, and
    a running job's driver and actor workers) and holds each to the documented class:
    loopback-only, or (Ray cannot restrict it) all interfaces behind the token; the
    dashboard's HTTP port is loopback-only."""
    cluster = live.cluster
    marker = tmp_path / "hold"
    job = cluster.submit([PY, "-c", _HOLD], env_vars={"HOLD_MARKER": str(marker)})
    try:
        wait_for(marker.exists, timeout_s=180, what="a job holding one actor per node")
        _inventory(cluster, drivers=cluster.job_driver_pids(job))
    finally:
        kill_pids(cluster.job_driver_pids(job))
        cluster.wait_job(job, timeout_s=120)


def _inventory(cluster, *, drivers: set[int]) -> None:
    workers = set()
    for node in [cluster.head, *cluster.workers]:
        listeners = [dataclasses.replace(s, process="job driver") if s.pid in drivers else s
                     for s in listening_sockets(node.service.pids())]
        print(f"{node.name} ({node.ip}):\n{_table(listeners)}")
        assert listeners, node.name
        workers |= {s.process for s in listeners if s.process.startswith("ray::Hold")}
        ray_workers = {s.process for s in listeners if s.process.startswith("ray::")}
        unknown = {s.process for s in listeners} - RAY_WIDE - RAY_LOOPBACK - ray_workers \
            - {"job driver"}
        assert not unknown, unknown
        for s in listeners:
            if s.process in RAY_LOOPBACK:
                assert s.loopback_only, s
        if node is cluster.head:
            dashboard = [s for s in listeners if s.port == cluster.dashboard_port]
            assert dashboard and all(s.address == "127.0.0.1" for s in dashboard), dashboard
            assert {"gcs_server", "raylet"} <= {s.process for s in listeners}
        wide = {s.process for s in listeners if not s.loopback_only}
        assert wide <= RAY_WIDE | ray_workers | {"job driver"}, wide
    assert workers, "the actor workers' own listeners were not seen"


def _make_ui(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "UNISWEEP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(["make", "--no-print-directory", "ui", f"UI_PORT={port}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.parametrize("how", ["SIGTERM to make", "SIGINT to the process group"])
def test_make_ui_listens_on_loopback_only_and_leaves_nothing_behind(tmp_path, how):
    """`make ui`: every socket of its process tree (make, the MLflow server, its uvicorn
    workers) is on 127.0.0.1; a SIGTERM to make, or a terminal's Ctrl-C (SIGINT to the whole
    foreground group), stops every one of those processes."""
    port = free_port()
    proc = _make_ui(tmp_path, port)
    tree: set[int] = set()
    try:
        wait_for(lambda: listening_addresses(port), timeout_s=180, what=f"`make ui` on {port}")
        tree = process_tree(proc.pid)
        listeners = listening_sockets(tree)
        print(f"make ui ({how}):\n{_table(listeners)}")
        assert listeners and all(s.address == "127.0.0.1" for s in listeners), listeners
        assert {s.port for s in listeners} == {port}
        assert len(tree) >= 3  # make, mlflow server, uvicorn
        if how.startswith("SIGTERM"):
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        wait_for(lambda: not any(_alive(p) for p in tree), timeout_s=30,
                 what="every process of `make ui` to exit")
        assert not listening_addresses(port)
    finally:
        kill_pids({p for p in tree | process_tree(proc.pid) if _alive(p)}, grace_s=1.0)


def test_mlflow_server_refuses_foreign_host_headers(live):
    ok = urllib.request.Request(f"{live.mlflow.url}/health")
    with urllib.request.urlopen(ok, timeout=5) as r:
        assert r.status == 200
    # DNS rebinding: a page on another origin cannot drive the server through the browser.
    evil = urllib.request.Request(f"{live.mlflow.url}/api/2.0/mlflow/experiments/search"
                                  "?max_results=1", headers={"Host": "attacker.example:80"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(evil, timeout=5)
    assert err.value.code == 403
    assert listening_addresses(live.mlflow.port) == {"127.0.0.1"}


def test_ray_dashboard_is_loopback_and_needs_the_token(live):
    cluster = live.cluster
    assert listening_addresses(cluster.dashboard_port) == {"127.0.0.1"}
    assert cluster._request("/api/jobs/", token=None)[0] == 401
    assert cluster._request("/api/jobs/", token="0" * 64)[0] == 403
    assert cluster._request("/api/jobs/")[0] == 200
    # The CLI without the token is refused too (the token lives only in the harness's file).
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env["HOME"] = str(live.root)  # no ~/.ray/auth_token to fall back on
    proc = subprocess.run([RAY_BIN, "job", "list", "--address", cluster.dashboard_url],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "auth" in (proc.stdout + proc.stderr).lower()


@pytest.fixture()
def auth_server(live, tmp_path):
    """The team server as cluster.yaml runs it: `mlflow server --app-name basic-auth` on the
    session PostgreSQL, the admin from MLFLOW_AUTH_ADMIN_* and the CSRF key from the
    environment, the user store in a sqlite file named by an auth config that holds no secret;
    then scripts/mlflow_user.py creates the sweeps' user from the environment."""
    admin = ("unisweep-admin", secrets.token_urlsafe(18))
    user = ("unisweep", secrets.token_urlsafe(18))
    ini = tmp_path / "mlflow-auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{tmp_path / 'mlflow-auth.db'}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    server = MlflowServer(tmp_path / "auth", live.postgres.create_database("auth"),
                          tmp_path / "auth-artifacts", extra_args=("--app-name", "basic-auth"),
                          env={"MLFLOW_AUTH_CONFIG_PATH": str(ini),
                               "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
                               "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
                               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)})
    server.start(timeout_s=180)
    try:
        made = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "mlflow_user.py")],
            env={**os.environ, "MLFLOW_TRACKING_URI": server.url,
                 "MLFLOW_AUTH_ADMIN_USERNAME": admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
                 "MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]},
            capture_output=True, text=True, timeout=120)
        assert made.returncode == 0 and "created" in made.stdout, made.stdout + made.stderr
        assert user[1] not in ini.read_text() and admin[1] not in ini.read_text()
        yield server, admin, user
    finally:
        server.stop()


def test_authenticated_server_refuses_anonymous_requests_and_serves_the_sweep(
        live, home, auth_server, monkeypatch):
    server, admin, (username, password) = auth_server
    api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(api, timeout=10).status_code == 401  # no credentials
    assert requests.get(api, auth=(username, "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{server.url}/", timeout=10).status_code == 401  # nor the UI
    assert requests.get(api, auth=(username, password), timeout=10).status_code == 200
    assert listening_addresses(server.port) == {"127.0.0.1"}

    # A real sweep (driver and trials on the cluster) logs with MLFLOW_TRACKING_USERNAME and
    # MLFLOW_TRACKING_PASSWORD from its environment, and nothing else.
    spec = tiny_spec(home / "spec.yaml", name="it-auth", tracking_uri=server.url,
                     storage=home / "ray_results", epochs=1, archs=("mlp",), epsilons=(0.0,))
    job = live.cluster.submit([PY, "-m", "sweeps", "run", str(spec)], env_vars={
        "UNISWEEP_HOME": str(home), "MLFLOW_TRACKING_USERNAME": username,
        "MLFLOW_TRACKING_PASSWORD": password})
    finish(live.cluster, job, timeout_s=300)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = tr.make_client(server.url)
    assert_one_finished_run_per_cell(client, "it-auth", spec_cells(spec))
    # The experiment was created by the sweeps' user: the auth app made it its manager.
    exp = client.get_experiment_by_name("it-auth")
    perm = requests.get(f"{server.url}/api/3.0/mlflow/users/permissions/get",
                        params={"username": username, "resource_type": "experiment",
                                "resource_id": exp.experiment_id}, auth=admin, timeout=10)
    assert perm.status_code == 200, perm.text
    assert perm.json()["permission"] == "MANAGE", perm.json()
