"""Real services on loopback for the integration suite: PostgreSQL, an MLflow server, a Ray cluster.

Everything here starts real processes (no mocks), binds them to 127.0.0.x, records the process
ids it started and stops exactly those ids again: never ``ray stop``, never a kill by process
name. A service is stopped by walking the process tree under the process we launched (Ray workers
call ``setsid``, so a process-group kill alone would miss them) plus any process whose command
line names the service's own unique temporary directory.

Ray keeps token authentication on (``RAY_AUTH_MODE=token``, the real default): the harness writes
a fresh 256-bit token to a file in its own temp dir and hands ``RAY_AUTH_TOKEN_PATH`` to every
node, CLI call and job, so nothing touches ``~/.ray``. Ray resolves ``127.0.0.1`` to the
machine's outward address, so nodes use other loopback addresses (head ``127.0.0.2``, workers
``127.0.0.3``...), which Ray takes verbatim; each node gets its own ``--temp-dir``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
RAY_BIN = str(VENV_BIN / "ray")
MLFLOW_BIN = str(VENV_BIN / "mlflow")
HEAD_IP = "127.0.0.2"
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process visible in /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        # The command name in field 2 may contain spaces or ')', so split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry)] = (ppid, cmd)
    return table


def process_tree(root: int, *, marker: str | None = None) -> set[int]:
    """``root``, all its live descendants, and every process whose command line holds ``marker``."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root] if root in table else []
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    if marker:
        found |= {pid for pid, (_, cmd) in table.items() if marker in cmd}
    found.discard(os.getpid())
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_pids(pids: set[int], *, grace_s: float = 0.0) -> None:
    """SIGTERM (when ``grace_s`` > 0) then SIGKILL each pid in ``pids`` that is still alive."""
    stages = [(signal.SIGTERM, grace_s)] if grace_s > 0 else []
    for sig, wait_s in [*stages, (signal.SIGKILL, 2.0)]:
        for pid in pids:
            if _alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)


@dataclass
class Service:
    """One launched command (in its own session) plus everything it spawns."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    marker: str | None = None
    cwd: str | None = None
    popen: subprocess.Popen | None = None
    started_pids: set[int] = field(default_factory=set)

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed at stop
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.cwd,
                                      start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    def pids(self) -> set[int]:
        """Live pids of this service (launcher, descendants, marker matches)."""
        return {p for p in process_tree(self.pid, marker=self.marker) if _alive(p)}

    def remember_pids(self) -> set[int]:
        """Record the pids seen now, so teardown reaches them even after their parent died."""
        self.started_pids |= self.pids()
        return self.started_pids

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, *, grace_s: float = 3.0) -> None:
        """Stop this service's processes by pid: SIGTERM, then SIGKILL after ``grace_s``."""
        if self.popen is None:
            return
        kill_pids(self.pids() | self.started_pids, grace_s=grace_s)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_for(check, *, timeout_s: float, what: str, interval_s: float = 0.25,
             service: Service | None = None):
    """Poll ``check()`` until it returns a truthy value; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if service is not None and service.popen is not None and service.popen.poll() is not None:
            raise RuntimeError(f"{service.name} exited (rc={service.popen.returncode}) while "
                               f"waiting for {what}:\n{service.log_tail()}")
        time.sleep(interval_s)
    tail = f"\n{service.log_tail()}" if service is not None else ""
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# ----------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path:
    """Directory with Debian's PostgreSQL server binaries (newest major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    if which:
        return Path(which).resolve().parent
    raise RuntimeError("PostgreSQL server binaries (initdb, postgres) not found; "
                       "install them with scripts/ci_system_deps.sh")


