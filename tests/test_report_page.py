"""The report page on synthetic stored tables (no training, no Ray): the first screen (verdict
table, vs-eps small multiples) in headless Chromium, the page without a reproduction, the
inversion section and its parts present only with their data, every figure a PNG + CSV, and
reproduction.md / the page's details rendered from one document."""

from __future__ import annotations

import itertools
import json
import re
import shutil

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from analysis.inputs import load_eval_set, pair_seeds_and_targets
from analysis.report import build_report, dump_dom, screenshot
from analysis.report.figures import panel_title
from analysis.report.tables import eps_text, measure_info, names
from analysis.reproduction.document import to_html
from analysis.reproduction.stats import Estimate
from analysis.reproduction.study import TargetResult
from analysis.reproduction.writer import document, render, write_report

ARCHS, SEEDS, EPS = ("mlp", "cnn", "resnet18"), (0, 1), (0.0, 0.1)
CLEAN = ("linear_cka", "procrustes_sim", "knn_jaccard", "rtd", "agreement")
INVERTED = ("linear_cka", "procrustes_sim", "knn_jaccard")
TRANSFER = ("transfer_target", "transfer_seed")
NUM_TARGETS = 6


def _models() -> pd.DataFrame:
    base = load_eval_set("digits", eval_size=360, seed=0)
    rows = []
    for k, (arch, eps, seed) in enumerate(itertools.product(ARCHS, EPS, SEEDS)):
        rows.append({"run_id": f"run{k:02d}", "label": f"{arch}-e{eps:g}-s{seed}", "arch": arch,
                     "width": 1.0, "dataset": "digits", "threat_model": "linf", "eps": eps,
                     "seed": seed, "clean_acc": 0.95 - eps, "robust_acc": 0.5 + eps,
                     "checkpoint_uri": "", "trial_id": f"t{k}", "data_hash": base.hash,
                     "num_classes": 10, "num_gpus": 0.0,
                     "data": {"root": None, "eval_size": 360, "eval_seed": 0, "image_size": None}})
    return pd.DataFrame(rows)


def _value(measure: str, a, b, rng) -> float:
    """Similarity rising with eps, cross-architecture pairs lower than same-architecture ones."""
    same_eps, both = a.eps == b.eps, a.eps + b.eps
    v = 0.6 + 1.5 * both * same_eps + 0.1 * (a.arch == b.arch) + rng.uniform(-0.02, 0.02)
    return float(3.0 - v if measure == "rtd" else min(v, 0.99))


def _pairs(models: pd.DataFrame, *, inverted: bool, transfer: bool) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    ms = list(models.itertuples(index=False))

    def row(a, b, iset, measure, value, inputs_hash):
        rows.append({"model_a": a.run_id, "model_b": b.run_id, "input_set": iset,
                     "measure": measure, "params": "{}", "value": value, "status": "ok",
                     "error": "", "params_hash": "p" * 16, "inputs_hash": inputs_hash,
                     "dataset": "digits", "elapsed_s": 0.0})

    for a, b in itertools.combinations(ms, 2):
        for m in CLEAN:
            row(a, b, "clean", m, _value(m, a, b, rng), "c" * 64)
    for a, b in itertools.permutations(ms, 2):
        key = f"{int(a.run_id[3:]):016x}" + "0" * 48  # A's inverted images
        for m in INVERTED if inverted else ():
            row(a, b, "inverted", m, _value(m, a, b, rng) - 0.3 * (a.eps == 0), key)
        for m in TRANSFER if transfer else ():
            row(a, b, "inverted", m, 0.1 + 0.5 * a.eps * 10 * b.eps * 10 * (m == TRANSFER[0]), key)
    return pd.DataFrame(rows)


