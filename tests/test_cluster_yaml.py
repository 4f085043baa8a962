"""cluster.yaml is a valid Ray cluster-launcher file (Ray's own JSON schema and validator) for a
CPU head + autoscaled GPU workers, installs from the lock file, and holds no secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "cluster.yaml").read_text()
CONFIG = yaml.safe_load(TEXT)
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def commands(*keys: str) -> str:
    return "\n".join(cmd for key in keys for cmd in CONFIG.get(key, []))


def test_validates_against_the_schema_ray_ships():
    jsonschema.validate(CONFIG, SCHEMA)
    from ray.autoscaler._private.util import validate_config

    validate_config(CONFIG)  # Ray's own checks on top of the schema (node types, head type)


def test_the_schema_check_is_not_vacuous():
    broken = {**CONFIG, "available_node_types": {"head": {"node_config": {}}}}  # no resources
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        jsonschema.validate(broken, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**CONFIG, "max_wokers": 3}, SCHEMA)


def test_cpu_head_and_autoscaled_gpu_workers():
    assert CONFIG["provider"]["type"] == "aws"
    types = CONFIG["available_node_types"]
    head = types[CONFIG["head_node_type"]]
    assert not re.match(r"^(g|p)\d", head["node_config"]["InstanceType"])  # no GPU on the head
    workers = [t for name, t in types.items() if name != CONFIG["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert re.match(r"^(g|p)\d", gpu["node_config"]["InstanceType"])
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= CONFIG["max_workers"]
    for node in types.values():  # AWS access from the instance role, not from keys
        assert node["node_config"]["IamInstanceProfile"]["Name"]


def test_setup_installs_the_project_from_the_lock_file():
    setup = commands("setup_commands")
    assert "pip install" in setup and "-r ~/unisweep/requirements.lock" in setup
    assert "--no-deps -e ~/unisweep" in setup
    assert CONFIG["file_mounts"]["~/unisweep"] == "."
    start = commands("head_start_ray_commands", "worker_start_ray_commands")
    assert start.count("~/unisweep/.venv/bin/ray start") == 2 and "--temp-dir=" in start


def test_tracking_server_and_shared_storage_come_from_env_vars():
    setup = commands("setup_commands")
    env = dict(re.findall(r"'([A-Z_]+)=([^']*)'", setup))
    assert env["MLFLOW_TRACKING_URI"].startswith("http://")
    assert env["UNISWEEP_STORAGE"].startswith("s3://") and env["UNISWEEP_ARTIFACTS"].startswith("s3://")
    assert env["RAY_AUTH_MODE"] == "token"  # token auth stays on for the real cluster
    head = commands("head_start_ray_commands")
    assert "mlflow server" in head and '--artifacts-destination "$UNISWEEP_ARTIFACTS"' in head
    assert "aws secretsmanager get-secret-value" in head  # the PostgreSQL URI is fetched, not stored
    assert "--dashboard-host=127.0.0.1" in head
    assert CONFIG["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_no_secrets_in_the_file():
    assert not re.search(r"AKIA[0-9A-Z]{16}", TEXT)  # AWS access key ids
    assert not re.search(r"(?i)aws_secret_access_key|secret_key\s*[:=]|password\s*[:=]", TEXT)
    assert not re.search(r"postgres(ql)?(\+\w+)?://[^\s:/]+:[^\s@/]+@", TEXT)  # user:pass@host
