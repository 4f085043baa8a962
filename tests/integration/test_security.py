"""Live security checks: what the services actually bind to, and who they answer.

The static rules (no pickle, no disabled auth in library code, no secrets) are in
tests/test_security.py; docs/security.md explains both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from .harness import RAY_BIN, free_port, kill_pids, process_tree, wait_for

pytestmark = pytest.mark.integration


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.split(":")
                if state != "0A" or int(hexport, 16) != port:
                    continue
                raw = bytes.fromhex(addr)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_sweeps_ui_binds_loopback_only_by_default(tmp_path):
    port = free_port()
    env = {**os.environ, "UNISWEEP_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        addresses = wait_for(lambda: listening_addresses(port), timeout_s=120,
                             what=f"`python -m sweeps ui` on port {port}")
        assert addresses == {"127.0.0.1"}, addresses
    finally:
        kill_pids(process_tree(proc.pid), grace_s=2.0)
        proc.wait(timeout=10)


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