def _cache_inversions(out, models: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    base = load_eval_set("digits", eval_size=360, seed=0)
    seed_idx, target_idx = pair_seeds_and_targets(base.y, seed=0, num_targets=NUM_TARGETS)
    params = {"iterations": 5, "num_targets": NUM_TARGETS, "pairing_seed": 0}
    (out / "cache" / "inputs").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for r in models.itertuples(index=False):
        info = {"set": "inverted", "params": params, "dataset": "digits", "source": r.run_id}
        X = rng.uniform(0, 1, (NUM_TARGETS, *base.X.shape[1:])).astype(np.float32)
        np.savez(out / "cache" / "inputs" / f"{int(r.run_id[3:]):016x}.npz", X=X,
                 y=base.y[target_idx], seed_idx=seed_idx, target_idx=target_idx,
                 seed_y=base.y[seed_idx], info=np.array(json.dumps(info)))
    return seed_idx, target_idx


def _estimate(value: float, lo: float, hi: float) -> dict:
    return Estimate(value, lo, hi, 3, 2, 48, "loao-jackknife", df=2).to_dict()


RESULTS = [
    TargetResult(2, "Robust models are more similar", "holds", "cross-architecture CKA rises.",
                 key={"measure": "linear_cka", "kind": "cross", **_estimate(0.31, 0.2, 0.42)},
                 measures=[{"measure": "linear_cka", "kind": "cross", "status": "holds",
                            "estimate": _estimate(0.31, 0.2, 0.42)}]),
    TargetResult(4, "Agreement converges", "does not hold", "agreement falls with eps.",
                 key={"measure": "agreement", "kind": "cross", **_estimate(-0.1, -0.2, -0.03)},
                 trend=[{"eps": 0.0, "measure": "agreement", "kind": "cross",
                         "estimate": _estimate(0.8, 0.7, 0.9)}]),
    TargetResult(6, "Probes", "cannot be tested on this data", "no probes were run.",
                 figures={"why": "probe inputs missing", "counts": {"a": 1, "b": 2}}),
]


def _sweep(tmp_path, *, repro=True, inverted=True, transfer=True, images=True):
    out = tmp_path / "reports" / "syn"
    out.mkdir(parents=True)
    models = _models()
    models.to_parquet(out / "models.parquet")
    _pairs(models, inverted=inverted, transfer=transfer).to_parquet(out / "pairs.parquet")
    if images:
        _cache_inversions(out, models)
    if repro:
        header = {"dataset": "digits", "threat_model": "linf", "settings": {"level": 0.95},
                  "models": [{"run_id": "run00", "arch": "mlp"}]}
        write_report([(header, RESULTS)], out, sweep="syn")
    return out, build_report(out, sweep="syn")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("full"))


def test_first_screen_shows_the_verdict_table_and_the_vs_eps_panels(full, tmp_path):
    """1400 x 900 in headless Chromium: the verdict rows' colours and the plot lines' colours
    are both in the first screen, and the DOM holds the verdict table's text."""
    assert shutil.which("chromium"), "needs Debian's chromium: scripts/ci_system_deps.sh --with-chromium"
    out, html = full
    dom = dump_dom(html, width=1400, height=900)
    table = dom[dom.index("Verdicts: digits, linf"):].split("</table>")[0]
    for r in RESULTS:
        assert r.title in table and r.status in table
    assert "+0.3100" in table and "[+0.2000, +0.4200]" in table and "3 x 2 (loao-jackknife" in table
    # order on the page: verdicts, then the vs-eps figure, before any other figure
    first_img = dom.index("<img")
    assert dom.index("Verdicts: digits, linf") < first_img
    assert 'alt="vs_eps_digits_clean"' in dom[first_img:].split("</figure>")[0]
    png = screenshot(html, tmp_path / "first.png", width=1400, height=900)
    px = (mpimg.imread(png)[..., :3] * 255).round()
    assert px.shape[:2] == (900, 1400)

    def share(rgb) -> float:
        return float((np.abs(px - np.array(rgb)).max(axis=-1) <= 2).mean())

    assert share((0xe6, 0xf4, 0xe3)) > 1e-3 and share((0xfb, 0xe4, 0xe1)) > 1e-3  # holds, fails
    blue, orange = share((0x1f, 0x5f, 0xa8)), share((0xd9, 0x73, 0x1a))  # the two series
    assert blue > 2e-4 and orange > 2e-4, (blue, orange)


