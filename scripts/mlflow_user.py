"""Create the MLflow user the sweeps log as, on a server running MLflow's basic-auth app.

Run on the cluster head right after ``mlflow server --app-name basic-auth`` starts (cluster.yaml
does), and by the integration test that starts such a server. Every credential comes from the
environment, none from an argument (the process table would show it) or a file:

- ``MLFLOW_TRACKING_URI``: the server, e.g. ``http://127.0.0.1:5000``;
- ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD``: the admin the auth app
  bootstrapped from the same variables;
- ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``: the user to create (or whose
  password to reset), the one every sweep, trial and analysis authenticates as.

Waits up to ``--wait-s`` seconds for the server's ``/health``. Exit status 0 on success, 2 with
one line on stderr when a variable is missing or the server refuses.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import requests

_REQUIRED = ("MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
             "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _wait_healthy(url: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: MLflow server {url} not healthy after {wait_s:.0f} s")
        time.sleep(1.0)


def ensure_user(url: str, admin: tuple[str, str], user: tuple[str, str]) -> str:
    """Create ``user`` (name, password) as ``admin``, or reset its password; returns what was
    done (``created`` / ``password updated``)."""
    api = f"{url}/api/2.0/mlflow/users"
    body = {"username": user[0], "password": user[1]}
    resp = requests.post(f"{api}/create", json=body, auth=admin, timeout=30)
    if resp.status_code == 200:
        return "created"
    if "RESOURCE_ALREADY_EXISTS" not in resp.text:
        raise SystemExit(f"error: creating MLflow user {user[0]!r} failed: HTTP "
                         f"{resp.status_code} {resp.text[:200]}")
    resp = requests.patch(f"{api}/update-password", json=body, auth=admin, timeout=30)
    if resp.status_code != 200:
        raise SystemExit(f"error: updating MLflow user {user[0]!r} failed: HTTP "
                         f"{resp.status_code} {resp.text[:200]}")
    return "password updated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    missing = [k for k in _REQUIRED if not os.environ.get(k)]
    if missing:
        print(f"error: environment variables {missing} are not set; allowed: see "
              f"scripts/mlflow_user.py", file=sys.stderr)
        return 2
    env = os.environ
    url = env["MLFLOW_TRACKING_URI"].rstrip("/")
    try:
        _wait_healthy(url, args.wait_s)
        admin = (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"])
        done = ensure_user(url, admin,
                           (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"MLflow user {env['MLFLOW_TRACKING_USERNAME']!r} {done} on {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
