"""Analysis by training epoch: trials that logged ``checkpoints/epoch_XXX/`` (as a trial with
``train.checkpoint_every`` does) are compared at chosen epochs; the pair table keys each
(trial, epoch) as its own item; the report gets the data and the figure of similarity vs epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.__main__ import main
from analysis.engine import ResultStore
from analysis.inputs import at_epochs, discover_models, load_eval_sets, load_model, parse_epochs
from analysis.pipeline import run_analysis
from analysis.reporting import run_report
from trainables import tracking as tr
from trainables.errors import ConfigError

SWEEP = "epochs"
CELLS = [("mlp", 0.0), ("cnn", 0.0), ("mlp", 0.1), ("cnn", 0.1)]
EPOCHS = 3
EVAL_SIZE = 120


def _train_and_log(client, exp_id: str, parent: str, arch: str, eps: float, *,
                   epochs_logged: tuple[int, ...]) -> tuple[str, list[dict]]:
    """Train a tiny digits model for EPOCHS epochs; log it as a FINISHED trial with its final
    ``checkpoint/`` and the checkpoints of ``epochs_logged`` under ``checkpoints/epoch_XXX/``."""
    from mlflow.entities import Metric, Param

    from trainables.config import TrainConfig
    from trainables.train import train_model

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(dict(
        dataset="digits", arch=arch, eps=eps, seed=0, epochs=EPOCHS, eval_size=EVAL_SIZE,
        attack_steps=2, eval_attack_steps=2, final_eval_steps=2, final_eval_restarts=1,
        num_threads=1, threat_model="linf", checkpoint_every=1))
    tags = {tr.TAG_SWEEP: SWEEP, tr.TAG_ROLE: "trial", tr.TAG_TRIAL_ID: f"{arch}-{eps}",
            tr.TAG_ARCH: arch, tr.TAG_WIDTH: "1.0", tr.TAG_EPS: tr.format_eps(eps),
            tr.TAG_SEED: "0", tr.TAG_THREAT_MODEL: "linf", tr.TAG_DATASET: "digits",
            tr.TAG_PARENT: parent}
    run_id = client.create_run(exp_id, tags=tags).info.run_id

    def report(metrics, ckpt_dir):
        epoch = int(metrics["epoch"])
        if epoch in epochs_logged or epoch == EPOCHS:
            path = tr.ARTIFACT_CHECKPOINT if epoch == EPOCHS else tr.epoch_checkpoint_path(epoch)
            for name in ("model.safetensors", "meta.json"):
                client.log_artifact(run_id, str(Path(ckpt_dir) / name), path)

    res = train_model(cfg, report=report)
    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, v) for k, v in tr.flatten_params(cfg.to_dict()).items()],
                     metrics=[Metric(k, float(v), now, EPOCHS) for k, v in res.metrics.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id, res.history


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Four 3-epoch trials; three logged epochs 1 and 2, one (cnn eps 0.1) only epoch 2 (as if
    keep_checkpoints had pruned epoch 1)."""
    home = tmp_path_factory.mktemp("epochs")
    uri = f"sqlite:///{home}/mlflow.db"
    client = tr.make_client(uri)
    exp_id = tr.ensure_experiment(client, SWEEP, artifact_location=home / "art")
    parent = client.create_run(exp_id, tags={tr.TAG_SWEEP: SWEEP, tr.TAG_ROLE: "sweep"})
    runs = {}
    for arch, eps in CELLS:
        logged = (2,) if (arch, eps) == ("cnn", 0.1) else (1, 2)
        runs[(arch, eps)] = _train_and_log(client, exp_id, parent.info.run_id, arch, eps,
                                           epochs_logged=logged)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return {"uri": uri, "home": home, "runs": runs}


def test_parse_epochs_accepts_numbers_lists_and_all_and_names_the_field():
    assert parse_epochs("5") == [5] and parse_epochs("10,5,10") == [5, 10]
    assert parse_epochs("all") == "all"
    for bad in ("0", "x", "", "3,-1"):
        with pytest.raises(ConfigError, match=r"--epoch=.*allowed: an epoch"):
            parse_epochs(bad)


