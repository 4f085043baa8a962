"""Shared fixtures: one local Ray for the whole session, a fresh sqlite MLflow store per test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests run a throwaway local cluster; real clusters keep token auth on (see docs/cluster.md).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster shared by every test that asks for it (init costs ~7 s here)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def mlflow_store(tmp_path: Path) -> dict[str, str]:
    """A fresh sqlite tracking store with an absolute artifact root, under tmp_path."""
    db = tmp_path / "mlflow.db"
    artifacts = tmp_path / "mlartifacts"
    artifacts.mkdir()
    return {"tracking_uri": f"sqlite:///{db}", "artifact_root": str(artifacts)}


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
