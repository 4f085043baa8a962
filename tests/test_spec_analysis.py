"""The spec's ``analysis:`` block and sweeps/shapes.yaml: shape checked at load, names checked
before the demo trains, the reproduction's inversion shared with the analysis's."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.inputs import parse_input_set
from sweeps.__main__ import main
from sweeps.spec import load_spec, parse_spec
from sweeps.spec_analysis import AnalysisSpec, check_analysis, repro_config
from trainables.errors import ConfigError, UserError

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _spec(analysis=None) -> dict:
    out = {"name": "t", "dataset": {"name": "digits"}, "archs": ["mlp"], "threat_model": "linf",
           "epsilons": [0]}
    if analysis is not None:
        out["analysis"] = analysis
    return out


def test_without_the_block_the_demo_runs_what_it_always_did():
    spec = parse_spec(_spec())
    assert spec.analysis == AnalysisSpec(measures=None, input_sets=("clean",))
    assert repro_config(spec.analysis) is None  # the reproduction's own defaults


@pytest.mark.parametrize("analysis, message", [
    ({"measures": "linear_cka"}, "analysis.measures='linear_cka' is not allowed; allowed: a list"),
    ({"measures": ["linear_cka", 3]}, "analysis.measures[1]=3 is not allowed"),
    ({"measures": ["linear_cka", "linear_cka"]}, "analysis.measures[1]='linear_cka' duplicates"),
    ({"input_sets": ["inverted"]}, "analysis.input_sets=['inverted'] lacks clean"),
    ({"input_sets": ["clean", "inverted:iterations"]}, "analysis.input_sets[1]="),
    ({"inversion_iterations_alt": -1}, "analysis.inversion_iterations_alt=-1 is not allowed"),
    ({"measure": ["linear_cka"]}, "analysis.measure: unknown key in 'analysis' (did you mean "
                                  "'measures'?)"),
])
def test_the_block_is_checked_at_load_naming_the_field(analysis, message):
    with pytest.raises(ConfigError) as info:
        parse_spec(_spec(analysis))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("analysis, message", [
    ({"measures": ["linear_cka", "linear_ckaa"]}, "analysis.measures[1]='linear_ckaa': "),
    ({"input_sets": ["clean", "inverted:iterationz=5"]}, "analysis.input_sets[1]="),
    ({"input_sets": ["clean", "invertd"]}, "analysis.input_sets[1]='invertd': "),
])
def test_names_are_checked_against_the_registries(analysis, message):
    spec = parse_spec(_spec(analysis))
    with pytest.raises(UserError) as info:
        check_analysis(spec.analysis)
    assert str(info.value).startswith(message)


def test_demo_refuses_a_bad_name_before_it_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNISWEEP_HOME", str(tmp_path))
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndataset: {name: digits}\narchs: [mlp]\nthreat_model: linf\n"
                    "epsilons: [0]\nanalysis: {measures: [procrustes]}\n")
    assert main(["demo", str(path)]) == 2
    err = capsys.readouterr().err
    assert "analysis.measures[0]='procrustes'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # nothing was trained or written


def test_shapes_yaml_is_the_universality_grid_and_shares_its_inversion():
    spec = load_spec(SWEEPS / "shapes.yaml")
    assert spec.name == "shapes" and spec.dataset.name == "shapes"
    assert (spec.dataset.n_train, spec.dataset.n_test) == (4000, 1000)
    assert [a.label for a in spec.archs] == ["resnet18-w0.125", "vgg11_bn-w0.25"]
    assert [(t.threat_model, t.epsilons) for t in spec.threats] == [("linf", (0.0, 8 / 255))]
    assert spec.seeds == (0, 1) and len(spec.cells()) == 8
    assert (spec.train.optimizer, spec.train.lr, spec.train.schedule) == ("adam", 2e-3, "cosine")
    assert spec.train.attack_steps == 3 and spec.eval.min_clean_acc == 0.85
    check_analysis(spec.analysis)
    assert set(spec.analysis.measures) == {"linear_cka", "linear_cka_debiased", "procrustes_sim",
                                           "knn_jaccard:k=10", "agreement", "transfer_target",
                                           "transfer_seed"}
    inverted = parse_input_set(spec.analysis.input_sets[1])
    cfg = repro_config(spec.analysis)
    assert (cfg.inversion_iterations, cfg.inversion_targets) == (200, 200)
    assert inverted.params()["iterations"] == 200 and inverted.num_targets == 200
    # biased CKA is meaningful only with more inputs than features (vgg11_bn-w0.25: 128)
    assert inverted.num_targets > 512 * 0.25
    assert cfg.inversion_iterations_alt is None  # 0 in the spec: the sensitivity run is skipped
