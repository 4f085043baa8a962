"""Datasets: digits (embedded), shapes (generated), CIFAR-10 (local dir), ImageFolder (ImageNet).

Every dataset yields float32 CHW images in [0, 1] and int labels; normalisation happens inside
the model. In-memory datasets (`digits`, `shapes`, `cifar10`) are `TensorImageDataset`s: the
training loop slices whole batches with `batch(idx, generator=...)` (vectorised, seeded
augmentation) instead of going through a DataLoader, whose per-sample overhead dominates on tiny
images. `shapes` is generated from fixed seeds (`trainables.shapes`); `n_train`/`n_test` set its
sizes.

The evaluation subset (`eval_indices`) is drawn from the test split with its own seed, so
every model of a sweep is evaluated and compared on the same inputs whatever its training seed;
`eval_hash` fingerprints exactly those inputs (and, for a generated dataset, the generator
version, the set sizes and seeds: models trained on other generated sets are not comparable).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables import shapes
from trainables.config import DATASETS, GENERATED_DATASETS, SETTINGS, check_set_sizes
from trainables.errors import ConfigError, DataError
from trainables.settings import check

__all__ = ["DatasetBundle", "TensorImageDataset", "load_dataset", "random_crop_flip"]

DIGITS_SPLIT_SEED = 20240611  # fixed: the train/test split never depends on any run's seed
DIGITS_TEST_FRACTION = 0.25
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # SPEC §2.4
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CIFAR_LAYOUT = ("cifar-10-batches-py/ with data_batch_1..data_batch_5 and test_batch "
                 "(python pickles of {'data': uint8 (N, 3072), 'labels': [int]})")

Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, *,
                     pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip, for a whole batch at once.

    Args:
        x: float (B, C, H, W).
        generator: CPU torch.Generator for the offsets and flips.
        pad: padding in pixels on each side (crop offsets in [0, 2*pad]).

    Returns:
        float (B, C, H, W).
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
    cols = ox[:, None] + torch.arange(w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor (uint8 or float) + int64 labels.

    Args:
        x: (N, C, H, W) uint8 or float tensor; divided by `scale` to land in [0, 1].
        y: int64 (N,).
        scale: 255 for uint8 pixels, 1 for float pixels already in [0, 1].
        augment: optional batch augmentation `augment(x, generator) -> x` (training only).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, scale: float = 1.0,
                 augment: Augment | None = None) -> None:
        self.x, self.y, self.scale, self.augment = x, y.long(), float(scale), augment

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor, *, generator: torch.Generator | None = None,
              augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (b, C, H, W) float32 in [0, 1] and labels (b,) for int64 indices `idx`."""
        xb = self.x[idx].float() / self.scale
        if augment and self.augment is not None:
            xb = self.augment(xb, generator)
        return xb, self.y[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        xb, yb = self.batch(torch.tensor([i]))
        return xb[0], int(yb[0])


@dataclass(frozen=True, eq=False)
class DatasetBundle:
    """A dataset with its fixed evaluation subset; see module docstring.

    Attributes:
        name: dataset name.
        num_classes, in_channels, image_size: shapes (images are square).
        train: Dataset of (float32 CHW in [0, 1], int label), with training augmentation.
        test: same, without augmentation.
        eval_indices: int64 (M,) sorted indices into `test`.
        mean, std: per-channel constants for the model's Normalize.
        provenance: what a generated dataset's images depend on (generator version, sizes,
            seeds), hashed into `eval_hash`; empty for stored datasets.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train: Dataset
    test: Dataset
    eval_indices: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def eval_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation subset: X float32 (M, C, H, W) in [0, 1], y int64 (M,). Cached."""
        if "eval" not in self._cache:
            idx = torch.from_numpy(self.eval_indices)
            if isinstance(self.test, TensorImageDataset):
                X, y = self.test.batch(idx, augment=False)
            else:
                pairs = [self.test[int(i)] for i in self.eval_indices]  # decoding files: I/O bound
                X = torch.stack([p[0] for p in pairs]).float()
                y = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
            self._cache["eval"] = (X.contiguous(), y.contiguous())
        return self._cache["eval"]

    @property
    def eval_hash(self) -> str:
        """sha256 hex of eval indices (int64 LE) + inputs (float32) + labels (int64), after the
        provenance (UTF-8) where there is one."""
        if "hash" not in self._cache:
            X, y = self.eval_tensors()
            h = hashlib.sha256(self.provenance.encode())
            h.update(self.eval_indices.astype("<i8").tobytes())
            h.update(X.numpy().astype("<f4").tobytes())
            h.update(y.numpy().astype("<i8").tobytes())
            self._cache["hash"] = h.hexdigest()
        return self._cache["hash"]


def _eval_indices(n_test: int, eval_size: int | None, seed: int) -> np.ndarray:
    if eval_size is None:
        return np.arange(n_test, dtype=np.int64)
    is_int = isinstance(eval_size, int) and not isinstance(eval_size, bool)
    if not is_int or not 1 <= eval_size <= n_test:
        raise ConfigError(f"eval_size must be an integer in [1, {n_test}] (test set size) or "
                          f"None, got eval_size={eval_size!r}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_test, size=eval_size, replace=False)).astype(np.int64)


def _load_shapes(n_train: int, n_test: int) -> tuple[TensorImageDataset, TensorImageDataset]:
    # No augmentation. Positions are already random, so crops add nothing but zero-padded black
    # borders the data never has; a flip keeps every class (a mirrored L is still no other
    # shape) but shows L's that never occur. Measured (docs/shapes_study/README.md): crop+flip
    # slowed robust training, 0.75 vs 0.98 clean after 5 epochs, and cost standard training 0.007.
    xtr, ytr = shapes.generate_shapes(n_train, shapes.TRAIN_SEED)
    xte, yte = shapes.generate_shapes(n_test, shapes.TEST_SEED)
    return TensorImageDataset(xtr, ytr), TensorImageDataset(xte, yte)


def _set_sizes(name: str, n_train: int | None, n_test: int | None) -> tuple[int, int]:
    """The checked (n_train, n_test) of a generated dataset (null: its default sizes)."""
    check_set_sizes(name, n_train=n_train, n_test=n_test)
    defaults = GENERATED_DATASETS.get(name, (None, None))
    return tuple(defaults[i] if v is None else check(k, v, SETTINGS[k].rule)
                 for i, (k, v) in enumerate((("n_train", n_train), ("n_test", n_test))))


def _load_digits() -> tuple[TensorImageDataset, TensorImageDataset, tuple, tuple]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, stratify=d.target,
                              random_state=DIGITS_SPLIT_SEED)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    xtr = X[tr]
    mean, std = (float(xtr.mean()),), (float(xtr.std()),)
    # No augmentation: flips and shifts change a digit's meaning on an 8x8 grid.
    return TensorImageDataset(xtr, y[tr]), TensorImageDataset(X[te], y[te]), mean, std


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only the globals needed to rebuild numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            raw = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a malformed file
        raise DataError(f"{path}: cannot read CIFAR-10 batch ({e}); "
                        f"expected {_CIFAR_LAYOUT}") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict, got {type(raw).__name__}; "
                        f"expected {_CIFAR_LAYOUT}")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: keys {sorted(d)} lack 'data'/'labels'; expected {_CIFAR_LAYOUT}")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"], dtype=np.int64)
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
            or len(labels) != len(data)):
        raise DataError(f"{path}: data {data.dtype} {data.shape} with {len(labels)} labels; "
                        f"expected uint8 (N, 3072) and N labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(root: str | Path | None) -> tuple[TensorImageDataset, TensorImageDataset]:
    if root is None:
        raise DataError(f"cifar10 needs root= a directory containing {_CIFAR_LAYOUT}; nothing is "
                        "downloaded (get cifar-10-python.tar.gz from the CIFAR page and unpack it)")
    base = Path(root).expanduser()
    d = base / "cifar-10-batches-py" if (base / "cifar-10-batches-py").is_dir() else base
    train_files = sorted(d.glob("data_batch_*"), key=lambda p: p.name)
    if not d.is_dir() or not train_files or not (d / "test_batch").is_file():
        raise DataError(f"{d}: no CIFAR-10 data found; expected {_CIFAR_LAYOUT}")
    parts = [_read_cifar_batch(p) for p in train_files]
    xtr = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    ytr = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    xte, yte = (torch.from_numpy(a) for a in _read_cifar_batch(d / "test_batch"))
    return (TensorImageDataset(xtr, ytr, scale=255.0, augment=random_crop_flip),
            TensorImageDataset(xte, yte, scale=255.0))


def _load_imagefolder(root: str | Path | None, image_size: int):
    from torchvision import datasets
    from torchvision.transforms import v2

    layout = "root/train/<class>/<image> and root/val/<class>/<image> (torchvision ImageFolder)"
    if root is None:
        raise DataError(f"imagefolder needs root= a directory laid out as {layout}")
    base = Path(root).expanduser()
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DataError(f"{base / split}: directory missing; expected {layout}")
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    train_tf = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True),
                           v2.RandomHorizontalFlip(), *to_tensor])
    eval_tf = v2.Compose([v2.Resize(int(image_size * 256 / 224), antialias=True),
                          v2.CenterCrop(image_size), *to_tensor])
    try:
        train = datasets.ImageFolder(str(base / "train"), transform=train_tf)
        test = datasets.ImageFolder(str(base / "val"), transform=eval_tf)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{base}: {e}; expected {layout}") from e
    if train.classes != test.classes:
        raise DataError(f"{base}: train classes {train.classes[:5]}... differ from val classes "
                        f"{test.classes[:5]}...; both splits need the same class folders")
    return train, test


