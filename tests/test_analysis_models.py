"""analysis.inputs.discovery: discovery of a sweep's models in a real sqlite MLflow store.

`build_sweep` (also used by test_extract.py and test_report.py) trains tiny real models with
`trainables.train.train_model` (1 epoch on digits, ~1 s each) and logs them exactly as a trial
does: tags, params, final metrics, and `checkpoint/` (model.safetensors + meta.json).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from analysis.inputs import discover_models, load_model, models_frame
from trainables import tracking as tr
from trainables.errors import CheckpointError, UserError

EVAL_SIZE = 120


def train_tiny(arch: str, eps: float, seed: int, *, eval_size: int | None = EVAL_SIZE,
               eval_seed: int = 0, width: float = 1.0):
    """(TrainResult, checkpoint dir) of a 1-epoch digits model; the dir is the caller's to delete."""
    import torch

    from trainables.config import TrainConfig
    from trainables.train import train_model

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(dict(
        dataset="digits", arch=arch, width=width, eps=eps, seed=seed, epochs=1,
        eval_size=eval_size,
        eval_seed=eval_seed, attack_steps=2, eval_attack_steps=2, final_eval_steps=2,
        final_eval_restarts=1, num_threads=1, threat_model="linf"))
    out = Path(tempfile.mkdtemp(prefix="tiny-ckpt-"))

    def report(metrics, ckpt_dir):
        for name in ("model.safetensors", "meta.json"):
            shutil.copy(Path(ckpt_dir) / name, out / name)

    return train_model(cfg, report=report), out, cfg


