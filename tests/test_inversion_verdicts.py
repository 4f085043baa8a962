"""Targets 2, 3 and 8 of the reproduction judged from a pair table with inverted rows (the
analysis's ``pairs.parquet``), with the SPEC §10 verdict rules: the effect gives 'holds', its
reverse 'does not hold', an architecture-dependent direction 'inconclusive'; the inversion
transfer is reported beside CKA in target 3 and never decides it; digits stays 'cannot be
tested'."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from analysis.engine import TRANSFER_MEASURES, MeasureSpec, ResultStore
from analysis.inputs import EvalSet, InvertedInputs
from analysis.reproduction import (FAILS, HOLDS, INCONCLUSIVE, PARTIAL, UNTESTABLE, ModelInfo,
                                   ReproConfig, StudyData, evaluate_targets)
from analysis.reproduction.predictions import SIMILARITY_MEASURES
from analysis.reproduction.run import _Inputs, _known_values
from analysis.reproduction.targets_similarity import target2, target3

ARCHS = ("a0", "a1", "a2", "a3")
SEEDS = (0, 1)
EPS = (0.0, 1.0)
CLEAN_KEY = "c" * 64
CFG = ReproConfig(n_permutations=0, k_values=(10,))


def _inv_key(run_id: str) -> str:
    return hashlib.sha256(f"inverted{run_id}".encode()).hexdigest()


def _models() -> list[ModelInfo]:
    return [ModelInfo(f"{a}-e{e:g}-s{s}", f"{a}-e{e:g}-s{s}", a, e, s)
            for e in EPS for a in ARCHS for s in SEEDS]


def _row(a: str, b: str, input_set: str, spec: MeasureSpec, value: float, key: str) -> dict:
    return {"model_a": a, "model_b": b, "input_set": input_set, "measure": spec.name,
            "params": spec.canonical, "value": float(value), "status": "ok", "error": "",
            "params_hash": spec.hash, "inputs_hash": key, "dataset": "shapes", "elapsed_s": 0.0}


def pair_table(path, inverted, clean, transfer_target, transfer_seed, seed=0):
    """Write ``pairs.parquet`` for the grid: ``inverted(arch_a, arch_b, eps)`` is the mean
    inverted-image similarity of the ordered pair, ``clean(...)`` the clean one, the transfer
    functions likewise; each value gets seed noise of sd 0.02."""
    rng = np.random.default_rng(seed)
    models = _models()
    rows = []
    for e in EPS:
        group = [m for m in models if m.eps == e]
        for i, a in enumerate(group):
            for j, b in enumerate(group):
                if i == j:
                    continue
                for spec in SIMILARITY_MEASURES:
                    rows.append(_row(a.id, b.id, "inverted", spec, inverted(a.arch, b.arch, e)
                                     + 0.02 * rng.normal(), _inv_key(a.id)))
                    if j > i:  # clean rows once per unordered pair, as the engine stores them
                        rows.append(_row(a.id, b.id, "clean", spec, clean(a.arch, b.arch, e)
                                         + 0.02 * rng.normal(), CLEAN_KEY))
                for spec, fn in zip(TRANSFER_MEASURES, (transfer_target, transfer_seed),
                                    strict=True):
                    v = min(max(fn(a.arch, b.arch, e) + 0.02 * rng.normal(), 0.0), 1.0)
                    rows.append(_row(a.id, b.id, "inverted", spec, v, _inv_key(a.id)))
    ResultStore(path).append(rows)
    return models


def study_from_table(path, models, dataset="shapes") -> StudyData:
    """The StudyData the reproduction builds from the table alone (no inverted arrays)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 200)
    clean = {m.id: {"features": rng.normal(size=(200, 6)), "logits": np.eye(10)[y],
                    "labels": y} for m in models}
    where = {CLEAN_KEY: "clean", **{_inv_key(m.id): "inverted" for m in models}}
    study = StudyData(dataset, 10, models, clean)
    study.known = _known_values(path, where, {m.id: m.id for m in models})
    return study


def _effect(a, b, e):  # SPEC §11's table: std -> std 0.10, robust -> robust 0.66
    return 0.10 + 0.56 * e + 0.03 * (ARCHS.index(a) - 1.5)


def _reverse(a, b, e):
    return 0.66 - 0.56 * e + 0.03 * (ARCHS.index(a) - 1.5)


def _mixed(a, b, e):  # rises for a0, a2 (as row model), falls for a1, a3
    return 0.4 + (0.3 if ARCHS.index(a) % 2 == 0 else -0.3) * e


@pytest.fixture()
def effect(tmp_path):
    path = tmp_path / "pairs.parquet"
    models = pair_table(path, _effect, lambda a, b, e: 0.88,
                        lambda a, b, e: 0.05 + 0.59 * e, lambda a, b, e: 0.80 - 0.72 * e)
    return path, models


