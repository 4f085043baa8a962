"""Sweep specs: the shipped YAMLs load, bad specs fail with one line naming the field (exit 2,
no MLflow runs), epsilons parse without eval, and the Tune grid expands to each cell once."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.__main__ import main
from sweeps.spec import load_spec, parse_number, parse_spec
from trainables import tracking as tr
from trainables.config import TrainConfig
from trainables.errors import ConfigError

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SHIPPED = sorted(SWEEPS.glob("*.yaml"))

BASE = {
    "name": "t",
    "dataset": {"name": "digits"},
    "archs": ["mlp", "cnn"],
    "threat_model": "linf",
    "epsilons": [0, "8/255"],
    "seeds": [0, 1],
    "train": {"epochs": 1},
}


def variant(**changes) -> dict:
    """BASE with dotted-path changes; a value of ... deletes the key."""
    spec = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is ...:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_spec_loads(path):
    spec = load_spec(path, check_paths=False)
    cells = spec.cells()
    assert len(cells) == len({c.key for c in cells}) > 0
    if spec.dataset.name not in ("digits", "shapes"):  # the real-scale examples
        assert len(spec.seeds) >= 3 and len(spec.archs) >= 4 and spec.resources.gpu > 0
    else:  # the embedded demos run on a CPU laptop
        assert spec.resources.gpu == 0 and spec.dataset.root is None


def test_shipped_examples_cover_the_requested_grids():
    eps = {p.stem: load_spec(p, check_paths=False).threats[0].epsilons for p in SHIPPED}
    assert eps["cifar10_l2"] == (0.0, 0.25, 0.5, 1.0)
    assert eps["cifar10_linf"] == (0.0, 2 / 255, 4 / 255, 8 / 255)
    assert eps["imagenet100_l2"][0] == 0.0 and eps["imagenet100_l2"][-1] == 3.0


def test_demo_spec_is_the_embedded_default():
    spec = load_spec(SWEEPS / "demo.yaml")
    assert spec.dataset.name == "digits"
    assert {a.name for a in spec.archs} >= {"mlp", "cnn", "resnet18"}
    assert 0.0 in spec.threats[0].epsilons and len(spec.threats[0].epsilons) >= 3
    assert len(spec.seeds) >= 2


def test_eps_fractions_are_parsed_once_without_eval():
    spec = parse_spec(variant(epsilons=[0, "8/255", "0.5 / 255", 0.1]))
    assert spec.threats[0].epsilons == (0.0, 8 / 255, 0.5 / 255, 0.1)
    assert parse_number("5e-4", "train.lr") == 5e-4
    for bad in ("__import__('os').getcwd()", "8/0", "1/2/3", "2**3", "nan", ""):
        with pytest.raises(ConfigError, match="x="):
            parse_number(bad, "x")


def test_defaults_resolve_to_absolute_paths_under_unisweep_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("UNISWEEP_STORAGE", raising=False)
    spec = parse_spec(variant())
    assert spec.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert spec.tracking.artifact_location == str(tmp_path / "mlartifacts")
    assert spec.storage == str(tmp_path / "ray_results")
    assert tr.default_paths().tracking_uri == spec.tracking.uri
    remote = parse_spec(variant(tracking={"uri": "http://mlflow:5000"}, storage="s3://b/ray"))
    assert remote.tracking.artifact_location is None and remote.storage == "s3://b/ray"


def test_threat_model_axis_with_per_model_epsilons():
    spec = parse_spec(variant(threat_model=["l2", "linf"],
                              epsilons={"l2": [0, 0.5], "linf": [0, "8/255"]}))
    pairs = {(c.threat_model, c.eps) for c in spec.cells()}
    assert pairs == {("l2", 0.0), ("l2", 0.5), ("linf", 0.0), ("linf", 8 / 255)}
    assert len(spec.cells()) == 4 * 2 * 2


# (changes to BASE, text the one-line error must contain)
BAD = {
    "unknown_top_key": (dict(trian={"epochs": 1}), "trian: unknown key"),
    "unknown_nested_key": (dict(train__epoch=3), "train.epoch: unknown key"),
    "unknown_arch": (dict(archs=["mlp", "resnet9000"]), "archs[1]='resnet9000'"),
    "unknown_dataset": (dict(dataset={"name": "mnist"}), "dataset.name='mnist'"),
    "unknown_threat_model": (dict(threat_model="l3"), "threat_model='l3'"),
    "negative_eps": (dict(epsilons=[0, -0.1]), "epsilons[1]=-0.1 is negative"),
    "eps_above_one": (dict(epsilons=[0, 8]), "did you mean 8/255?"),
    "empty_grid": (dict(seeds=[]), "seeds=[] is an empty grid axis"),
    "duplicate_eps": (dict(epsilons=[0.1, "1/10"]), "epsilons[1]='1/10' duplicates epsilons[0]"),
    "duplicate_arch": (dict(archs=["mlp", "cnn", "mlp"]), "archs[2]='mlp' duplicates archs[0]"),
    "duplicate_seed": (dict(seeds=[3, 3]), "seeds[1]=3 duplicates seeds[0]"),
    "missing_root": (dict(dataset={"name": "cifar10"}), "dataset.root=None is missing"),
    "absent_root": (dict(dataset={"name": "cifar10", "root": "/nonexistent/cifar"}),
                    "dataset.root='/nonexistent/cifar' does not exist"),
    "wrong_type_epochs": (dict(train__epochs="ten"), "train.epochs='ten'"),
    "wrong_type_seed": (dict(seeds=["a"]), "seeds[0]='a'"),
    "wrong_type_bool_lr": (dict(train__lr=True), "train.lr=True"),
    "fractional_epochs": (dict(train__epochs=1.5), "train.epochs=1.5"),
    "bad_resources": (dict(resources={"cpu": 0}), "resources.cpu=0"),
    "bad_name": (dict(name="my sweep/1"), "name='my sweep/1'"),
    "hpo_untunable": (dict(hpo={"space": {"epochs": {"choice": [1, 2]}}, "num_samples": 2}),
                      "hpo.space.epochs"),
    "hpo_bad_range": (dict(hpo={"space": {"lr": {"loguniform": [0, 0.1]}}, "num_samples": 2}),
                      "hpo.space.lr.loguniform"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_is_one_line_exit_2_and_no_mlflow_runs(case, tmp_path, monkeypatch, capsys):
    changes, expected = BAD[case]
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(variant(**changes)))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert expected in str(info.value)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: t\narchs: [mlp, cnn\nseeds: [0]\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "YAML syntax error at line" in err and err.count("\n") == 1


def test_cli_user_error_in_a_real_process(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(variant(train__epoch=3)))
    env = {**os.environ, "UNISWEEP_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", str(path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m sweeps: error: {path}: train.epoch: unknown key in 'train' (did you mean "
        f"'epochs'?); allowed: attack_step_rule, attack_step_size, attack_steps, batch_size, "
        f"checkpoint_every, compile, epochs, keep_checkpoints, lr, lr_gamma, lr_step_size, "
        f"memory_format, momentum, optimizer, precision, schedule, weight_decay"]
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_lists_every_cell_and_resources(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    assert main(["run", str(SWEEPS / "demo.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(SWEEPS / "demo.yaml")
    assert f"{len(spec.cells())} cells; per trial cpu=1 gpu=0" in out
    assert all(c.arch.label in out for c in spec.cells())
    assert not (tmp_path / "mlflow.db").exists()


def test_commands_on_an_empty_home_neither_fail_nor_create_a_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["list"]) == 0
    assert "no sweeps yet" in capsys.readouterr().out
    assert main(["status", "demo"]) == 2
    assert "no sweep named 'demo'" in capsys.readouterr().err
    assert main(["resume", "demo"]) == 2
    assert "no sweep named 'demo'" in capsys.readouterr().err
    assert main(["submit", str(SWEEPS / "demo.yaml")]) == 2
    assert "RAY_ADDRESS is not set" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("threats", [
    dict(threat_model="linf", epsilons=[0, 0.1, 0.2]),
    dict(threat_model=["l2", "linf"], epsilons={"l2": [0, 0.5], "linf": [0.1]}),
])
def test_grid_search_expands_to_each_cell_exactly_once(threats):
    from ray.tune.search.variant_generator import generate_variants

    from sweeps.launch import build_param_space
    from sweeps.tuner import SweepHandle, cell_of

    spec = parse_spec(variant(archs=["mlp", {"name": "resnet18", "width": 0.125}], **threats))
    space = build_param_space(spec, SweepHandle(spec, None, "1", "parent"))
    keys = [cell_of(config).key for _, config in generate_variants(space)]
    assert sorted(keys) == sorted(c.key for c in spec.cells())
    assert len(keys) == len(set(keys))


def test_retries_ride_out_transient_errors_only():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("database is locked", error_code=INTERNAL_ERROR)
        return "ok"

    assert tr.with_retries(flaky, base_delay_s=0.0) == "ok" and len(calls) == 3

    def wrong():
        calls.append(1)
        raise MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE)

    calls.clear()
    with pytest.raises(MlflowException, match="bad param"):
        tr.with_retries(wrong, base_delay_s=0.0)
    assert len(calls) == 1
    assert math.isclose(float(tr.format_eps(8 / 255)), 8 / 255, rel_tol=0, abs_tol=0)


# The TrainConfig each shipped spec gives its last adversarial cell (as before the settings were
# declared once, in trainables/config.py): the spec's sections, the grid cell, the step rule.
_CIFAR = dict(dataset="cifar10", data_root="/data/cifar10", epochs=90, batch_size=512, lr=0.1,
              schedule="step", lr_step_size=30, lr_gamma=0.1, momentum=0.9, weight_decay=5e-4,
              eval_size=10000, eval_seed=0, eval_attack_steps=10, final_eval_steps=50,
              final_eval_restarts=3, num_threads=4, num_workers=4, arch="wrn16_4", seed=2,
              checkpoint_every=10, keep_checkpoints=None)
SHIPPED_LAST_CELL = {
    "demo": dict(dataset="digits", data_root=None, image_size=None, arch="resnet18", width=0.125,
                 threat_model="linf", eps=0.2, seed=1, epochs=15, batch_size=64, optimizer="sgd",
                 lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", lr_step_size=30,
                 lr_gamma=0.1, attack_steps=7, attack_step_size=None, eval_attack_steps=5,
                 eval_size=360, eval_seed=0, final_eval_steps=20, final_eval_restarts=2,
                 extra_eval_eps=(), num_threads=1, num_workers=0, device="auto"),
    "cifar10_l2": _CIFAR | dict(threat_model="l2", eps=1.0, attack_steps=7,
                                attack_step_size=0.2857, extra_eval_eps=(0.25, 0.5, 1.0)),
    "cifar10_linf": _CIFAR | dict(threat_model="linf", eps=8 / 255, attack_steps=7,
                                  attack_step_size=None,
                                  extra_eval_eps=(2 / 255, 4 / 255, 8 / 255)),
    "imagenet100_l2": _CIFAR | dict(
        dataset="imagefolder", data_root="/data/imagenet100", image_size=224, batch_size=256,
        weight_decay=1e-4, eval_size=5000, final_eval_steps=20, final_eval_restarts=2,
        num_threads=8, num_workers=8, threat_model="l2", eps=3.0, attack_steps=3,
        attack_step_size=0.6667 * 3.0, extra_eval_eps=(0.25, 1.0, 3.0), checkpoint_every=15),
}


def _trial_config(spec, cell) -> TrainConfig:
    from sweeps.tuner import SweepHandle, base_param_space  # Ray
    from trainables.trial import train_config_dict

    config = {**base_param_space(spec, SweepHandle(spec, None, "1", "parent"), role="trial"),
              "model": {"arch": cell.arch.name, "width": cell.arch.width},
              "threat_model": cell.threat_model, "eps": cell.eps, "seed": cell.seed}
    return TrainConfig.from_dict(train_config_dict(config))


@pytest.mark.parametrize("name", sorted(SHIPPED_LAST_CELL))
def test_shipped_specs_give_the_same_train_configs(name, monkeypatch):
    monkeypatch.setenv("UNISWEEP_DATA", "/data")
    spec = load_spec(SWEEPS / f"{name}.yaml", check_paths=False)
    assert _trial_config(spec, spec.cells()[-1]) == TrainConfig(**SHIPPED_LAST_CELL[name])


def test_a_spec_that_sets_nothing_trains_with_the_declared_defaults():
    spec = parse_spec({"name": "t", "dataset": {"name": "digits"}, "archs": ["mlp"],
                       "threat_model": "l2", "epsilons": [0.5]})
    cfg = _trial_config(spec, spec.cells()[0])
    assert cfg == TrainConfig(arch="mlp", threat_model="l2", eps=0.5, seed=0, num_threads=1)
    assert cfg.lr == 0.1 and cfg.epochs == 10 and cfg.final_eval_steps == 50


def test_a_trial_config_stored_before_a_setting_existed_resumes_with_its_default():
    """A sweep started by an older unisweep is resumed from trial configs that lack settings
    declared since (e.g. train.checkpoint_every): they take the declared default."""
    from sweeps.tuner import SweepHandle, base_param_space  # Ray
    from trainables.trial import train_config_dict

    spec = load_spec(SWEEPS / "demo.yaml", check_paths=False)
    cell = spec.cells()[-1]
    config = {**base_param_space(spec, SweepHandle(spec, None, "1", "parent"), role="trial"),
              "model": {"arch": cell.arch.name, "width": cell.arch.width},
              "threat_model": cell.threat_model, "eps": cell.eps, "seed": cell.seed}
    new = TrainConfig.from_dict(train_config_dict(config))
    for section, key in (("train", "checkpoint_every"), ("train", "keep_checkpoints"),
                         ("train", "attack_step_rule")):
        del config[section][key]
    assert TrainConfig.from_dict(train_config_dict(config)) == new


def test_spec_reference_tables_are_generated_from_the_declarations():
    """docs/spec-reference.md shows every declared setting of dataset/train/eval, as declared
    (regenerate with `python -m trainables.config docs/spec-reference.md`)."""
    from sweeps.spec_hpo import TUNABLE
    from trainables.config import render_reference, spec_settings

    text = (SWEEPS.parent / "docs" / "spec-reference.md").read_text()
    assert render_reference(text) == text, "stale: python -m trainables.config docs/spec-reference.md"
    for section in ("dataset", "train", "eval"):
        assert f"<!-- settings: {section} -->" in text
        block = text.split(f"<!-- settings: {section} -->")[1].split("<!-- /settings -->")[0]
        assert all(f"| `{key}` |" in block for key in spec_settings(section))
    space_row = next(line for line in text.splitlines() if line.startswith("| `space` |"))
    assert all(f"`{key}`" in space_row for key in TUNABLE)
