"""Training throughput settings: precision (bf16 autocast), memory format, torch.compile.

On the CPU (CI has no GPU): a bf16 PGD attack is as strong as an fp32 one on fixed trained
models, bf16 training runs and records its precision, the `auto` rules resolve as documented, a
spec asking for bf16 and a quarter GPU per trial validates, and channels_last changes no value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sweeps.__main__ import main as sweeps_main
from sweeps.spec import load_spec
from trainables.attacks import robust_accuracy
from trainables.config import TrainConfig, from_spec_sections
from trainables.data import load_dataset
from trainables.errors import ConfigError
from trainables.models import build_model
from trainables.precision import autocast, resolve_memory_format, resolve_precision
from trainables.train import train_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # CUDA only as a name: nothing runs there
FAST = dict(dataset="digits", threat_model="linf", batch_size=64, lr=0.05, eval_attack_steps=2,
            final_eval_steps=2, final_eval_restarts=1, num_threads=1)
ATTACK_TOL = 0.01  # |robust acc under bf16 PGD - under fp32 PGD|: 1 percentage point


@pytest.fixture(scope="module")
def trained():
    """A PGD-trained CNN and MLP (fp32, 4 epochs on digits, ~10 s) and the eval set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models = {arch: train_model(TrainConfig(arch=arch, eps=0.1, epochs=4, seed=3, **FAST)).model
              for arch in ("cnn", "mlp")}
    torch.set_num_threads(threads)
    return models, load_dataset("digits", seed=0).eval_tensors()


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_bf16_pgd_is_as_strong_as_fp32_pgd(trained, arch):
    models, (X, y) = trained
    model = models[arch]
    with autocast("bf16", CPU):  # the attack really runs in bf16
        assert model(X[:4]).dtype == torch.bfloat16
    for eps in (0.05, 0.1, 0.15):
        acc = {}
        for precision in ("fp32", "bf16"):
            with autocast(precision, CPU):
                acc[precision] = robust_accuracy(model, X, y, norm="linf", eps=eps, steps=20,
                                                 restarts=1, generator=torch.Generator().manual_seed(5))
        assert 0.05 < acc["fp32"] < 0.95  # neither trivially robust nor trivially broken
        assert abs(acc["bf16"] - acc["fp32"]) <= ATTACK_TOL, (eps, acc)


def test_bf16_trains_on_cpu_and_records_its_precision():
    res = train_model(TrainConfig(arch="mlp", eps=0.1, epochs=2, precision="bf16", **FAST))
    fp32 = train_model(TrainConfig(arch="mlp", eps=0.1, epochs=2, precision="fp32", **FAST))
    assert res.meta["precision"] == "bf16" and fp32.meta["precision"] == "fp32"
    assert res.meta["config"]["precision"] == "bf16"  # the MLflow params of a trial
    assert res.metrics["eval/clean_acc"] > 0.6  # it learned (10 classes: chance is 0.1)
    assert abs(res.metrics["eval/clean_acc"] - fp32.metrics["eval/clean_acc"]) < 0.1
    # the weights differ: the forward passes really ran in bf16
    a, b = res.model.state_dict(), fp32.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_auto_rules():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", CUDA) == "bf16"
    assert resolve_precision("bf16", CPU) == "bf16"
    cnn = build_model("cnn", num_classes=10, in_channels=1, image_size=8)
    mlp = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    assert resolve_memory_format("auto", cnn, CUDA) == "channels_last"
    assert resolve_memory_format("auto", mlp, CUDA) == "contiguous"
    assert resolve_memory_format("auto", cnn, CPU) == "contiguous"
    with pytest.raises(ConfigError, match=r"precision must be one of \['auto', 'fp32', 'bf16'\], got precision='fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match=r"compile must be one of"):
        TrainConfig(compile="yes")
    defaults = TrainConfig()
    assert (defaults.precision, defaults.memory_format, defaults.compile) == ("auto", "auto", "none")


def test_channels_last_changes_no_value():
    """The layout is a speed choice only: same losses and weights (to float32 rounding)."""
    runs = [train_model(TrainConfig(arch="cnn", eps=0.1, epochs=1, memory_format=fmt, **FAST))
            for fmt in ("contiguous", "channels_last")]
    assert runs[1].meta["memory_format"] == "channels_last"
    assert runs[0].metrics["train/loss"] == pytest.approx(runs[1].metrics["train/loss"], rel=1e-4)
    for k, v in runs[0].model.state_dict().items():
        torch.testing.assert_close(runs[1].model.state_dict()[k], v, rtol=1e-3, atol=1e-4)


def test_spec_with_bf16_and_a_quarter_gpu_validates(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({
        "name": "gpu-quarter", "dataset": {"name": "digits"}, "archs": ["cnn"],
        "threat_model": "linf", "epsilons": [0, "8/255"], "seeds": [0],
        "train": {"epochs": 1, "precision": "bf16", "memory_format": "auto", "compile": "none"},
        "resources": {"cpu": 1, "gpu": 0.25}}))
    spec = load_spec(path)
    assert spec.resources.gpu == 0.25 and spec.train.precision == "bf16"
    d = spec.to_dict()
    args = from_spec_sections({k: d[k] for k in ("dataset", "train", "eval")}, eps=8 / 255)
    assert TrainConfig(**args, arch="cnn").precision == "bf16"
    assert sweeps_main(["run", str(path), "--dry-run"]) == 0
    assert "gpu=0.25" in capsys.readouterr().out
    path.write_text(path.read_text().replace("precision: bf16", "precision: half"))
    with pytest.raises(ConfigError, match="precision"):
        load_spec(path)


def test_compiled_training_equals_eager_and_checkpoints_the_plain_model(tmp_path: Path):
    """`compile: default` (torch.compile; ~1 min of compilation on this CPU): the same losses,
    and the checkpoint holds the model's own state-dict keys (not the wrapper's)."""
    from trainables.checkpoints import load_checkpoint

    cfg = dict(arch="mlp", eps=0.1, epochs=1, attack_steps=1, **FAST)
    saved = []
    eager = train_model(TrainConfig(**cfg))
    compiled = train_model(TrainConfig(**cfg, compile="default"),
                           report=lambda metrics, ckpt: saved.append(load_checkpoint(ckpt)[0]))
    assert compiled.metrics["train/loss"] == pytest.approx(eager.metrics["train/loss"], rel=1e-5)
    assert list(saved[0].state_dict()) == list(eager.model.state_dict())