def load_dataset(name: str, *, root: str | Path | None = None, seed: int = 0,
                 eval_size: int | None = None, image_size: int | None = None,
                 n_train: int | None = None, n_test: int | None = None) -> DatasetBundle:
    """Load a dataset and fix its evaluation subset.

    Args:
        name: "digits", "shapes", "cifar10" or "imagefolder".
        root: data directory (cifar10: the `cifar-10-batches-py` dir or its parent; imagefolder:
            the dir holding `train/` and `val/`); unused for digits and shapes.
        seed: seed of the evaluation subset draw (not the training seed).
        eval_size: number of test images in the subset; None = the whole test split.
        image_size: imagefolder only (default 224); must be None or native for the others.
        n_train, n_test: set sizes of a generated dataset (shapes: default 8000 and 1000);
            must be None for the others.

    Returns:
        A `DatasetBundle`.

    Raises:
        ConfigError: unknown name, bad eval_size, image_size, n_train or n_test.
        DataError: missing or malformed data directory.
    """
    if name == "digits":
        native = 8
    elif name in ("shapes", "cifar10"):
        native = 32
    elif name == "imagefolder":
        native = 224 if image_size is None else image_size
    else:
        raise ConfigError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    if isinstance(native, bool) or not isinstance(native, int) or native < 8:
        raise ConfigError(f"image_size must be an integer >= 8, got image_size={image_size!r}")
    if image_size is not None and image_size != native:
        raise ConfigError(f"image_size={image_size!r} is fixed for {name!r}; allowed: {native}")
    sizes = _set_sizes(name, n_train, n_test)
    provenance = ""
    if name == "digits":
        train, test, mean, std = _load_digits()
        num_classes, channels = 10, 1
    elif name == "shapes":
        train, test = _load_shapes(*sizes)
        num_classes, channels, mean, std = len(shapes.SHAPE_NAMES), 3, shapes.MEAN, shapes.STD
        provenance = shapes.provenance(*sizes)
    elif name == "cifar10":
        train, test = _load_cifar10(root)
        num_classes, channels, mean, std = 10, 3, CIFAR_MEAN, CIFAR_STD
    else:
        train, test = _load_imagefolder(root, native)
        num_classes, channels, mean, std = len(train.classes), 3, IMAGENET_MEAN, IMAGENET_STD
    return DatasetBundle(name=name, num_classes=num_classes, in_channels=channels,
                         image_size=native, train=train, test=test,
                         eval_indices=_eval_indices(len(test), eval_size, seed),
                         mean=tuple(mean), std=tuple(std), provenance=provenance)