def build_sweep(store: dict[str, str], sweep: str, cells: list[tuple[str, float, int]], *,
                extra: list[dict] | None = None, eval_seed: int = 0,
                eval_size: int | None = EVAL_SIZE, width: float = 1.0) -> dict[str, str]:
    """Log one trained model per (arch, eps, seed) cell as a FINISHED trial of `sweep`.

    `extra` entries add special runs: {"status": "FAILED"|"RUNNING"} (no checkpoint),
    {"no_checkpoint": True} (FINISHED, nothing logged), {"corrupt": True} (FINISHED, truncated
    weights), {"eval_seed": 7} (a model evaluated on other inputs). Returns label -> run id.
    """
    from mlflow.entities import Metric, Param

    client = tr.make_client(store["tracking_uri"])
    exp = tr.ensure_experiment(client, sweep, artifact_location=store["artifact_root"])
    parent = client.create_run(exp, tags={tr.TAG_SWEEP: sweep, tr.TAG_ROLE: "sweep"})
    client.set_terminated(parent.info.run_id, "FINISHED")
    ids = {}
    specs = [dict(arch=a, eps=e, seed=s, **({"width": 0.125} if a == "resnet18" else {}))
             for a, e, s in cells] + list(extra or [])
    for k, spec in enumerate(specs):
        arch, eps, seed = spec.get("arch", "mlp"), spec.get("eps", 0.0), spec.get("seed", 90 + k)
        tags = {tr.TAG_SWEEP: sweep, tr.TAG_ROLE: "trial", tr.TAG_TRIAL_ID: f"t{k:03d}",
                tr.TAG_ARCH: arch, tr.TAG_WIDTH: repr(float(spec.get("width", width))),
                tr.TAG_EPS: tr.format_eps(eps),
                tr.TAG_SEED: str(seed), tr.TAG_THREAT_MODEL: "linf", tr.TAG_DATASET: "digits",
                tr.TAG_PARENT: parent.info.run_id}
        run = client.create_run(exp, tags=tags)
        rid = run.info.run_id
        label = f"{arch}-e{eps:g}-s{seed}"
        ids[label] = rid
        if spec.get("status") in ("FAILED", "RUNNING"):
            if spec["status"] == "FAILED":
                client.set_terminated(rid, "FAILED")
            continue
        if spec.get("no_checkpoint"):
            client.set_terminated(rid, "FINISHED")
            continue
        res, ckpt, cfg = train_tiny(arch, eps, seed, eval_seed=spec.get("eval_seed", eval_seed),
                                    eval_size=eval_size, width=spec.get("width", width))
        params = tr.flatten_params(cfg.to_dict())
        client.log_batch(rid, params=[Param(k2, v) for k2, v in params.items()],
                         metrics=[Metric(m, float(v), int(time.time() * 1000), 1)
                                  for m, v in res.metrics.items()])
        if spec.get("corrupt"):
            weights = ckpt / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
        for name in ("model.safetensors", "meta.json"):
            client.log_artifact(rid, str(ckpt / name), tr.ARTIFACT_CHECKPOINT)
        shutil.rmtree(ckpt)
        client.set_terminated(rid, "FINISHED")
    return ids


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One store for this module: two good models, a failed, a running, one without and one
    with a corrupt checkpoint (the sqlite schema setup costs ~5 s per store)."""
    root = tmp_path_factory.mktemp("models")
    (root / "art").mkdir()
    store = {"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "art")}
    ids = build_sweep(store, "disc", [("mlp", 0.0, 0), ("mlp", 0.1, 0)], extra=[
        {"status": "FAILED", "seed": 5}, {"status": "RUNNING", "seed": 6},
        {"no_checkpoint": True, "seed": 7}, {"corrupt": True, "seed": 3}])
    return store, ids, discover_models("disc", tracking_uri=store["tracking_uri"])


def test_discovery_lists_finished_models_and_says_why_others_are_skipped(sweep):
    _, ids, disc = sweep
    assert [m.label for m in disc.models] == ["mlp-e0-s0", "mlp-e0-s3", "mlp-e0.1-s0"]
    m = disc.models[2]
    assert (m.arch, m.eps, m.seed, m.dataset, m.threat_model) == ("mlp", 0.1, 0, "digits", "linf")
    assert 0.0 <= m.clean_acc <= 1.0 and 0.0 <= m.robust_acc <= 1.0
    assert m.data_hash and m.num_classes == 10 and m.run_id == ids["mlp-e0.1-s0"]
    # the options the trial drew its eval set with, read from its run params
    assert m.data == {"root": None, "eval_size": EVAL_SIZE, "eval_seed": 0, "image_size": None}
    reasons = {s.run_id: (s.status, s.reason) for s in disc.skipped}
    assert reasons[ids["mlp-e0-s5"]] == ("FAILED", "trial failed")
    assert reasons[ids["mlp-e0-s6"]] == ("RUNNING", "trial still running")
    assert "missing checkpoint" in reasons[ids["mlp-e0-s7"]][1]
    assert len(reasons) == 3
    text = disc.describe()
    assert "3 finished model(s)" in text and "trial failed" in text
    frame = models_frame(disc.models)
    assert list(frame["label"]) == ["mlp-e0-s0", "mlp-e0-s3", "mlp-e0.1-s0"]
    assert "params" not in frame


def test_load_model_roundtrip_and_corrupt_checkpoint_names_the_model(sweep):
    import torch

    store, _, disc = sweep
    good, bad = (next(m for m in disc.models if m.seed == s and m.eps == 0) for s in (0, 3))
    model, meta = load_model(good, tracking_uri=store["tracking_uri"])
    x = torch.rand(4, 1, 8, 8)
    assert model(x).shape == (4, 10) and meta["data_hash"] == good.data_hash
    with pytest.raises(CheckpointError, match=r"model mlp-e0-s3 \(run "):
        load_model(bad, tracking_uri=store["tracking_uri"])


def test_unknown_sweep_lists_known_sweeps(sweep):
    store, *_ = sweep
    with pytest.raises(UserError, match=r"unknown sweep 'nope'.*known sweeps: \['disc'\]"):
        discover_models("nope", tracking_uri=store["tracking_uri"])