class PostgresServer:
    """A throwaway PostgreSQL cluster in its own temp dir, on 127.0.0.1 only, password auth.

    PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system
    user (created by Debian's package) through ``runuser``; the data dir belongs to that user.
    """

    user = "unisweep"

    def __init__(self) -> None:
        # Its own directory directly under the temp root: pytest's tmp_path is mode 0700 and
        # root-owned, so the ``postgres`` user could not reach a data dir inside it.
        self.root = Path(tempfile.mkdtemp(prefix="unisweep-pg-"))
        os.chmod(self.root, 0o711)
        self.bindir = postgres_bindir()
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.data = self.root / "data"
        self.service: Service | None = None
        self.starts = 0

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> PostgresServer:
        self.data.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(pwfile, 0o600)
        init = subprocess.run(self._as_owner([
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions",
        ]), capture_output=True, text=True, timeout=120)
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.strip()}")
        return self._launch()

    def _launch(self) -> PostgresServer:
        """Start the server on the existing data dir (same port), wait until it accepts."""
        self.starts += 1
        self.service = Service(
            name="postgres",
            argv=self._as_owner([
                str(self.bindir / "postgres"), "-D", str(self.data), "-h", LOOPBACK,
                "-p", str(self.port), "-k", str(self.data), "-c", "fsync=off",
                "-c", "max_connections=100"]),
            env=dict(os.environ), log_path=self.root / f"postgres.{self.starts}.log",
            marker=str(self.data),
        ).start()
        wait_for(lambda: "ready to accept connections" in self.service.log_tail(),
                 timeout_s=30, what="PostgreSQL to accept connections", service=self.service)
        self.service.remember_pids()
        return self

    def restart(self, *, down_s: float) -> None:
        """The fault: a fast shutdown (SIGINT: clients are disconnected, as an operator's
        ``pg_ctl stop -m fast`` or a failover does), ``down_s`` seconds down, then a start on
        the same data dir and port."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)
        wait_for(lambda: not _alive(postmaster), timeout_s=30, what="PostgreSQL to shut down")
        wait_for(lambda: not _port_open(LOOPBACK, self.port), timeout_s=15,
                 what=f"port {self.port} to close")
        time.sleep(down_s)
        self._launch()

    def accepts(self) -> bool:
        return _port_open(LOOPBACK, self.port)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL."""
        subprocess.run([str(self.bindir / "createdb"), "-h", LOOPBACK, "-p", str(self.port),
                        "-U", self.user, name],
                       env={**os.environ, "PGPASSWORD": self.password},
                       check=True, capture_output=True, timeout=60)
        return self.url(name)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace_s=5.0)
        shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- MLflow


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a given backend store; restartable on the same port.

    Args:
        root: folder for its logs.
        backend_uri: the backend store (PostgreSQL here).
        artifact_root: where artifacts go: written there directly by the clients
            (``--default-artifact-root``), or, with ``proxy_artifacts``, uploaded over HTTP to the
            server, which stores them there (``--artifacts-destination``, as the cluster's server
            does with S3).
        extra_args: more ``mlflow server`` arguments (e.g. ``--app-name basic-auth``).
        env: more environment for the server (e.g. the auth app's settings).
    """

    def __init__(self, root: Path, backend_uri: str, artifact_root: Path, *,
                 proxy_artifacts: bool = False, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.backend_uri = backend_uri
        self.artifact_root = artifact_root
        self.proxy_artifacts = proxy_artifacts
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.service: Service | None = None
        self.starts = 0

    def start(self, *, timeout_s: float = 90) -> MlflowServer:
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.extra_env}
        artifacts = (["--artifacts-destination", str(self.artifact_root)] if self.proxy_artifacts
                     else ["--default-artifact-root", str(self.artifact_root)])
        self.service = Service(
            name="mlflow-server",
            argv=[MLFLOW_BIN, "server", *self.extra_args, "--backend-store-uri", self.backend_uri,
                  *artifacts, "--host", LOOPBACK, "--port", str(self.port), "--workers", "1"],
            env=env, log_path=self.root / f"mlflow-server.{self.starts}.log",
        ).start()
        self.starts += 1
        wait_for(self.healthy, timeout_s=timeout_s, what=f"MLflow server at {self.url}",
                 service=self.service, interval_s=0.5)
        self.service.remember_pids()
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, *, grace_s: float = 3.0) -> None:
        if self.service is not None:
            self.service.stop(grace_s=grace_s)
            wait_for(lambda: not _port_open(LOOPBACK, self.port), timeout_s=15,
                     what=f"port {self.port} to close")

    def restart(self, *, down_s: float = 0.0) -> None:
        """Kill the server (SIGKILL: no graceful drain), stay down ``down_s`` s, start again."""
        self.stop(grace_s=0.0)
        time.sleep(down_s)
        self.start()