def test_vs_eps_panels_hold_the_group_means_and_distances_say_so(full):
    out, html = full
    rdir = html.parent
    vs = pd.read_csv(rdir / "vs_eps_digits_clean.csv")
    pairs = pd.read_parquet(out / "pairs.parquet")
    models = _models().set_index("run_id")
    clean = pairs[pairs["input_set"] == "clean"].assign(
        eps_a=lambda f: f["model_a"].map(models["eps"]), eps_b=lambda f: f["model_b"].map(
            models["eps"]), cross=lambda f: f["model_a"].map(models["arch"]) != f["model_b"].map(
            models["arch"]))
    for eps in EPS:
        for measure in CLEAN:
            sel = clean[(clean["eps_a"] == eps) & (clean["eps_b"] == eps)
                        & (clean["measure"] == measure) & clean["cross"]]
            got = vs[(vs["pair_eps"] == eps) & (vs["measure"] == measure)
                     & (vs["arch_group"] == "different-arch")]
            # 3 archs x 2 seeds: every architecture pair has 4 model pairs, so the mean over
            # architecture pairs of their means is the plain mean
            assert got["estimate"].iloc[0] == pytest.approx(sel["value"].mean(), abs=1e-12)
            assert got["ci_lo"].iloc[0] <= got["estimate"].iloc[0] <= got["ci_hi"].iloc[0]
    assert panel_title("rtd").endswith("(distance)") and panel_title("linear_cka") == "linear_cka"
    assert measure_info("rtd").axis == "distance (lower = more similar)"
    page = html.read_text()
    # the Fort plot is zoomed to the data: its CSV holds every clean pair's agreement
    assert len(pd.read_csv(rdir / "fort.csv")) == len(clean[clean["measure"] == "agreement"])
    for png in rdir.glob("*.png"):
        assert png.with_suffix(".csv").exists(), png.name
        assert png.name in page, png.name
    heat = pd.read_csv(rdir / "heatmap_digits_clean_linear_cka.csv")
    assert heat["model"].iloc[0] == "cnn ε0 s0" and "resnet18 ε0.1 s1" in set(heat["model"])
    assert "Over training" not in page  # one epoch only: no per-epoch section


def test_without_a_reproduction_the_page_says_how_to_run_it(tmp_path):
    out, html = _sweep(tmp_path, repro=False, inverted=False, transfer=False, images=False)
    page = html.read_text()
    assert "No reproduction verdicts yet" in page and "python -m analysis reproduce syn" in page
    assert "Verdicts:" not in page and "id='details'" not in page
    assert page.index("No reproduction verdicts yet") < page.index("<img")
    assert "id='inversion'" not in page  # no inverted rows, no cached inversions: no section


