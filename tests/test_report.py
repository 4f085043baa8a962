"""End to end on tiny real models: run_analysis (Ray actors) -> pairs.parquet -> run_report;
the report's numbers equal the table, everything lands in MLflow, the CLI's user errors."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pandas as pd
import pytest
from test_analysis_models import build_sweep

from analysis.__main__ import main
from analysis.pipeline import run_analysis
from analysis.reporting import run_report
from analysis.report import screenshot
from analysis.engine import KEY, ResultStore
from trainables import tracking as tr

CELLS = [("mlp", 0.0, 0), ("mlp", 0.0, 1), ("mlp", 0.1, 0), ("cnn", 0.1, 0)]
MEASURES = ["linear_cka", "knn_jaccard:k=5", "agreement", "cohen_kappa"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, ray_session):
    home = tmp_path_factory.mktemp("home")
    (home / "art").mkdir()
    store = {"tracking_uri": f"sqlite:///{home}/mlflow.db", "artifact_root": str(home / "art")}
    build_sweep(store, "rep", CELLS, extra=[{"status": "FAILED", "seed": 5}])
    first = run_analysis("rep", tracking_uri=store["tracking_uri"], home=home, measures=MEASURES,
                         actors=2, input_sets=["clean", "adv"])
    again = run_analysis("rep", tracking_uri=store["tracking_uri"], home=home, measures=MEASURES,
                         actors=0, input_sets=["clean", "adv"])
    html = run_report("rep", home=home, tracking_uri=store["tracking_uri"])
    return store, home, first, again, html


def test_analysis_fills_the_table_once_and_a_rerun_computes_nothing(analysed):
    store, home, first, again, _ = analysed
    table = ResultStore(first.pairs_path).load()
    # clean: 6 unordered pairs x 4 symmetric measures; adv: 12 ordered pairs x 4
    assert first.new_rows == len(table) == 4 * (6 + 12)
    assert (table["status"] == "ok").all() and not table.duplicated(list(KEY)).any()
    assert again.new_rows == 0 and again.total_rows == len(table)
    assert any("trial failed" in why for why in first.skipped.values())
    assert set(table["model_a"]) | set(table["model_b"]) == {m.run_id for m in first.models}


def test_report_numbers_equal_the_parquet_table(analysed):
    _, home, first, _, html = analysed
    rdir = html.parent
    summary = pd.read_csv(rdir / "summary.csv")
    pairs = pd.read_parquet(first.pairs_path)
    models = pd.read_parquet(first.report_dir / "models.parquet").set_index("run_id")
    eps_a = pairs["model_a"].map(models["eps"])
    eps_b = pairs["model_b"].map(models["eps"])
    group = np.where(eps_a != eps_b, "cross-eps", np.where(
        eps_a == 0, "standard-standard", "robust-robust eps=" + eps_a.map("{:g}".format)))
    same_arch = pairs["model_a"].map(models["arch"]) == pairs["model_b"].map(models["arch"])
    seeds_differ = pairs["model_a"].map(models["seed"]) != pairs["model_b"].map(models["seed"])
    arch = np.where(same_arch, np.where(seeds_differ, "same-arch-different-seed",
                                        "same-arch-same-seed"), "different-arch")
    expect = (pairs.assign(eps_group=group, arch_group=arch)
              .groupby(["input_set", "measure", "eps_group", "arch_group"])["value"]
              .agg(["count", "mean"]).reset_index())
    merged = summary.merge(expect, on=["input_set", "measure", "eps_group", "arch_group"],
                           suffixes=("", "_expect"))
    assert len(merged) == len(expect) == len(summary)
    np.testing.assert_array_equal(merged["n"], merged["count"])
    np.testing.assert_allclose(merged["mean"], merged["mean_expect"], rtol=1e-12)
    # SPEC §10 intervals around the mean over architecture pairs; where the grid cannot give
    # one (this 4-model grid: a single architecture, or a second one with one cell) there is
    # none (tests/test_verdicts.py checks the intervals on a grid that can give them)
    has = merged["method"] != "none"
    assert merged.loc[~has, ["ci_lo", "ci_hi"]].isna().all().all()
    assert (merged.loc[has, "ci_lo"] <= merged.loc[has, "estimate"] + 1e-12).all()
    assert (merged.loc[has, "estimate"] <= merged.loc[has, "ci_hi"] + 1e-12).all()
    assert (merged["n_archs"] >= 1).all() and (merged["n_seeds"] >= 1).all()
    assert {"same-arch-different-seed", "different-arch"} <= set(summary["arch_group"])
    fort = pd.read_csv(rdir / "fort.csv")
    assert len(fort) == 6 and fort["fort_lower"].le(fort["fort_upper"]).all()
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 2 * len(MEASURES) + 2
    png = base64.b64decode(page.split("data:image/png;base64,")[1].split('"')[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_analysis_and_report_are_logged_to_the_sweeps_analysis_run(analysed):
    store, _, first, again, _ = analysed
    client = tr.make_client(store["tracking_uri"])
    assert first.analysis_run_id == again.analysis_run_id  # re-runs reuse the one run
    run = client.get_run(first.analysis_run_id)
    exp = client.get_experiment_by_name("rep")
    parent = tr.find_sweep_run(client, exp.experiment_id, "rep")
    assert run.data.tags[tr.TAG_ROLE] == "analysis"
    assert run.data.tags[tr.TAG_PARENT] == parent.info.run_id
    assert run.data.metrics["analysis/pairs"] == 4 * 18
    logged = {a.path for d in ("analysis", "report", "cache")
              for a in client.list_artifacts(run.info.run_id, d)}
    assert {"analysis/pairs.parquet", "report/index.html", "report/summary.csv",
            "cache/manifest.json"} <= logged


def test_cli_user_errors_are_one_line_and_exit_2(analysed, monkeypatch, capsys):
    store, home, *_ = analysed
    monkeypatch.setenv("UNISWEEP_HOME", str(home))
    uri = ["--tracking-uri", store["tracking_uri"]]
    cases = [(["run", "nope", *uri], "unknown sweep 'nope'"),
             (["run", "rep", "--measures", "cka9", *uri], "unknown measure 'cka9'"),
             (["run", "rep", "--actors", "-1", *uri], "actors must be an integer >= 0"),
             (["report", "never-analysed", *uri], "no analysis of sweep 'never-analysed'")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["report", "rep", *uri]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and "make ui" in out


def test_report_renders_in_headless_chromium(analysed, tmp_path):
    """A real browser renders the report and its embedded figures (CI installs Chromium)."""
    assert shutil.which("chromium"), "needs Debian's chromium: scripts/ci_system_deps.sh --with-chromium"
    html = analysed[4]
    png = screenshot(html, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(png)[..., :3]
    # A page of text alone is mostly white; rendered heatmaps/plots put many coloured pixels on it.
    coloured = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.2
    assert coloured.mean() > 0.02, f"only {coloured.mean():.3%} coloured pixels: figures not rendered"


def test_progress_lines_go_to_the_stderr_of_the_moment(capsys):
    """The CLI's progress writer is made before capsys (or a caller) swaps sys.stderr; it must
    still write to the current one."""
    from analysis.__main__ import _Progress

    progress = _Progress()
    progress("pairs", 3, 3)
    err = capsys.readouterr().err
    assert err == "pairs 3/3 (100.0%; 0.0 s)\n"
