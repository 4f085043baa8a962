"""Checkpoints: exact round trip of weights, meta and train state; every corruption is named."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainables.checkpoints import META_KEYS, load_checkpoint, load_train_state, save_checkpoint
from trainables.errors import CheckpointError
from trainables.models import build_model

META = dict(dataset="digits", threat_model="linf", eps=0.1, seed=3, epoch=2, epochs=5,
            metrics={"eval/clean_acc": 0.9}, data_hash="ab" * 32)


@pytest.fixture()
def saved(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=1, image_size=8, width=0.125,
                        mean=[0.3], std=[0.25])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.arange(4))
    loss.backward()
    opt.step()
    state = {"epoch": 2, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
             "blob": b"\x00\xffraw", "nested": {"ints": (1, 2), 7: "int key", "x": None}}
    d = save_checkpoint(tmp_path / "ckpt", model, META, state)
    return d, model, opt, state


def test_round_trip_is_exact(saved):
    d, model, opt, state = saved
    assert sorted(p.name for p in d.iterdir()) == [
        "meta.json", "model.safetensors", "train_state.json", "train_state.safetensors"]
    loaded, meta = load_checkpoint(d)
    assert not loaded.training
    assert set(META_KEYS) <= set(meta)
    assert {k: meta[k] for k in META} == META
    assert (meta["arch"], meta["width"], meta["mean"], meta["std"]) == ("resnet18", 0.125,
                                                                        [0.3], [0.25])
    assert {"torch", "unisweep"} <= set(meta["versions"])
    ref = model.state_dict()
    assert ref.keys() == loaded.state_dict().keys()
    assert all(torch.equal(ref[k], v) for k, v in loaded.state_dict().items())

    back = load_train_state(d)
    assert back["epoch"] == 2 and back["blob"] == b"\x00\xffraw"
    assert back["nested"] == {"ints": [1, 2], 7: "int key", "x": None}
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"] == 1e-3
    assert s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        assert all(torch.equal(s1["state"][k][n], s2["state"][k][n]) for n in s1["state"][k])


def test_missing_directory_and_files_are_named(tmp_path: Path, saved):
    d = saved[0]
    with pytest.raises(CheckpointError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    (d / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json: file is missing"):
        load_checkpoint(d)
    (d / "train_state.json").unlink()
    with pytest.raises(CheckpointError, match="train_state.json"):
        load_train_state(d)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[: len(b) // 2], "model.safetensors: not a valid safetensors"),
    (lambda b: b[:5], "model.safetensors: not a valid safetensors"),
    (lambda b: b"\x00" * 8 + b[8:], "model.safetensors: not a valid safetensors"),
    (lambda b: b"", "model.safetensors: not a valid safetensors"),
])
def test_truncated_or_corrupt_weights(saved, damage, match):
    path = saved[0] / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(saved[0])


def test_pickles_are_refused_not_loaded(saved):
    d, model = saved[0], saved[1]
    path = d / "model.safetensors"
    torch.save(model.state_dict(), path)  # a zip-wrapped pickle, as torch.save writes
    with pytest.raises(CheckpointError, match="model.safetensors: looks like a pickle"):
        load_checkpoint(d)
    path.write_bytes(pickle.dumps(model.state_dict(), protocol=4))
    with pytest.raises(CheckpointError, match="model.safetensors: looks like a pickle"):
        load_checkpoint(d)
    state = d / "train_state.safetensors"
    state.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="train_state.safetensors: looks like a pickle"):
        load_train_state(d)


def test_bad_meta_is_named(saved):
    d = saved[0]
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json: not valid JSON"):
        load_checkpoint(d)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "arch"}))
    with pytest.raises(CheckpointError, match=r"meta.json: missing keys \['arch'\]"):
        load_checkpoint(d)
    meta_path.write_text(json.dumps(meta | {"arch": "no_such_net"}))
    with pytest.raises(CheckpointError, match="meta.json: cannot rebuild"):
        load_checkpoint(d)


def test_weights_that_do_not_fit_the_arch(saved):
    d = saved[0]
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"width": 0.25}))  # wider net, same weights
    with pytest.raises(CheckpointError, match="model.safetensors: weights do not match.*wrong shape"):
        load_checkpoint(d)
    meta_path.write_text(json.dumps(meta | {"arch": "cnn"}))
    with pytest.raises(CheckpointError, match="model.safetensors: weights do not match.*missing"):
        load_checkpoint(d)


def test_truncated_train_state(saved):
    path = saved[0] / "train_state.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="train_state.safetensors: not a valid safetensors"):
        load_train_state(saved[0])


def _flip_tensor_byte(path: Path, offset: int = 17) -> None:
    """Flip one bit of a byte inside the tensor data (past the 8-byte length + JSON header)."""
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    pos = 8 + header + offset
    assert pos < len(raw), "file too small to hold tensor data"
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))


def test_meta_records_the_sha256_of_every_tensor_file(saved):
    from trainables.checkpoints import file_sha256

    d = saved[0]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["sha256"] == {"model.safetensors": file_sha256(d / "model.safetensors"),
                              "train_state.safetensors": file_sha256(d / "train_state.safetensors")}


@pytest.mark.parametrize("target", ["model.safetensors", "train_state.safetensors"])
def test_one_flipped_byte_in_the_tensor_data_is_caught_by_the_checksum(saved, target):
    from safetensors.torch import load as parse

    d = saved[0]
    _flip_tensor_byte(d / target)
    parse((d / target).read_bytes())  # still a well-formed file: only the checksum can tell
    with pytest.raises(CheckpointError) as err:
        load_train_state(d) if target.startswith("train_state") else load_checkpoint(d)
    message = str(err.value)
    assert target in message and "sha256" in message and "meta.json" in message, message


def test_a_checkpoint_without_checksums_is_refused(saved):
    d = saved[0]
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"sha256": {}}))
    with pytest.raises(CheckpointError, match="model.safetensors: meta.json records no sha256"):
        load_checkpoint(d)
    meta_path.write_text(json.dumps(meta | {"format_version": 1}))
    with pytest.raises(CheckpointError, match="format_version 1 is not supported; allowed: 2"):
        load_checkpoint(d)