def test_inversion_section_per_eps_group_with_transfer_and_images(full):
    out, html = full
    rdir, page = html.parent, html.read_text()
    assert "id='inversion'" in page and "Inversion transfer is not in" not in page
    sim = pd.read_csv(rdir / "inverted_similarity_digits.csv")
    pairs = pd.read_parquet(out / "pairs.parquet")
    models = _models().set_index("run_id")
    inv = pairs[(pairs["input_set"] == "inverted") & (pairs["measure"] == "linear_cka")]
    a, b = inv["model_a"].map(models.to_dict("index").get), inv["model_b"].map(
        models.to_dict("index").get)
    cross = np.array([x["arch"] != y["arch"] for x, y in zip(a, b, strict=True)])
    to_std = np.array([x["eps"] == 0.1 and y["eps"] == 0 for x, y in zip(a, b, strict=True)])
    got = sim[(sim["direction"] == "robust ε0.1 → standard") & (sim["measure"] == "linear_cka")
              & (sim["input_set"] == "inverted") & (sim["arch_group"] == "different-arch")]
    assert len(got) == 1 and got["n"].iloc[0] == (cross & to_std).sum() == 3 * 2 * 2 * 2
    assert got["estimate"].iloc[0] == pytest.approx(inv["value"][cross & to_std].mean())
    assert set(sim["input_set"]) == {"clean", "inverted"}
    assert set(sim["measure"]) == set(INVERTED)
    tr = pd.read_csv(rdir / "inversion_transfer_digits.csv")
    assert set(tr["measure"]) == set(TRANSFER)
    both = tr[(tr["direction"] == "robust ε0.1 → robust ε0.1") & (tr["measure"] == TRANSFER[0])
              & (tr["arch_group"] == "different-arch")]
    assert both["estimate"].iloc[0] == pytest.approx(0.6)
    cells = pd.read_csv(rdir / "inversions_digits.csv")
    cols = list(dict.fromkeys(cells["column"]))
    assert cols[:2] == ["seed", "target"] and len(cols) == 2 + len(models)
    assert cols[2] == "cnn ε0 s0"  # models ordered by eps, arch, seed
    seed_idx, target_idx = pair_seeds_and_targets(
        load_eval_set("digits", eval_size=360, seed=0).y, seed=0, num_targets=NUM_TARGETS)
    shown = cells.drop_duplicates("inversion_index")
    np.testing.assert_array_equal(shown["seed_idx"], seed_idx[shown["inversion_index"]])
    np.testing.assert_array_equal(shown["target_idx"], target_idx[shown["inversion_index"]])
    assert (shown["seed_label"] != shown["target_label"]).all()
    assert "inversions_digits.png" in page


def test_inversion_parts_render_only_with_their_data(tmp_path):
    _, html = _sweep(tmp_path / "a", repro=False, transfer=False)
    page = html.read_text()
    assert "id='inversion'" in page and "inverted_vs_clean_digits.png" in page
    assert "Inversion transfer is not in" in page
    assert not (html.parent / "inversion_transfer_digits.png").exists()
    _, html = _sweep(tmp_path / "b", repro=False, inverted=False, transfer=False)
    page = html.read_text()  # only the cached images: the figure, and the notes on the rest
    assert "inversions_digits.png" in page and "No pair rows on inverted images" in page


def test_reproduction_md_and_page_details_come_from_one_document(full):
    out, html = full
    data = json.loads((out / "reproduction.json").read_text())
    md = (out / "reproduction.md").read_text()
    assert md == render(data, "md")  # the Markdown is the JSON's rendering
    details = render(data, "html", verdicts=False, shift=1)
    page = html.read_text()
    assert details in page
    blocks = document(data, verdicts=False)
    assert to_html(blocks, shift=1) == details
    for r in RESULTS:
        assert f"{r.number}. {r.title}: **{r.status}**" in md
        assert f"{r.number}. {r.title}: <strong>{r.status}</strong>" in details
        assert r.reason in md and r.reason in details
    # the details are the Markdown's part after the verdict tables, row for row
    rest = render(data, "md", verdicts=False)
    assert md.endswith(rest) and "Verdicts:" not in rest
    rows = [line for line in rest.splitlines() if line.startswith("| ")]
    assert len(re.findall(r"<tr[ >]", details)) == len(rows) > len(RESULTS)


def test_eps_reads_as_k_over_255_only_where_the_decimal_is_noise():
    assert [eps_text(e) for e in (0, 0.1, 0.2, 0.5, 1.0, 3.0, 0.25)] == \
        ["0", "0.1", "0.2", "0.5", "1", "3", "0.25"]
    assert [eps_text(k / 255) for k in (2, 4, 8, 16)] == ["2/255", "4/255", "8/255", "16/255"]
    assert eps_text(0.0314) == "0.0314" and eps_text(0.031372) == "0.031372"  # not k/255
    models = pd.DataFrame({"run_id": ["a", "b"], "arch": ["resnet18", "vgg11_bn"],
                           "width": [0.125, 0.25], "eps": [0.0, 8 / 255], "seed": [0, 1]})
    assert names(models).to_dict() == {"a": "resnet18 ε0 s0", "b": "vgg11_bn ε8/255 s1"}