def test_the_effect_in_the_table_holds_for_targets_2_and_3(effect):
    path, models = effect
    study = study_from_table(path, models)
    assert study.inverted is None and study.known  # everything comes from the table
    t2 = target2(study, CFG, 0.0)
    t3 = target3(study, CFG, 0.0, 1.0)
    assert t2.status == HOLDS and t2.key["measure"] == "linear_cka_debiased"
    assert t2.key["value"] == pytest.approx(0.88 - 0.10, abs=0.02)
    assert t3.status == HOLDS and t3.key["measure"] == "linear_cka_debiased"
    assert t3.key["value"] == pytest.approx(0.56, abs=0.02)
    assert t3.key["ci"][0] > 0 and t3.key["n_archs"] == 4 and t3.key["method"] == "loao-jackknife"
    # the transfer measures sit beside CKA, each with its own verdict; CKA decides
    cross = {e["measure"]: e for e in t3.measures if e["kind"] == "cross"}
    assert cross["transfer_target"]["status"] == HOLDS
    assert cross["transfer_target"]["estimate"]["value"] == pytest.approx(0.59, abs=0.02)
    assert cross["transfer_seed"]["status"] == HOLDS  # predicted to fall, and it falls
    assert cross["transfer_seed"]["estimate"]["value"] == pytest.approx(-0.72, abs=0.02)
    assert "transfer_target holds" in t3.reason
    fig = t3.figures["transfer"]["transfer_target"]
    assert fig["eps=0 cross"]["value"] == pytest.approx(0.05, abs=0.02)
    assert fig["eps=1 cross"]["value"] == pytest.approx(0.64, abs=0.02)


def test_the_reverse_does_not_hold_and_a_mixed_direction_is_inconclusive(tmp_path):
    rev = tmp_path / "rev.parquet"
    models = pair_table(rev, _reverse, lambda a, b, e: 0.05,
                        lambda a, b, e: 0.6 - 0.5 * e, lambda a, b, e: 0.1 + 0.5 * e)
    study = study_from_table(rev, models)
    t2, t3 = target2(study, CFG, 0.0), target3(study, CFG, 0.0, 1.0)
    assert t2.status == FAILS and t3.status == FAILS
    cross = {e["measure"]: e["status"] for e in t3.measures if e["kind"] == "cross"}
    assert cross["transfer_target"] == FAILS and cross["transfer_seed"] == FAILS
    mixed = tmp_path / "mixed.parquet"
    models = pair_table(mixed, _mixed, lambda a, b, e: 0.4 + (0.3 if ARCHS.index(a) % 2 else
                                                             -0.3),
                        lambda a, b, e: 0.3, lambda a, b, e: 0.3)
    study = study_from_table(mixed, models)
    t2, t3 = target2(study, CFG, 0.0), target3(study, CFG, 0.0, 1.0)
    assert t3.status == INCONCLUSIVE and t3.key["ci"][0] < 0 < t3.key["ci"][1]
    assert t2.status == INCONCLUSIVE and t2.key["ci"][0] < 0 < t2.key["ci"][1]


def test_target3_without_transfer_values_says_so_and_is_unchanged(tmp_path):
    path = tmp_path / "p.parquet"
    models = pair_table(path, _effect, lambda a, b, e: 0.88, lambda a, b, e: 0.3,
                        lambda a, b, e: 0.3)
    study = study_from_table(path, models)
    study.known = {k: v for k, v in study.known.items() if not k[1].startswith("transfer_")}
    t3 = target3(study, CFG, 0.0, 1.0)
    assert t3.status == HOLDS
    assert {e["measure"] for e in t3.measures} == {s.label for s in SIMILARITY_MEASURES}
    assert t3.figures["transfer"]["transfer_target"].startswith("not computed")


def test_target8_runs_the_seed_variants_on_table_values(effect):
    path, models = effect
    results = {r.number: r for r in evaluate_targets(study_from_table(path, models), config=CFG)}
    t8 = results[8]
    seeds3 = [v for v in t8.variants if v["target"] == 3 and "seed" in v["name"]]
    assert len(seeds3) == len(SEEDS) * len(SIMILARITY_MEASURES)
    assert all(v["status"] == HOLDS and not v["flip"] for v in seeds3)
    # supporting measures have no variants, so they are not among the main verdicts
    assert "transfer_target" not in t8.figures["main_verdicts"]["target 3"]
    assert t8.status == PARTIAL  # the k and 2,000-iteration variants need the arrays
    assert "no inverted features here" in t8.reason and "alternative iteration" in t8.reason


def test_digits_stays_cannot_be_tested_whatever_the_table_says(effect):
    path, models = effect
    study = study_from_table(path, models, dataset="digits")
    results = {r.number: r for r in evaluate_targets(study, config=CFG)}
    for n in (2, 3):
        assert results[n].status == UNTESTABLE and "CIFAR-10" in results[n].reason
        assert not results[n].measures
    assert "inversion cannot be tested" in results[8].reason


def test_the_reproduction_inverts_with_the_analysed_settings():
    y = np.random.default_rng(0).integers(0, 10, 50)
    base = EvalSet("shapes", np.zeros((50, 3, 4, 4), np.float32), y, np.arange(50), "h" * 64, 10)
    analysed = InvertedInputs(iterations=400, num_targets=20, pairing_seed=5)
    got = _Inputs.plan(base, ReproConfig(), None, analysed)
    assert got.inverted is analysed and got.iterations == 400
    alt = got.inverted_alt  # SPEC §8's other iteration count, on the analysed pairing
    assert alt.config.iterations == 2000
    assert (alt.num_targets, alt.pairing_seed) == (20, 5)
    own = _Inputs.plan(base, ReproConfig(), None)  # nothing analysed: ReproConfig's settings
    assert own.inverted.config.iterations == 1000 and own.inverted.num_targets is None
