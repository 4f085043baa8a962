"""Dataset loaders on real files: digits, a tiny CIFAR-10 pickle dir, a tiny ImageFolder tree."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import IMAGENET_MEAN, load_dataset, random_crop_flip
from trainables.errors import ConfigError, DataError


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_split_is_fixed_stratified_and_scaled():
    a, b = load_dataset("digits"), load_dataset("digits", seed=7)
    assert (a.num_classes, a.in_channels, a.image_size) == (10, 1, 8)
    assert (len(a.train), len(a.test)) == (1347, 450)
    # The split ignores every seed: same tensors whatever the eval seed.
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    all_counts = np.bincount(np.concatenate([a.train.y.numpy(), a.test.y.numpy()]))
    test_counts = np.bincount(a.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.25 * all_counts) <= 1)  # stratified
    x, label = a.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(label, int)
    assert a.train.x.min() == 0 and a.train.x.max() == 1
    assert a.mean[0] == pytest.approx(float(a.train.x.mean()))
    assert a.std[0] == pytest.approx(float(a.train.x.std()))


def test_eval_subset_is_seeded_sorted_and_hashed():
    full = load_dataset("digits")
    assert np.array_equal(full.eval_indices, np.arange(450))
    s1, s2 = load_dataset("digits", eval_size=100), load_dataset("digits", eval_size=100)
    other = load_dataset("digits", eval_size=100, seed=1)
    assert np.array_equal(s1.eval_indices, s2.eval_indices)
    assert s1.eval_hash == s2.eval_hash == s1.eval_hash
    assert len(s1.eval_hash) == 64
    assert np.all(np.diff(s1.eval_indices) > 0) and s1.eval_indices.dtype == np.int64
    assert not np.array_equal(s1.eval_indices, other.eval_indices)
    assert len({s1.eval_hash, other.eval_hash, full.eval_hash}) == 3
    X, y = s1.eval_tensors()
    assert X.shape == (100, 1, 8, 8) and y.dtype == torch.int64
    assert torch.equal(X, s1.test.x[torch.from_numpy(s1.eval_indices)])


@pytest.mark.parametrize("size", [0, 451, 2.5])
def test_bad_eval_size_names_the_field(size):
    with pytest.raises(ConfigError, match="eval_size"):
        load_dataset("digits", eval_size=size)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*cifar10"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 in its python-pickle layout


def _write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    # The original files are Python 2 cPickles with bytes keys; protocol 2 matches them.
    obj = {b"batch_label": b"tiny", b"labels": labels, b"data": data,
           b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for b in (1, 2):
        data = rng.integers(0, 256, size=(10, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(10) + 10 * b  # red channel, pixel (0, 0)
        data[:, 1024 + 33] = 200  # green channel, pixel (1, 1)
        _write_batch(d / f"data_batch_{b}", data, [(i + b) % 10 for i in range(10)])
    _write_batch(d / "test_batch", rng.integers(0, 256, (10, 3072), dtype=np.uint8), list(range(10)))
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return tmp_path


def test_cifar10_reads_the_standard_layout(cifar_root: Path):
    for root in (cifar_root, cifar_root / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", root=root, eval_size=4)
        assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 3, 32)
        assert (len(ds.train), len(ds.test)) == (20, 10)
        idx = torch.arange(20)
        x, y = ds.train.batch(idx, augment=False)
        assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
        assert torch.allclose(x[:, 0, 0, 0] * 255, torch.arange(10, 30, dtype=torch.float32))
        assert torch.allclose(x[:, 1, 1, 1], torch.full((20,), 200 / 255))
        assert y.tolist() == [(i + 1) % 10 for i in range(10)] + [(i + 2) % 10 for i in range(10)]
        assert ds.eval_tensors()[0].shape == (4, 3, 32, 32)
        assert ds.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_cifar10_training_augmentation_is_seeded_crop_and_flip(cifar_root: Path):
    ds = load_dataset("cifar10", root=cifar_root)
    idx = torch.arange(8)
    plain, _ = ds.train.batch(idx, augment=False)
    a, _ = ds.train.batch(idx, generator=torch.Generator().manual_seed(3))
    b, _ = ds.train.batch(idx, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, plain)
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4))
    for i in range(8):  # each output is one of the 81 crops x 2 flips of its padded input
        crops = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # (C, 9, 9, 32, 32)
        crops = crops.permute(1, 2, 0, 3, 4).reshape(81, 3, 32, 32)
        candidates = torch.cat([crops, crops.flip(-1)])
        assert (candidates == a[i]).flatten(1).all(1).any()


def test_random_crop_flip_keeps_shape_and_can_be_identity():
    x = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    flipped = (out != x).flatten(1).any(1)
    assert out.shape == x.shape
    assert torch.equal(out[flipped], x[flipped].flip(-1))
    assert 10 < int(flipped.sum()) < 54  # about half the images are flipped


def test_cifar10_missing_or_malformed_is_a_data_error(tmp_path: Path, cifar_root: Path):
    with pytest.raises(DataError, match=f"{tmp_path}.*data_batch_1"):
        load_dataset("cifar10", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="root="):
        load_dataset("cifar10")
    bad = cifar_root / "cifar-10-batches-py" / "data_batch_2"
    _write_batch(bad, np.zeros((10, 100), dtype=np.uint8), list(range(10)))
    with pytest.raises(DataError, match="data_batch_2.*3072"):
        load_dataset("cifar10", root=cifar_root)
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", root=cifar_root)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar10_refuses_pickles_that_call_code(cifar_root: Path):
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="test_batch.*not allowed"):
        load_dataset("cifar10", root=cifar_root)


# ---------------------------------------------------------------------------------------------
# ImageFolder


@pytest.fixture()
def folder_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
    return tmp_path


def test_imagefolder_tree(folder_root: Path):
    ds = load_dataset("imagefolder", root=folder_root, image_size=16)
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (2, 3, 16)
    assert (len(ds.train), len(ds.test)) == (6, 4)
    x, y = ds.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    X, Y = ds.eval_tensors()
    assert X.shape == (4, 3, 16, 16) and Y.tolist() == [0, 0, 1, 1]
    assert ds.mean == IMAGENET_MEAN
    again = load_dataset("imagefolder", root=folder_root, image_size=16)
    assert again.eval_hash == ds.eval_hash  # eval transform is deterministic


def test_imagefolder_needs_train_and_val(tmp_path: Path, folder_root: Path):
    with pytest.raises(DataError, match="val.*ImageFolder"):
        load_dataset("imagefolder", root=folder_root / "train")
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("digits", image_size=32)
