"""The generated `shapes` dataset: determinism, balance, ranges, learnability, size validation
(the loader, TrainConfig, the sweep spec and both command lines), the data hash."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweeps.__main__ import main as sweeps_main
from sweeps.spec import parse_spec
from trainables import shapes
from trainables.config import DATASETS, TrainConfig
from trainables.data import load_dataset
from trainables.errors import ConfigError
from trainables.shapes import SHAPE_NAMES, generate_shapes, shape_coverage
from trainables.train import main as train_main


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensor ops are fastest on one thread, and far slower oversubscribed on a busy box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_same_seed_is_bit_identical_other_seed_differs():
    a, ya = generate_shapes(40, 7)
    b, yb = generate_shapes(40, 7)
    c, _ = generate_shapes(40, 8)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert a.shape == (40, 3, 32, 32) and a.dtype == torch.float32 and ya.dtype == torch.int64
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # Another seed: every image differs (not only a few pixels).
    assert (a - c).abs().flatten(1).amax(1).min() > 0.2


def test_a_smaller_set_is_a_prefix_of_a_larger_one_across_chunks():
    small, ys = generate_shapes(13, 3)
    large, yl = generate_shapes(shapes.CHUNK + 5, 3)
    assert torch.equal(large[:13], small) and torch.equal(yl[:13], ys)
    # The second chunk has its own stream: not a copy of the first.
    assert not torch.equal(large[shapes.CHUNK:], large[:5])


def test_labels_cycle_so_classes_are_balanced():
    _, y = generate_shapes(95, 1)
    assert torch.equal(y, torch.arange(95) % 10)
    counts = np.bincount(y.numpy(), minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 95


def test_every_shape_has_its_own_mask_with_antialiased_edges():
    one = torch.tensor([16.0])
    masks = torch.stack([shape_coverage(c, one, one, torch.tensor([8.0]), torch.tensor([0.0]))[0]
                         for c in range(len(SHAPE_NAMES))])  # (10, 32, 32)
    assert masks.min() >= 0 and masks.max() <= 1
    disc_area = float(masks[SHAPE_NAMES.index("disc")].sum())
    assert disc_area == pytest.approx(math.pi * 8**2, rel=0.03)
    for m in masks:  # partial coverage exists only on edges, and every shape has some
        assert 0 < int(((m > 0) & (m < 1)).sum()) < int((m > 0).sum())
    inter = torch.minimum(masks[:, None], masks[None]).sum((2, 3))
    union = torch.maximum(masks[:, None], masks[None]).sum((2, 3))
    iou = (inter / union).numpy()
    off_diagonal = iou[~np.eye(10, dtype=bool)]
    assert off_diagonal.max() < 0.85, "two classes draw nearly the same shape"


def test_load_dataset_shapes_sizes_seeds_hash_and_normalisation():
    a = load_dataset("shapes", n_train=60, n_test=30)
    b = load_dataset("shapes", n_train=60, n_test=30)
    assert "shapes" in DATASETS
    assert (a.num_classes, a.in_channels, a.image_size) == (10, 3, 32)
    assert (len(a.train), len(a.test)) == (60, 30)
    assert a.eval_hash == b.eval_hash and torch.equal(a.train.x, b.train.x)
    assert np.bincount(a.train.y.numpy()).tolist() == [6] * 10
    assert np.bincount(a.test.y.numpy()).tolist() == [3] * 10
    # Train and test differ only by their seed: they are disjoint by construction.
    assert shapes.TRAIN_SEED != shapes.TEST_SEED
    assert torch.equal(a.train.x, generate_shapes(60, shapes.TRAIN_SEED)[0])
    assert torch.equal(a.test.x, generate_shapes(30, shapes.TEST_SEED)[0])
    d = torch.cdist(a.test.x.flatten(1), a.train.x.flatten(1))
    assert float(d.min()) > 1.0
    x, label = a.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and label == 0
    assert load_dataset("shapes", n_train=60, n_test=31).eval_hash != a.eval_hash
    assert a.mean == shapes.MEAN and a.std == shapes.STD


def test_normalisation_constants_fit_the_generator():
    x, _ = generate_shapes(2000, shapes.TRAIN_SEED)
    assert np.allclose(x.mean((0, 2, 3)).numpy(), shapes.MEAN, atol=0.01)
    assert np.allclose(x.std((0, 2, 3)).numpy(), shapes.STD, atol=0.01)


def test_default_sizes_are_declared():
    assert (shapes.N_TRAIN, shapes.N_TEST) == (8000, 1000)


@pytest.mark.parametrize("kwargs, field", [
    ({"n_train": 0}, "n_train=0"), ({"n_test": -1}, "n_test=-1"),
    ({"n_train": "100"}, "n_train='100'"), ({"n_test": 2.5}, "n_test=2.5"),
    ({"n_train": True}, "n_train=True"), ({"n_train": shapes.MAX_IMAGES + 1}, "n_train="),
])
def test_bad_sizes_are_refused_with_one_line(kwargs, field):
    with pytest.raises(ConfigError, match=r"must be an integer in \[1, 1000000\]") as info:
        load_dataset("shapes", **kwargs)
    assert field in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["digits"])
@pytest.mark.parametrize("kwargs", [{"n_train": 100}, {"n_test": 10}])
def test_sizes_are_refused_for_datasets_that_are_not_generated(name, kwargs):
    (field, value), = kwargs.items()
    for build in (lambda: load_dataset(name, **kwargs),
                  lambda: TrainConfig(dataset=name, **kwargs)):
        with pytest.raises(ConfigError, match="applies only to generated datasets") as info:
            build()
        msg = str(info.value)
        assert f"{field}={value}" in msg and "'digits'" in msg and "allowed: null" in msg


def test_train_config_refuses_bad_sizes_naming_the_field():
    with pytest.raises(ConfigError, match=r"n_test must be an integer in \[1, 1000000\] or null, "
                                          r"got n_test=0"):
        TrainConfig(dataset="shapes", n_test=0)
    assert TrainConfig(dataset="shapes", n_train=400).n_train == 400


def _spec(dataset: dict) -> dict:
    return {"name": "t", "dataset": dataset, "archs": ["cnn"], "threat_model": "linf",
            "epsilons": [0], "seeds": [0]}


@pytest.mark.parametrize("dataset, message", [
    ({"name": "shapes", "n_train": 0},
     "dataset.n_train=0 is not allowed; allowed: an integer in [1, 1000000]"),
    ({"name": "shapes", "n_test": 2.5},
     "dataset.n_test=2.5 is not allowed; allowed: an integer in [1, 1000000]"),
    ({"name": "digits", "n_train": 100},
     "dataset.n_train=100 applies only to generated datasets ['shapes']"),
])
def test_the_spec_refuses_bad_sizes(dataset, message):
    with pytest.raises(ConfigError) as info:
        parse_spec(_spec(dataset))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_spec_reads_sizes_and_needs_no_root_for_shapes():
    spec = parse_spec(_spec({"name": "shapes", "n_train": 400, "n_test": 200}))
    assert (spec.dataset.name, spec.dataset.n_train, spec.dataset.n_test) == ("shapes", 400, 200)
    assert spec.dataset.root is None


def test_command_lines_exit_2_with_one_line_on_bad_sizes(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ndataset: {name: shapes, n_train: -5}\narchs: [cnn]\n"
                    "threat_model: linf\nepsilons: [0]\n")
    assert sweeps_main(["run", "--dry-run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "dataset.n_train=-5 is not allowed" in err and len(err.splitlines()) == 1
    assert train_main(["--dataset", "shapes", "--n-train", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "n_train must be an integer in [1, 1000000]" in err and len(err.splitlines()) == 1
    assert train_main(["--dataset", "digits", "--n-test", "10", "--out", str(tmp_path)]) == 2
    assert "applies only to generated datasets" in capsys.readouterr().err


def test_the_data_hash_covers_generator_version_sizes_and_seeds(monkeypatch):
    a = load_dataset("shapes", n_train=60, n_test=30)
    # Same eval images, other training set: another hash (the models are not comparable).
    b = load_dataset("shapes", n_train=61, n_test=30)
    assert torch.equal(a.test.x, b.test.x) and a.eval_hash != b.eval_hash
    assert "v2" in a.provenance and "n_train 60" in a.provenance
    assert str(shapes.TRAIN_SEED) in a.provenance and str(shapes.TEST_SEED) in a.provenance
    monkeypatch.setattr(shapes, "GENERATOR_VERSION", 3)
    assert load_dataset("shapes", n_train=60, n_test=30).eval_hash != a.eval_hash
    monkeypatch.setattr(shapes, "TRAIN_SEED", shapes.TRAIN_SEED + 1)
    assert shapes.provenance(60, 30) != a.provenance
    # Stored datasets keep their hash of the images alone.
    assert load_dataset("digits").provenance == ""


def test_generator_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="n must be an integer"):
        generate_shapes(0, 1)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0, got seed=-1"):
        generate_shapes(5, -1)


def test_every_class_is_learnable_by_a_tiny_cnn():
    """4 epochs of a 3-conv net on 1,500 images: every class far above chance (0.1)."""
    torch.manual_seed(0)
    x, y = generate_shapes(1500, 5)
    xt, yt = generate_shapes(500, 6)
    mean = torch.tensor(shapes.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(shapes.STD).view(1, 3, 1, 1)

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                        *block(32, 32), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        net.train()
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(net((x[idx] - mean) / std), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net((xt - mean) / std).argmax(1)
    recall = [float((pred[yt == c] == c).float().mean()) for c in range(10)]
    assert float((pred == yt).float().mean()) > 0.85
    assert min(recall) > 0.6, dict(zip(SHAPE_NAMES, recall))
