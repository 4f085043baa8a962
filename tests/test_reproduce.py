"""End to end on a small real setup: trained digits models in MLflow -> reproduction report."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.engine import MeasureSpec, ResultStore, spec_key
from analysis.pipeline import run_analysis
from analysis.reproduction import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    PARTIAL,
    UNTESTABLE,
    ModelInfo,
    PairSet,
    ProbeConfig,
    ReproConfig,
    StudyData,
    evaluate_targets,
    run_reproduction,
)
from analysis.reproduction.targets_agreement import target5
from trainables import tracking as tr
from trainables.config import TrainConfig
from trainables.train import train_model

SWEEP = "repro-small"
EVAL_SIZE = 300
GRID = [(arch, eps, seed) for arch in ("mlp", "cnn") for eps in (0.0, 1.0) for seed in (0, 1)]
SMALL = ReproConfig(n_permutations=19, inversion_iterations=30,
                    inversion_targets=48, probes=ProbeConfig(batch_size=128, num_probes=2,
                                                             epochs=15),
                    attack_steps=10, k_values=(10, 100, 500))


def _log_trials(client, exp_id: str, root, sweep: str, grid, *, epochs: int = 4) -> None:
    """Train ``grid`` ((arch, eps, seed, threat model) cells) on digits and log each model like
    a real trial of ``sweep``."""
    for arch, eps, seed, threat in grid:
        cfg = TrainConfig.from_dict({
            "dataset": "digits", "arch": arch, "threat_model": threat, "eps": eps, "seed": seed,
            "epochs": epochs, "batch_size": 64, "optimizer": "adam", "lr": 3e-3,
            "attack_steps": 3, "eval_attack_steps": 3, "final_eval_steps": 5,
            "final_eval_restarts": 1, "num_threads": 1, "eval_size": EVAL_SIZE, "eval_seed": 3})
        res = train_model(cfg)
        tags = {tr.TAG_SWEEP: sweep, tr.TAG_ROLE: "trial", tr.TAG_ARCH: arch,
                tr.TAG_EPS: tr.format_eps(eps), tr.TAG_SEED: str(seed),
                tr.TAG_THREAT_MODEL: threat, tr.TAG_DATASET: "digits",
                tr.TAG_TRIAL_ID: f"{arch}-{eps}-{seed}-{threat}"}
        run = client.create_run(exp_id, tags=tags)
        for k, v in res.metrics.items():
            if isinstance(v, (int, float)):
                client.log_metric(run.info.run_id, k, float(v))
        ckpt = root / f"ckpt-{sweep}-{arch}-{eps}-{seed}-{threat}"
        res.save(ckpt)
        client.log_artifacts(run.info.run_id, str(ckpt), tr.ARTIFACT_CHECKPOINT)
        client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A sweep of 8 digits models (2 archs x eps {0, 1.0} L2 x 2 seeds) logged like real trials,
    evaluated on a 300-image subset drawn with eval_seed 3 (written to meta.json only: the
    reproduction must find these options itself)."""
    import mlflow

    root = tmp_path_factory.mktemp("repro")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = tr.make_client(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=str(root / "mlartifacts"))
    _log_trials(client, exp_id, root, SWEEP, [(*cell, "l2") for cell in GRID])
    analysis = client.create_run(exp_id, tags={tr.TAG_SWEEP: SWEEP, tr.TAG_ROLE: "analysis"})
    mlflow.set_tracking_uri(uri)
    return {"uri": uri, "root": root, "analysis_run": analysis.info.run_id, "client": client}


