"""Under-trained trials (``eval.min_clean_acc``): tagged in MLflow, left out of the analysis with
the reason, never compared silently. Real sqlite MLflow, real tiny models (test_analysis_models)."""

from __future__ import annotations

import json

import pytest

from analysis.inputs import discover_models
from analysis.pipeline import run_analysis
from sweeps.spec import parse_spec
from test_analysis_models import build_sweep
from trainables import tracking as tr
from trainables.config import TrainConfig
from trainables.errors import ConfigError
from trainables.trial import undertrained_tags


def test_tags_say_whether_the_final_clean_accuracy_reaches_the_threshold():
    assert undertrained_tags(0.62, None) == {}  # the check is off by default
    low = undertrained_tags(0.62, 0.85)
    assert low == {tr.TAG_UNDERTRAINED: "true",
                   tr.TAG_UNDERTRAINED_WHY: "final clean accuracy 0.6200 < eval.min_clean_acc 0.85"}
    ok = undertrained_tags(0.85, 0.85)
    assert ok[tr.TAG_UNDERTRAINED] == "false" and ">= eval.min_clean_acc 0.85" in ok[
        tr.TAG_UNDERTRAINED_WHY]
    assert undertrained_tags(None, 0.5)[tr.TAG_UNDERTRAINED] == "true"


def test_the_threshold_is_a_declared_eval_setting():
    spec = parse_spec({"name": "t", "dataset": {"name": "digits"}, "archs": ["mlp"],
                       "threat_model": "linf", "epsilons": [0], "eval": {"min_clean_acc": 0.85}})
    assert spec.eval.min_clean_acc == 0.85
    assert TrainConfig().min_clean_acc is None
    with pytest.raises(ConfigError, match=r"eval.min_clean_acc=1.5 is not allowed; allowed: a "
                                          r"number in \[0, 1\]"):
        parse_spec({"name": "t", "dataset": {"name": "digits"}, "archs": ["mlp"],
                    "threat_model": "linf", "epsilons": [0], "eval": {"min_clean_acc": 1.5}})


def test_an_undertrained_trial_is_skipped_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    (tmp_path / "art").mkdir()
    store = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
             "artifact_root": str(tmp_path / "art")}
    ids = build_sweep(store, "weak", [("mlp", 0.0, 0), ("mlp", 0.0, 1), ("mlp", 0.1, 0)])
    client = tr.make_client(store["tracking_uri"])
    weak = ids["mlp-e0.1-s0"]
    clean = client.get_run(weak).data.metrics[tr.METRIC_FINAL_CLEAN_ACC]
    # What run_trial sets before the run is FINISHED (a threshold above what 1 epoch reaches).
    for name, value in undertrained_tags(clean, min(1.0, clean + 0.01)).items():
        client.set_tag(weak, name, value)
    for name, value in undertrained_tags(0.99, 0.5).items():  # checked, and passed
        client.set_tag(ids["mlp-e0-s0"], name, value)

    disc = discover_models("weak", tracking_uri=store["tracking_uri"])
    assert sorted(m.label for m in disc.models) == ["mlp-e0-s0", "mlp-e0-s1"]
    (skip,) = disc.skipped
    assert skip.run_id == weak and skip.status == "FINISHED"
    assert skip.reason == (f"under-trained: final clean accuracy {clean:.4f} < eval.min_clean_acc "
                           f"{min(1.0, clean + 0.01):g}; not compared")

    result = run_analysis("weak", tracking_uri=store["tracking_uri"], measures=["linear_cka"],
                          log_mlflow=False)
    skipped = json.loads((result.report_dir / "skipped.json").read_text())
    assert skipped == {weak: f"mlp-e0.1-s0: {skip.reason}"}
    assert {m.run_id for m in result.models} == {ids["mlp-e0-s0"], ids["mlp-e0-s1"]}
