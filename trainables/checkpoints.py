"""Checkpoints as safetensors + JSON only: nothing is ever unpickled.

A checkpoint directory holds

- `model.safetensors`: the `UniModel` state dict (Normalize buffers included);
- `meta.json`: everything needed to rebuild the model with `build_model` plus provenance
  (the keys of `META_KEYS`, see docs/architecture.md), and ``sha256``: the SHA-256 of each
  tensor file of the directory, verified on every load;
- optionally `train_state.safetensors` + `train_state.json`: the resumable training state.
  Any nested structure of dicts/lists/scalars/tensors/bytes is stored: tensors go to the
  safetensors file under generated keys, everything else to JSON. Dicts with non-string keys
  (optimizer state is keyed by parameter index) and bytes are tagged so they round-trip
  exactly; tuples come back as lists.

Every problem on load raises `CheckpointError` naming the file: a missing, truncated, pickled
or unparsable file, and a tensor file whose bytes no longer match the SHA-256 recorded in
`meta.json` (a flipped bit inside the tensor data parses fine; only the checksum sees it).
`meta.json` is written last, so it only ever describes tensor files that are complete.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from trainables.errors import CheckpointError, ConfigError
from trainables.models import UniModel, build_model

__all__ = ["FORMAT_VERSION", "META_KEYS", "file_sha256", "load_checkpoint", "load_train_state",
           "save_checkpoint", "versions"]

FORMAT_VERSION = 2  # 2: meta.json carries the sha256 of each tensor file
MODEL_FILE, META_FILE = "model.safetensors", "meta.json"
STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
META_KEYS = ("arch", "width", "num_classes", "in_channels", "image_size", "mean", "std",
             "dataset", "threat_model", "eps", "seed", "epoch", "epochs", "metrics", "data_hash",
             "versions", "format_version", "sha256")
_MODEL_KEYS = META_KEYS[:7]
# First bytes of formats we refuse: pickle protocol >= 2, and torch.save's zip container.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
    try:
        own = importlib.metadata.version("unisweep")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "unisweep": own}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=True))
    os.replace(tmp, path)  # a crash never leaves a half-written meta.json behind


def save_checkpoint(directory: str | os.PathLike[str], model: UniModel, meta: dict,
                    train_state: dict | None = None) -> Path:
    """Write a checkpoint directory (created if needed; existing files are replaced).

    Args:
        directory: target folder.
        model: the `UniModel`; its build arguments fill the model keys of `meta.json`.
        meta: provenance (dataset, threat_model, eps, seed, epoch, epochs, metrics, data_hash,
            ...); JSON-serialisable. Missing contract keys are stored as null.
        train_state: optional resumable state (optimizer/scheduler state dicts, RNG states,
            epoch, history, ...).

    Returns:
        The directory as a `Path`.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(d / MODEL_FILE), metadata={"format": "pt"})
    hashes = {MODEL_FILE: file_sha256(d / MODEL_FILE)}
    if train_state is not None:
        store: dict[str, torch.Tensor] = {}
        tree = _encode(train_state, store)
        save_file(store, str(d / STATE_TENSORS), metadata={"format": "pt"})
        _write_json(d / STATE_JSON, tree)
        hashes[STATE_TENSORS] = file_sha256(d / STATE_TENSORS)
    full = {k: None for k in META_KEYS}
    full.update(meta)
    full.update(arch=model.arch, width=model.width, num_classes=model.num_classes,
                in_channels=model.in_channels, image_size=model.image_size,
                mean=list(model.norm_mean), std=list(model.norm_std),
                versions=versions(), format_version=FORMAT_VERSION, sha256=hashes)
    try:  # last: meta.json only ever names tensor files that are complete
        _write_json(d / META_FILE, full)
    except TypeError as e:
        raise ConfigError(f"checkpoint meta must be JSON-serialisable: {e}") from e
    return d


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _encode(obj: Any, store: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(store)}"
        store[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, store) for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, store)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, store) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ConfigError(f"train_state holds an unsupported value of type {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise CheckpointError(f"{path}: tensor {obj['__tensor__']!r} is missing")
        return tensors[obj["__tensor__"]]
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors, path) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors, path) for k, v in obj.items()}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def _read_tensors(path: Path, expected_sha256: object) -> dict[str, torch.Tensor]:
    """Parse a safetensors file (refusing pickles) and verify its bytes against the SHA-256
    recorded in meta.json."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    data = path.read_bytes()
    if data.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{path}: looks like a pickle / torch.save file; only safetensors "
                              "is accepted (pickles can run code and are never loaded)")
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for every malformation
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e
    if not isinstance(expected_sha256, str):
        raise CheckpointError(f"{path}: meta.json records no sha256 for {path.name}; allowed: "
                              f"a checkpoint written by save_checkpoint (format {FORMAT_VERSION})")
    got = hashlib.sha256(data).hexdigest()
    if got != expected_sha256:
        raise CheckpointError(f"{path}: sha256 {got[:16]}... does not match {expected_sha256[:16]}"
                              f"... recorded in meta.json: the file is corrupt or was changed "
                              f"after it was written")
    return tensors


def _recorded_hashes(meta: dict, meta_path: Path) -> dict:
    hashes = meta.get("sha256")
    if not isinstance(hashes, dict):
        raise CheckpointError(f"{meta_path}: sha256 must be a mapping file name -> hex digest, "
                              f"got {hashes!r}")
    return hashes


def load_checkpoint(directory: str | os.PathLike[str]) -> tuple[UniModel, dict]:
    """Rebuild the model of a checkpoint directory and load its weights (on the CPU).

    Args:
        directory: a folder written by `save_checkpoint`.

    Returns:
        (model in eval mode, meta dict).

    Raises:
        CheckpointError: missing/corrupt/truncated/pickled files, missing meta keys, or weights
            that do not match the architecture (names the file and the offending keys).
    """
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    meta_path, model_path = d / META_FILE, d / MODEL_FILE
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: missing keys {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {meta['format_version']!r} is not "
                              f"supported; allowed: {FORMAT_VERSION}")
    try:
        model = build_model(meta["arch"], num_classes=meta["num_classes"],
                            in_channels=meta["in_channels"], image_size=meta["image_size"],
                            width=meta["width"], mean=meta["mean"], std=meta["std"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: cannot rebuild the model ({e})") from e
    tensors = _read_tensors(model_path, _recorded_hashes(meta, meta_path).get(MODEL_FILE))
    expected = model.state_dict()
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    lost, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if lost or extra or wrong:
        raise CheckpointError(f"{model_path}: weights do not match arch {meta['arch']!r}: "
                              f"missing {lost[:5]}, unexpected {extra[:5]}, "
                              f"wrong shape {wrong[:5]}")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, meta


def load_train_state(directory: str | os.PathLike[str]) -> dict:
    """Read the resumable training state written with `save_checkpoint(..., train_state=...)`.

    Returns:
        The nested dict as saved (tensors on the CPU, tuples as lists).

    Raises:
        CheckpointError: a missing or malformed train-state file (or meta.json, which holds
            its checksum), named.
    """
    d = Path(directory)
    tree = _read_json(d / STATE_JSON)
    meta = _read_json(d / META_FILE)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{d / META_FILE}: expected a JSON object")
    tensors = _read_tensors(d / STATE_TENSORS,
                            _recorded_hashes(meta, d / META_FILE).get(STATE_TENSORS))
    state = _decode(tree, tensors, d / STATE_JSON)
    if not isinstance(state, dict):
        raise CheckpointError(f"{d / STATE_JSON}: expected a JSON object")
    return state