def test_report_states_all_eight_targets_with_numbers(sweep_store, ray_session):
    root, uri = sweep_store["root"], sweep_store["uri"]
    # The analysis first (serial, clean CKA): the reproduction reuses its features and values.
    run_analysis(SWEEP, tracking_uri=uri, home=root, actors=0, measures=["linear_cka"],
                 log_mlflow=False)
    table = ResultStore(root / "reports" / SWEEP / "pairs.parquet").load()
    # Inversion and the train split are built as Ray tasks (they must pickle).
    md_path = run_reproduction(SWEEP, tracking_uri=uri, reports_root=root / "reports",
                               config=SMALL, use_ray=True)
    md = md_path.read_text()
    data = json.loads(md_path.with_suffix(".json").read_text())
    (group,) = data["groups"]  # one (dataset, threat model) group
    assert (group["dataset"], group["threat_model"]) == ("digits", "l2")
    targets = group["targets"]
    assert [t["number"] for t in targets] == list(range(1, 9))
    # the verdict table comes first, before any figure
    assert md.index("## Verdicts: digits, l2") < md.index("## Declared predictions") \
        < md.index("## 1. ")
    for t in targets:
        assert f"## {t['number']}." in md
        assert t["status"] in (HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE, PARTIAL)
        assert t["reason"] and t["prediction"]["spec"]
    by = {t["number"]: t for t in targets}
    # SPEC §9: inversion on digits is never evidence; the report says so and points elsewhere.
    assert by[3]["status"] == UNTESTABLE and "CIFAR-10" in by[3]["reason"]
    assert by[3]["key"] is None and not by[2]["measures"]
    # target 8 says which of its checks could not run
    assert by[8]["status"] == PARTIAL and "inversion cannot be tested" in by[8]["reason"]
    assert {v["name"] for v in by[8]["variants"]} == {"seed 0 alone (target 4)",
                                                       "seed 1 alone (target 4)"}
    # The other targets carry numbers with intervals: 2 architectures x 2 seeds gives the
    # conditional cell jackknife, and the report names it.
    assert by[4]["key"]["ci"] is not None and "conditional" in by[4]["key"]["method"]
    assert (by[4]["key"]["n_archs"], by[4]["key"]["n_seeds"]) == (2, 2)
    trend = {(t["eps"], t["kind"]): t["estimate"] for t in by[4]["trend"]}
    assert trend[(1.0, "cross")]["n_pairs"] == 4 and trend[(1.0, "intra")]["n_pairs"] == 2
    assert by[7]["figures"]["eps=1"]["eval_inputs"] == group["header"]["eval_inputs"] == EVAL_SIZE
    # The 28 clean CKA values are taken from the table; target 2's standard-model figure is
    # theirs (cross-architecture pairs: one architecture pair, so the mean of its 4 pairs).
    header = group["header"]
    assert header["pair_values_available_from_analysis_table"] == len(table) == 28
    models = pd.read_parquet(root / "reports" / SWEEP / "models.parquet").set_index("run_id")
    std = table[(table["model_a"].map(models["eps"]) == 0) & (table["model_b"].map(models["eps"]) == 0)]
    cross = std[std["model_a"].map(models["arch"]) != std["model_b"].map(models["arch"])]
    clean = by[2]["figures"]["clean linear_cka"]
    assert clean["cross"]["n_pairs"] == len(cross) == 4 and clean["intra"]["n_pairs"] == 2
    assert clean["cross"]["value"] == pytest.approx(cross["value"].mean(), rel=1e-12)
    assert by[7]["status"] != UNTESTABLE and by[6]["status"] != UNTESTABLE
    assert by[5]["figures"]["eps=0"]["pairs"] == 6
    assert by[1]["figures"]["mlp"]["eps"] == [0.0, 1.0]
    assert "rtd_setting (target 6)" in header["settings"]
    assert "2 subsamples x 64 points" in header["settings"]["rtd_setting (target 6)"]
    assert len(re.findall(r"95% CI", md)) >= 10
    # The convergence diagnostic of the inversion code is still shown, labelled as such.
    conv = by[3]["figures"]["inversion_convergence"]
    assert len(conv) == 8 and all(v["n"] == 48 for v in conv.values())
    # Logged to the sweep's analysis run.
    names = {a.path for a in sweep_store["client"].list_artifacts(sweep_store["analysis_run"],
                                                                   "reproduction")}
    assert names == {"reproduction/reproduction.md", "reproduction/reproduction.json"}


