"""Training: standard vs PGD training on digits, exact resume, config validation, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.checkpoints import load_checkpoint, load_train_state
from trainables.errors import ConfigError
from trainables.tracking import final_robust_at
from trainables.config import TrainConfig
from trainables.train import main, train_model

EPS = 0.15  # Linf, pixel scale; SPEC §9: digits' meaningful range is 0.05-0.2
FINAL_AT_EPS = final_robust_at(EPS)
EVAL_AT_EPS = "eval/" + FINAL_AT_EPS.split("/", 1)[1]
FAST = dict(dataset="digits", arch="cnn", threat_model="linf", batch_size=64, lr=0.05,
            eval_attack_steps=5, final_eval_steps=20, final_eval_restarts=2, num_threads=1)


@pytest.fixture(scope="module")
def std_and_adv():
    """One standard and one PGD-trained CNN (8 epochs each, ~10 s on an idle 2-core machine)."""
    threads = torch.get_num_threads()
    reports: list[tuple[dict, list[str]]] = []

    def report(metrics: dict, ckpt: Path) -> None:
        reports.append((metrics, sorted(p.name for p in ckpt.iterdir())))
        if metrics["epoch"] == 8:
            model, meta = load_checkpoint(ckpt)
            reports.append((meta, [type(model).__name__]))

    std = train_model(TrainConfig(eps=0.0, epochs=8, extra_eval_eps=(EPS,), **FAST), report=report)
    adv = train_model(TrainConfig(eps=EPS, epochs=8, **FAST))
    torch.set_num_threads(threads)
    return std, adv, reports


def test_standard_training_reaches_high_clean_accuracy(std_and_adv):
    std, _, _ = std_and_adv
    assert std.metrics["final/clean_acc"] >= 0.9
    assert std.metrics["final/robust_acc"] == std.metrics["final/clean_acc"]  # eps = 0
    assert [h["epoch"] for h in std.history] == list(range(1, 9))
    assert std.history[-1]["train/loss"] < std.history[0]["train/loss"]
    assert not std.model.training


def test_adversarial_training_trades_clean_for_robust_accuracy(std_and_adv):
    std, adv, _ = std_and_adv
    std_robust = std.metrics[FINAL_AT_EPS]
    assert adv.metrics["final/robust_acc"] > std_robust + 0.2
    assert adv.metrics["final/clean_acc"] < std.metrics["final/clean_acc"]
    assert adv.metrics["final/clean_acc"] >= 0.85
    # The strong final attack is at least as strong as the per-epoch one.
    assert adv.metrics["final/robust_acc"] <= adv.metrics["eval/robust_acc"] + 0.02


def test_each_epoch_reports_metrics_and_a_loadable_checkpoint(std_and_adv):
    std, _, reports = std_and_adv
    epochs = [r for r in reports if "epoch" in r[0] and "train/loss" in r[0]]
    assert len(epochs) == 8
    files = ["meta.json", "model.safetensors", "train_state.json", "train_state.safetensors"]
    assert all(names == files for _, names in epochs)
    names = {"epoch", "train/loss", "train/acc", "eval/clean_acc", "eval/robust_acc",
             EVAL_AT_EPS, "time/epoch_s"}
    assert all(names <= set(m) for m, _ in epochs)
    assert not any(k.startswith("final/") for m, _ in epochs[:-1] for k in m)
    assert {"final/clean_acc", "final/robust_acc"} <= set(epochs[-1][0])
    meta, kind = reports[-1]
    assert kind == ["UniModel"]
    assert meta["epoch"] == 8 and meta["metrics"] == std.metrics
    assert meta["data_hash"] == std.meta["data_hash"] and len(meta["data_hash"]) == 64


@pytest.mark.parametrize("extra", [
    dict(arch="cnn", eps=0.1, optimizer="sgd", schedule="cosine"),
    dict(arch="resnet18", width=0.125, eps=0.0, optimizer="adam", schedule="step", lr=1e-3,
         lr_step_size=1, lr_gamma=0.5),
])
def test_resume_after_interruption_is_bit_identical(tmp_path: Path, extra):
    base = FAST | dict(epochs=3, eval_size=50, final_eval_steps=3, final_eval_restarts=1,
                       attack_steps=3, seed=4) | extra
    cfg = TrainConfig.from_dict(base)
    full = train_model(cfg)

    class Interrupted(Exception):
        pass

    def crash_after_first(metrics: dict, ckpt: Path) -> None:
        shutil.copytree(ckpt, tmp_path / f"e{metrics['epoch']}")
        if metrics["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_model(cfg, report=crash_after_first)
    assert load_train_state(tmp_path / "e1")["epoch"] == 1
    resumed = train_model(cfg, resume_from=tmp_path / "e1", report=crash_after_first)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop_times = lambda h: {k: v for k, v in h.items() if not k.startswith("time/")}  # noqa: E731
    assert [drop_times(h) for h in full.history] == [drop_times(h) for h in resumed.history]
    # Resuming a finished run trains nothing and returns the stored metrics.
    again = train_model(cfg, resume_from=tmp_path / "e3")
    assert drop_times(again.metrics) == drop_times(full.metrics)
    with pytest.raises(ConfigError, match=r"config differs in \['eps'\]"):
        train_model(TrainConfig.from_dict(base | {"eps": 0.2}), resume_from=tmp_path / "e1")


@pytest.mark.parametrize("field,value", [
    ("dataset", "mnist"), ("arch", "resnet19"), ("width", 0), ("threat_model", "l1"),
    ("eps", -0.1), ("eps", 1.5), ("eps", "8/255"), ("seed", -1), ("seed", 1.5), ("epochs", 0),
    ("batch_size", 1), ("optimizer", "rmsprop"), ("lr", 0), ("momentum", 1.0),
    ("weight_decay", -1), ("schedule", "linear"), ("lr_gamma", 0), ("attack_steps", 0),
    ("attack_step_size", -0.01), ("eval_attack_steps", True), ("eval_size", 0),
    ("final_eval_steps", 0), ("final_eval_restarts", 0), ("extra_eval_eps", [0.1, -1]),
    ("num_threads", 0), ("device", "tpu"), ("image_size", 4), ("data_root", 3),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({field: value})


def test_config_round_trip_defaults_and_unknown_keys():
    cfg = TrainConfig.from_dict({"eps": 1, "extra_eval_eps": [0.5, 1], "threat_model": "l2"})
    assert cfg.eps == 1.0 and isinstance(cfg.eps, float)
    assert cfg.extra_eval_eps == (0.5, 1.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    d = TrainConfig()
    assert d.final_eval_steps >= 50 and d.eval_attack_steps > d.attack_steps
    with pytest.raises(ConfigError, match=r"unknown train config keys \['epsilon'\].*eps"):
        TrainConfig.from_dict({"epsilon": 0.1})


def test_every_setting_has_a_cli_flag_with_its_declared_default():
    import argparse

    from trainables.config import SETTINGS
    from trainables.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, SETTINGS)
    assert TrainConfig.from_dict(vars(parser.parse_args([]))) == TrainConfig()
    args = vars(parser.parse_args(["--momentum", "0.5", "--extra-eval-eps", "0.1", "0.2",
                                   "--eval-size", "7", "--data-root", "/x"]))
    cfg = TrainConfig.from_dict(args)
    assert (cfg.momentum, cfg.extra_eval_eps, cfg.eval_size, cfg.data_root) == (
        0.5, (0.1, 0.2), 7, "/x")


def test_cli_trains_and_saves(tmp_path: Path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "trainables.train", "--dataset", "digits", "--arch", "mlp",
         "--threat-model", "l2", "--eps", "0.5", "--seed", "1", "--epochs", "2",
         "--attack-steps", "2", "--final-eval-steps", "2", "--final-eval-restarts", "1",
         "--num-threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("epoch 1/2") and lines[1].startswith("epoch 2/2")
    assert "final/robust_acc=" in lines[1]
    model, meta = load_checkpoint(out)
    assert (meta["arch"], meta["eps"], meta["threat_model"], meta["epoch"]) == ("mlp", 0.5, "l2", 2)


def test_cli_user_errors_are_one_line_exit_2(capsys):
    assert main(["--arch", "resnet19", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: arch must be one of")
    assert "Traceback" not in err
