"""Session services for the integration suite: PostgreSQL -> MLflow server, and a 2-node Ray.

They start once per pytest session (about 20 s together) on loopback addresses and are stopped
by pid at the end. Tests that break a service (kill a node, restart MLflow) repair it through
`Services.heal()` before the next test uses it.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .harness import MlflowServer, PostgresServer
from .raycluster import RayCluster

@dataclass
class Services:
    """The running PostgreSQL, MLflow server and Ray cluster of this session."""

    root: Path
    postgres: PostgresServer
    mlflow: MlflowServer
    cluster: RayCluster
    retired: list[RayCluster] = field(default_factory=list)

    def heal(self) -> None:
        """Bring back what a fault test took down: PostgreSQL, the MLflow server, the head (a
        fresh cluster), a second node."""
        if not self.postgres.accepts():
            self.postgres.restart(down_s=0)
        if not self.mlflow.healthy():
            self.mlflow.start()
        if self.cluster.head is None or not self.cluster.head.service.running():
            self.replace_cluster()
        alive = self.cluster.alive_node_ips()
        live_workers = [w for w in self.cluster.workers if w.ip in alive]
        if not live_workers:
            self.cluster.add_worker()

    def replace_cluster(self) -> RayCluster:
        """Stop what is left of the cluster (by pid) and start a fresh one: new head, new
        temp dirs, new ports, a new token, one worker."""
        old = self.cluster
        old.stop()
        self.retired.append(old)
        self.cluster = RayCluster(self.root / f"ray{len(self.retired)}", cpus_per_node=1)
        self.cluster.start(workers=1)
        return self.cluster

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow.url)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None:
        pytest.fail("the MLflow server needs a PostgreSQL driver: add psycopg[binary] to "
                    "requirements.lock (tests/integration, docs/reliability.md)")
    # Short absolute path: Ray's unix socket paths must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="us-it-"))
    started: list = []
    try:
        pg = PostgresServer().start()
        started.append(pg)
        ml = MlflowServer(root / "mlflow", pg.create_database("mlflow"),
                          root / "mlartifacts").start()
        started.append(ml)
        cluster = RayCluster(root / "ray", cpus_per_node=1)
        services = Services(root, pg, ml, cluster)
        started.append(services)  # stops the cluster it holds at the end (tests may replace it)
        cluster.start(workers=1)
        yield services
    finally:
        for svc in reversed(started):
            if isinstance(svc, Services):
                for c in [*svc.retired, svc.cluster]:
                    c.stop()
            else:
                svc.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def live(services: Services) -> Services:
    """The session services, repaired if an earlier test broke them."""
    services.heal()
    return services


@pytest.fixture()
def home(services: Services, request: pytest.FixtureRequest) -> Path:
    """A per-test UNISWEEP_HOME (reports, Ray Tune storage) on the shared filesystem."""
    path = services.root / "homes" / request.node.name[:40]
    path.mkdir(parents=True)
    return path


@dataclass
class TrainedSweep:
    """A finished 4-cell sweep (run through `ray job submit`), shared by several tests."""

    name: str
    spec: Path
    home: Path
    job_id: str
    job_status: str
    job_logs: str


@pytest.fixture(scope="session")
def trained_sweep(services: Services) -> TrainedSweep:
    """Sweep ``it-cluster`` (mlp, cnn x eps {0, 0.1}, 1 epoch) submitted as a Ray job.

    The test that asserts on it is tests/integration/test_cluster.py; fault tests that need a
    finished sweep reuse it (and put back anything they break).
    """
    from .workload import PY, tiny_spec

    services.heal()
    home = services.root / "homes" / "trained_sweep"
    home.mkdir(parents=True)
    spec = tiny_spec(home / "spec.yaml", name="it-cluster", tracking_uri=services.mlflow.url,
                     storage=home / "ray_results", epochs=1, archs=("mlp", "cnn"))
    job = services.cluster.submit([PY, "-m", "sweeps", "run", str(spec)],
                                  env_vars={"UNISWEEP_HOME": str(home)})
    info = services.cluster.wait_job(job, timeout_s=420)
    return TrainedSweep("it-cluster", spec, home, job, info["status"],
                        services.cluster.job_logs(job))