def _study(agree_robust: float, agree_std: float, rng) -> StudyData:
    """Four models per eps whose predictions agree with a shared base at the given rates."""
    n, models, clean = 400, [], {}
    y = rng.integers(0, 10, size=n)
    for eps, rate in ((0.0, agree_std), (1.0, agree_robust)):
        for i in range(4):
            m = ModelInfo(f"m{i}-e{eps}", f"m{i}-e{eps}", f"a{i % 2}", eps, i // 2)
            pred = np.where(rng.random(n) < rate, y, rng.integers(0, 10, size=n))
            feats = rng.normal(size=(n, 5))
            clean[m.id] = {"features": feats, "logits": np.eye(10)[pred], "labels": y}
            models.append(m)
    return StudyData("synthetic", 10, models, clean)


def test_agreement_target_verdicts_follow_the_data(rng):
    cfg = ReproConfig(n_permutations=0)
    fails = evaluate_targets(_study(0.97, 0.6, rng), config=cfg)
    holds = evaluate_targets(_study(0.6, 0.97, rng), config=cfg)
    assert fails[3].status == FAILS and "against the prediction" in fails[3].reason
    assert fails[3].key["ci"][0] > 0
    assert holds[3].status == HOLDS and "as predicted" in holds[3].reason
    assert holds[3].key["ci"][1] < 0
    assert holds[2].status == UNTESTABLE  # no inversion run


def test_a_model_is_never_paired_with_itself():
    ps = PairSet()
    with pytest.raises(ValueError, match="never paired with itself"):
        ps.add("eps=0", ("mlp", 0), ("mlp", 0), 1.0)


def test_known_pair_values_are_used_instead_of_recomputed(rng):
    study = _study(0.9, 0.9, rng)
    cfg = ReproConfig(n_permutations=0)
    fresh = evaluate_targets(study, config=cfg)[1].figures["clean linear_cka"]["cross"]["value"]
    std = [m for m in study.models if m.eps == 0]
    key = spec_key("linear_cka", {})
    # stored once per unordered pair, in either order (a shared set, a symmetric measure)
    pairs = [(a, b) for i, a in enumerate(std) for b in std[i + 1:]]
    study.known = {("clean", key, *((a.id, b.id) if k % 2 else (b.id, a.id))): 0.25 + 0.01 * k
                   for k, (a, b) in enumerate(pairs)}
    cross = [0.25 + 0.01 * k for k, (a, b) in enumerate(pairs) if a.arch != b.arch]
    reused = evaluate_targets(study, config=cfg)[1].figures["clean linear_cka"]
    assert reused["cross"]["n_pairs"] == len(cross) == 4 and reused["intra"]["n_pairs"] == 2
    assert reused["cross"]["value"] == pytest.approx(np.mean(cross))
    assert fresh != pytest.approx(reused["cross"]["value"])
    assert spec_key("knn_jaccard", {"k": 10}) == spec_key("knn_jaccard", {"k": 10, "center": True})


def test_cli_reproduce_reads_the_data_options_from_the_runs(sweep_store, monkeypatch, capsys):
    """``python -m analysis reproduce SWEEP`` needs no data flags; a wrong override is refused
    before any work, in one line; an unknown sweep too."""
    monkeypatch.setenv("UNISWEEP_HOME", str(sweep_store["root"]))
    uri = ["--tracking-uri", sweep_store["uri"]]
    assert main(["reproduce", SWEEP, *uri, "--eval-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "eval set" in err and "hash" in err and "--eval-size" in err and err.count("\n") == 1
    assert main(["reproduce", "nope", *uri]) == 2
    assert "unknown sweep 'nope'" in capsys.readouterr().err


def _pair_study(pred_a: np.ndarray, pred_b: np.ndarray, y: np.ndarray) -> StudyData:
    models = [ModelInfo(n, n, n.lower(), 0.0, 0) for n in ("A", "B")]
    clean = {n: {"features": np.zeros((y.size, 2)), "logits": np.eye(10)[p], "labels": y}
             for n, p in (("A", pred_a), ("B", pred_b))}
    return StudyData("synthetic", 10, models, clean)


def test_fort_target_allows_one_input_of_resolution_and_no_more():
    """Per pair, agreement within one input (1/N) of a Fort curve counts as on it; the verdict
    itself rests on the mean relative position's interval, which one pair cannot give."""
    y = np.arange(100) % 10
    a, b = y.copy(), y.copy()
    a[0] = b[0] = (y[0] + 1) % 10  # a shared error ...
    b[1] = (y[1] + 1) % 10         # ... and one more of B: acc .99 / .98, agreement .99
    cfg = ReproConfig()
    res = target5(_pair_study(a, b, y), cfg, [0.0])
    # Fort's maximum agreement here is 1 - 0.09/8.9 = 0.98989: 0.99 is above it by < 1/N
    fig = res.figures["eps=0"]
    assert (fig["pairs"], fig["pairs_within"], fig["pairs_strictly_within"]) == (1, 1, 0)
    assert not fig["outside_by_more_than_1/N"] and res.figures["tolerance"] == 0.01
    assert res.status == INCONCLUSIVE and "no interval" in res.reason  # one pair, 2 cells
    a, b = y.copy(), y.copy()
    a[:10] = (y[:10] + 1) % 10
    b[10:20] = (y[10:20] + 1) % 10  # disjoint errors: agreement .80, independent value .811
    res = target5(_pair_study(a, b, y), cfg, [0.0])
    assert res.figures["eps=0"]["pairs_within"] == 0
    assert len(res.figures["eps=0"]["outside_by_more_than_1/N"]) == 1
    assert res.key["value"] < 0  # below the independent-errors curve


def test_every_dataset_and_threat_model_group_is_reported(tmp_path):
    """Item 9: a sweep with two threat models gets one verdict table and one section per
    (dataset, threat model) group, each evaluated on its own models only."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tr.make_client(uri)
    exp_id = client.create_experiment("two-groups",
                                      artifact_location=str(tmp_path / "mlartifacts"))
    grid = [(a, e, 0, t) for t, eps in (("l2", 1.0), ("linf", 0.1)) for a in ("mlp", "cnn")
            for e in (0.0, eps)]
    _log_trials(client, exp_id, tmp_path, "two-groups", grid, epochs=2)
    cfg = ReproConfig(n_permutations=0, inversion_iterations=10, inversion_targets=16,
                      probes=ProbeConfig(batch_size=256, num_probes=1, epochs=2),
                      attack_steps=2, subgroup_measures=(MeasureSpec("linear_cka_debiased"),))
    md = run_reproduction("two-groups", tracking_uri=uri, reports_root=tmp_path / "reports",
                          config=cfg)
    data = json.loads(md.with_suffix(".json").read_text())
    got = [(g["dataset"], g["threat_model"]) for g in data["groups"]]
    assert got == [("digits", "l2"), ("digits", "linf")]
    for g in data["groups"]:
        assert [t["number"] for t in g["targets"]] == list(range(1, 9))
        assert {m["model"].split("-")[0] for m in g["header"]["models"]} == {"mlp", "cnn"}
        assert len(g["header"]["models"]) == 4  # its own models only
        assert g["header"]["epsilons"] == [0.0, 1.0 if g["threat_model"] == "l2" else 0.1]
    text = md.read_text()
    tables = [text.index("## Verdicts: digits, l2"), text.index("## Verdicts: digits, linf")]
    details = [text.index("# digits, l2: details"), text.index("# digits, linf: details")]
    assert max(tables) < text.index("## Declared predictions") < min(details)