def test_models_at_an_epoch_are_that_epochs_checkpoints(store):
    disc = at_epochs(discover_models(SWEEP, tracking_uri=store["uri"]), [1],
                     tracking_uri=store["uri"])
    assert sorted(m.label for m in disc.models) == ["cnn-e0-s0-ep1", "mlp-e0-s0-ep1",
                                                    "mlp-e0.1-s0-ep1"]
    assert [s.reason for s in disc.skipped] == ["no checkpoint of epoch 1 (it has [2, 3])"]
    base = load_eval_sets(disc.models)["digits"]
    for m in disc.models:
        run_id, history = store["runs"][(m.arch, m.eps)]
        assert (m.run_id, m.mlflow_run_id, m.epoch, m.final) == (f"{run_id}_epoch001", run_id,
                                                                 1, False)
        # The loaded weights are epoch 1's: they reproduce the accuracy logged after epoch 1.
        model, meta = load_model(m, tracking_uri=store["uri"])
        with torch.no_grad():
            acc = float((model(torch.from_numpy(base.X)).argmax(1).numpy() == base.y).mean())
        assert meta["epoch"] == 1 and acc == pytest.approx(history[0]["eval/clean_acc"], abs=1e-9)
        assert m.clean_acc == pytest.approx(history[0]["eval/clean_acc"], abs=1e-12)
    final = at_epochs(discover_models(SWEEP, tracking_uri=store["uri"]), [EPOCHS],
                      tracking_uri=store["uri"])
    assert all(m.final and m.epoch == EPOCHS and m.mlflow_run_id == "" for m in final.models)
    assert len(final.models) == 4


def test_an_epoch_beyond_training_is_one_line_exit_2(store, monkeypatch, capsys):
    monkeypatch.setenv("UNISWEEP_HOME", str(store["home"]))
    code = main(["run", SWEEP, "--epoch", "9", "--actors", "0", "--tracking-uri", store["uri"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "epoch 9 is not available" in err[0] and "epochs 1, 2, 3 (3 = the final ones)" in err[0]
    assert main(["run", SWEEP, "--epochs", "soon", "--tracking-uri", store["uri"]]) == 2
    assert "--epoch='soon' is not allowed" in capsys.readouterr().err


def test_pairs_per_epoch_are_items_of_the_table_and_the_report_plots_them(store):
    uri, home = store["uri"], store["home"]
    calls = []
    first = run_analysis(SWEEP, tracking_uri=uri, home=home, measures=["linear_cka", "agreement"],
                         actors=0, progress=lambda *a: calls.append(a))
    assert first.new_rows == 2 * 6  # 4 final models
    # Progress: the extraction, then each measure as its own stage, each from 0 to its count.
    stages = [c for c in calls if c[1] in (0, c[2])]
    assert stages == [("features", 0, 4), ("features", 4, 4), ("pairs linear_cka", 0, 6),
                      ("pairs linear_cka", 6, 6), ("pairs agreement", 0, 6),
                      ("pairs agreement", 6, 6)]
    res = run_analysis(SWEEP, tracking_uri=uri, home=home, measures=["linear_cka"], actors=0,
                       epochs="all")
    # Models are compared with the models of their own epoch only: 3 at epoch 1, 4 at epoch 2;
    # the 6 pairs of final models (epoch 3) are the ones already stored.
    assert res.new_rows == 3 + 6 and res.total_rows == 15 + 6  # + the 6 agreement rows
    models = pd.read_parquet(res.report_dir / "models.parquet").set_index("run_id")
    assert sorted(models["epoch"].tolist()) == [1] * 3 + [2] * 4 + [3] * 4
    assert models.loc[models["final"], "epoch"].eq(EPOCHS).all() and models["final"].sum() == 4
    table = ResultStore(res.pairs_path).load()
    table = table[table["measure"] == "linear_cka"]
    epoch_of = models["epoch"]
    assert (table["model_a"].map(epoch_of) == table["model_b"].map(epoch_of)).all()
    assert table["model_a"].map(epoch_of).value_counts().to_dict() == {1: 3, 2: 6, 3: 6}

    html = run_report(SWEEP, home=home, tracking_uri=uri)
    rdir = html.parent
    by_epoch = pd.read_csv(rdir / "vs_epoch.csv")
    by_epoch = by_epoch[by_epoch["measure"] == "linear_cka"]
    eps0 = by_epoch[by_epoch["pair_eps"] == 0.0].set_index("pair_epoch")
    assert eps0["n"].to_dict() == {1: 1, 2: 1, 3: 1}  # mlp vs cnn at each epoch
    a, b = store["runs"][("mlp", 0.0)][0], store["runs"][("cnn", 0.0)][0]
    ids = {f"{a}_epoch002", f"{b}_epoch002"}
    pair = table[table["model_a"].isin(ids) & table["model_b"].isin(ids)]
    assert len(pair) == 1 and eps0.loc[2, "mean"] == pytest.approx(pair["value"].iloc[0])
    assert set(by_epoch[by_epoch["pair_eps"] == 0.1]["pair_epoch"]) == {2, 3}  # 1: one model
    assert (rdir / "vs_epoch_digits_clean.png").stat().st_size > 5_000
    page = html.read_text()
    assert "Over training: clean inputs" in page and page.count("vs_epoch_digits_clean") >= 1
    # The page's other sections show the final models only.
    assert pd.read_csv(rdir / "summary.csv")["n"].sum() == 2 * 6
    # A later analysis of the final models only accepts the table's epoch items as this sweep's.
    again = run_analysis(SWEEP, tracking_uri=uri, home=home, measures=["linear_cka"], actors=0)
    assert again.new_rows == 0 and again.total_rows == res.total_rows
