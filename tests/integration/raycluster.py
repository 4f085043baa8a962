"""A real multi-node Ray cluster on one machine: ``ray start`` head + worker nodes, token auth on.

Each node is one ``ray start --block`` process in its own session with its own ``--temp-dir``;
its gcs_server/raylet/agents/workers are found by process tree and by that temp dir in their
command lines, recorded, and stopped by pid. Jobs go through the real ``ray job submit`` CLI;
their status is read over the dashboard's HTTP API with the bearer token.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .harness import (
    HEAD_IP, LOOPBACK, RAY_BIN, Service, free_port, kill_pids, process_tree, wait_for,
)

TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


@dataclass
class RayNode:
    """One ``ray start`` node; ``kill()`` is the fault: SIGKILL to all of its processes."""

    name: str
    ip: str
    temp_dir: Path
    service: Service
    resources: dict[str, float] = field(default_factory=dict)

    def roles(self) -> dict[str, int]:
        """Core process ids of this node by role (``gcs_server``, ``raylet``), from /proc."""
        out: dict[str, int] = {}
        for pid in self.service.pids():
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
            except OSError:
                continue
            base = os.path.basename(exe)
            if base in ("gcs_server", "raylet"):
                out[base] = pid
        return out

    def kill(self) -> set[int]:
        """Crash the node: SIGKILL every process it runs (raylet, agents, workers). Returns pids."""
        pids = self.service.pids()
        kill_pids(pids, grace_s=0.0)
        return pids

    def stop(self) -> None:
        self.service.stop(grace_s=2.0)


class RayCluster:
    """Head + workers on 127.0.0.x, dashboard on 127.0.0.1, token auth on.

    Args:
        root: directory for temp dirs, logs and the token file (short path: Ray's socket paths
            must stay under 107 bytes).
        cpus_per_node: ``--num-cpus`` of every node.
        env: extra environment for every node (and so every worker and job driver).
    """

    def __init__(self, root: Path, *, cpus_per_node: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.cpus_per_node = cpus_per_node
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.gcs_address = f"{HEAD_IP}:{self.gcs_port}"
        self.dashboard_url = f"http://{LOOPBACK}:{self.dashboard_port}"
        self.token_path = root / "auth_token"
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        self._next_ip = 3
        self.env = {
            **os.environ,
            **(env or {}),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Notice a dead node within ~3 s instead of the default ~30 s.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.env.pop("RAY_ADDRESS", None)

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def _node_argv(self, temp_dir: Path, ip: str, resources: dict[str, float]) -> list[str]:
        # Every port Ray would otherwise default to a fixed number gets a free one, so this
        # cluster never collides with another Ray on the same machine.
        return [
            RAY_BIN, "start", "--block", "--disable-usage-stats",
            "--temp-dir", str(temp_dir), "--node-ip-address", ip,
            "--num-cpus", str(self.cpus_per_node), "--num-gpus", "0",
            "--resources", json.dumps(resources),
            "--dashboard-agent-listen-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--object-store-memory", str(256 * 1024**2),
        ]

    def start(self, *, workers: int = 1, timeout_s: float = 120) -> RayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(secrets.token_hex(32))
        os.chmod(self.token_path, 0o600)
        temp = self.root / "head"
        argv = [*self._node_argv(temp, HEAD_IP, {"head": 1.0}), "--head",
                "--port", str(self.gcs_port), "--include-dashboard", "true",
                "--dashboard-host", LOOPBACK, "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(free_port())]
        service = Service("ray-head", argv, self.env, self.root / "head.log",
                          marker=str(temp)).start()
        self.head = RayNode("head", HEAD_IP, temp, service, {"head": 1.0})
        wait_for(lambda: "Ray runtime started" in service.log_tail(200), timeout_s=timeout_s,
                 what="the Ray head node", service=service, interval_s=0.5)
        wait_for(self._dashboard_up, timeout_s=timeout_s, what="the Ray dashboard",
                 service=service, interval_s=0.5)
        service.remember_pids()
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self, *, timeout_s: float = 120) -> RayNode:
        """Start one more worker node (resource ``worker``) and wait until the GCS lists it."""
        index = self._next_ip - 2
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        temp = self.root / f"w{index}"
        resources = {"worker": 1.0, f"worker{index}": 1.0}
        argv = [*self._node_argv(temp, ip, resources), "--address", self.gcs_address]
        service = Service(f"ray-worker{index}", argv, self.env, self.root / f"w{index}.log",
                          marker=str(temp)).start()
        node = RayNode(f"worker{index}", ip, temp, service, resources)
        self.workers.append(node)
        wait_for(lambda: ip in self.alive_node_ips(), timeout_s=timeout_s,
                 what=f"worker node {ip} to join", service=service, interval_s=0.5)
        service.remember_pids()
        return node

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            node.stop()

    # -- HTTP API (dashboard), with the bearer token --------------------------------------

    def _request(self, path: str, *, method: str = "GET", token: str | None = "default",
                 body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        token = self.token if token == "default" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.dashboard_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _dashboard_up(self) -> bool:
        try:
            return self._request("/api/version", timeout=2)[0] == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive_node_ips(self) -> set[str]:
        try:
            status, raw = self._request("/nodes?view=summary", timeout=5)
        except (urllib.error.URLError, OSError):
            return set()
        if status != 200:
            return set()
        summary = json.loads(raw).get("data", {}).get("summary", [])
        return {n["raylet"]["nodeManagerAddress"] for n in summary
                if n.get("raylet", {}).get("state") == "ALIVE"}

    def node_ips_by_id(self) -> dict[str, str]:
        status, raw = self._request("/nodes?view=summary", timeout=5)
        if status != 200:
            return {}
        return {n["raylet"]["nodeId"]: n["raylet"]["nodeManagerAddress"]
                for n in json.loads(raw).get("data", {}).get("summary", [])}

    def actors(self, class_name: str, *, state: str | None = "ALIVE") -> list[dict]:
        """Actors of ``class_name`` from the state API, each with ``pid`` and ``node_ip``."""
        status, raw = self._request("/api/v0/actors?limit=10000&detail=true", timeout=10)
        if status != 200:
            raise RuntimeError(f"state API: HTTP {status}: {raw[:300]!r}")
        ips = self.node_ips_by_id()
        rows = json.loads(raw)["data"]["result"]["result"]
        return [{**r, "node_ip": ips.get(r.get("node_id"), "?")} for r in rows
                if r.get("class_name") == class_name and (state is None or r["state"] == state)]

    def tasks(self, name: str) -> list[dict]:
        """Task attempts named ``name`` (e.g. ``_PairWorker.run_tile``) from the state API, each
        with ``task_id``, ``attempt_number``, ``state`` and ``actor_id``."""
        query = ("/api/v0/tasks?limit=10000&detail=true&filter_keys=name"
                 f"&filter_predicates=%3D&filter_values={name}")
        status, raw = self._request(query, timeout=20)
        if status != 200:
            raise RuntimeError(f"state API: HTTP {status}: {raw[:300]!r}")
        return [r for r in json.loads(raw)["data"]["result"]["result"] if r.get("name") == name]

    def kill_actor_process(self, actor: dict) -> int:
        """SIGKILL the OS process of an actor of this cluster (checked to be one of ours)."""
        pid = int(actor["pid"])
        ours = set().union(*(n.service.pids() for n in [self.head, *self.workers] if n))
        if pid not in ours:
            raise RuntimeError(f"actor pid {pid} is not a process of this cluster")
        kill_pids({pid})
        return pid

    # -- jobs ------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``ray <args>`` with this cluster's token env; raise with output on failure."""
        proc = subprocess.run([RAY_BIN, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def submit(self, argv: list[str], *, env_vars: dict[str, str] | None = None) -> str:
        """``ray job submit --no-wait -- argv...``; returns the submission id.

        ``argv[0]`` should be an absolute path (the venv's python): the job runs in Ray's
        temp dir, not in the repository.
        """
        runtime_env = {"env_vars": env_vars or {}}
        proc = self.cli("job", "submit", "--address", self.dashboard_url, "--no-wait",
                        "--runtime-env-json", json.dumps(runtime_env), "--", *argv)
        match = re.search(r"(raysubmit_[A-Za-z0-9]+)", proc.stdout + proc.stderr)
        if match is None:
            raise RuntimeError(f"no submission id in ray job submit output:\n{proc.stderr}")
        return match.group(1)

    def job_info(self, job_id: str) -> dict:
        status, raw = self._request(f"/api/jobs/{job_id}")
        if status != 200:
            raise RuntimeError(f"GET /api/jobs/{job_id} -> {status}: {raw[:300]!r}")
        return json.loads(raw)

    def job_logs(self, job_id: str) -> str:
        status, raw = self._request(f"/api/jobs/{job_id}/logs")
        return json.loads(raw).get("logs", "") if status == 200 else f"<logs: HTTP {status}>"

    def wait_job(self, job_id: str, *, timeout_s: float) -> dict:
        """Wait for a terminal state; returns the job info (``status`` field)."""
        return wait_for(
            lambda: (info := self.job_info(job_id))["status"] in TERMINAL_JOB_STATES and info,
            timeout_s=timeout_s, what=f"job {job_id}", interval_s=1.0)

    def job_driver_pids(self, job_id: str) -> set[int]:
        """Pids of the job's entrypoint process tree (the driver), found from its driver pid."""
        info = self.job_info(job_id)
        pid = (info.get("driver_info") or {}).get("pid")
        if pid is None:
            return set()
        return process_tree(int(pid))
