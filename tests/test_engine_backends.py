"""The pair engines on the torch backend: the Ray actors equal their serial twin, torch equals
numpy, GPU options are checked before anything runs, and an actor's state cache stays bounded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.engine import MeasureSpec, RayEngine, SerialEngine, make_engine, plan_pairs
from analysis.engine.state_cache import StateCache, state_bytes
from analysis.measures import get_measure, portable_state
from test_measures_backends import BACKEND_TOL
from test_pairwise import SORT, run, synthetic
from trainables.errors import ConfigError

SPECS = [MeasureSpec("linear_cka"), MeasureSpec("linear_cka_debiased"),
         MeasureSpec("procrustes_sim"), MeasureSpec("knn_jaccard", (("k", 5),)),
         MeasureSpec("second_order_cosine"), MeasureSpec("agreement"), MeasureSpec("jsd_sim")]


@pytest.fixture()
def one_torch_thread():
    """The driver computes with one torch thread, as each actor does (float32 GEMMs split over
    other thread counts round differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_actor_engine_on_torch_equals_its_serial_twin(ray_session, one_torch_thread):
    items, blocks = synthetic(5, seed=3)
    a_items, a_blocks = synthetic(3, seed=4, per_model=True)
    items.update(a_items)
    plan = plan_pairs(blocks + a_blocks, SPECS)
    serial = run(SerialEngine(use_blocks=False, backend="torch", device="cpu"), plan, items)
    engine = RayEngine(actors=2, tile_pairs=3, backend="torch", gpus_per_actor=0,
                       use_blocks=False)
    actors = run(engine, plan, items)
    assert (serial["status"] == "ok").all(), serial.loc[serial.status != "ok", "error"].tolist()
    pd.testing.assert_frame_equal(serial.drop(columns="elapsed_s"),
                                  actors.drop(columns="elapsed_s"))
    assert engine.stats.backends[str(SPECS[0])] == "torch:cpu"
    assert engine.stats.backends["agreement"] == "numpy"  # no torch implementation: numpy
    # and the torch rows equal the numpy engine's, block paths included (a tile in one
    # cross_block pass on the actors: float32 GEMMs of other shapes, so equal to F32 rounding)
    numpy_rows = run(SerialEngine(use_blocks=True), plan, items)
    blocked = run(SerialEngine(use_blocks=True, backend="torch"), plan, items)
    tiles = run(RayEngine(actors=2, tile_pairs=4, backend="torch"), plan, items)
    for other in (numpy_rows, blocked, tiles):
        assert list(other[SORT].itertuples(index=False)) == list(serial[SORT].itertuples(index=False))
        np.testing.assert_allclose(other["value"], serial["value"], rtol=0, atol=BACKEND_TOL)


def test_gpu_options_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match=r"gpus_per_actor=0.5 needs backend='torch' or 'auto'"):
        RayEngine(actors=2, gpus_per_actor=0.5)
    with pytest.raises(ConfigError, match=r"device='cuda' needs gpus_per_actor > 0"):
        RayEngine(actors=2, backend="torch", device="cuda")
    with pytest.raises(ConfigError, match=r"gpus_per_actor must be a number in \[0, 64\]"):
        RayEngine(actors=2, backend="torch", gpus_per_actor=-1)
    with pytest.raises(ConfigError, match=r"device='cuda:1' is not allowed for Ray actors"):
        RayEngine(actors=2, backend="torch", device="cuda:1", gpus_per_actor=1)
    with pytest.raises(ConfigError, match=r"gpus_per_actor=0.25 needs actors >= 1"):
        make_engine(0, backend="torch", gpus_per_actor=0.25)
    with pytest.raises(ConfigError, match=r"backend='cupy' is not allowed"):
        make_engine(0, backend="cupy")
    # a fractional GPU share is a valid request (four actors on one GPU)
    engine = make_engine(4, backend="torch", gpus_per_actor=0.25)
    assert (engine.backend, engine.device, engine.gpus) == ("torch", "cuda", 0.25)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            SerialEngine(backend="torch", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_actors_equal_the_serial_engine(ray_session):
    items, blocks = synthetic(5, seed=5)
    plan = plan_pairs(blocks, SPECS)
    serial = run(SerialEngine(use_blocks=False, backend="torch", device="cuda"), plan, items)
    actors = run(RayEngine(actors=2, backend="torch", gpus_per_actor=0.25), plan, items)
    np.testing.assert_allclose(actors["value"], serial["value"], rtol=0, atol=1e-6)


def test_state_cache_fetches_once_and_stays_within_budget():
    m = get_measure("linear_cka")
    rng = np.random.default_rng(8)
    states = {f"s{i}": portable_state(m.prepare(rng.normal(size=(50, 6)), backend="torch"))
              for i in range(6)}
    one = state_bytes(states["s0"])
    fetched: list[str] = []

    def fetch(ids):
        fetched.extend(ids)
        return [states[i] for i in ids]

    cache = StateCache("cpu", max_bytes=3 * one)
    got = cache.get("cka", ["s0", "s1"], fetch)
    assert isinstance(got["s0"]["X"], torch.Tensor)  # live again, on the cache's device
    cache.get("cka", ["s1", "s2"], fetch)
    assert fetched == ["s0", "s1", "s2"]  # s1 came from the cache
    cache.get("cka", ["s3", "s4"], fetch)  # over budget: least recently used (s0) goes
    assert len(cache._states) == 3 and "s0" not in cache._states
    cache.get("cka", ["s0"], fetch)
    assert fetched[-1] == "s0"
    cache.get("procrustes", ["s5"], fetch)  # another spec empties the cache
    assert list(cache._states) == ["s5"]


def test_analysis_cli_on_the_torch_backend_equals_numpy(mlflow_store, tmp_path, monkeypatch):
    """`python -m analysis run --backend torch --actors 0` on real (tiny) trained models: the
    same pairs as the numpy run, values within the backend tolerance, the backend logged."""
    from analysis.__main__ import main
    from test_analysis_models import build_sweep
    from trainables import tracking as tr

    build_sweep(mlflow_store, "bk", [("mlp", 0.0, 1), ("mlp", 0.1, 2), ("cnn", 0.0, 3)])
    measures = "linear_cka,procrustes_sim,knn_jaccard:k=5,agreement"
    tables = {}
    for backend in ("numpy", "torch"):
        home = tmp_path / backend
        monkeypatch.setenv("UNISWEEP_HOME", str(home))
        assert main(["run", "bk", "--actors", "0", "--backend", backend, "--measures", measures,
                     "--tracking-uri", mlflow_store["tracking_uri"], "--no-report"]) == 0
        tables[backend] = pd.read_parquet(home / "reports" / "bk" / "pairs.parquet").sort_values(
            SORT).reset_index(drop=True)
    a, b = tables["numpy"], tables["torch"]
    assert len(a) == 4 * 3 and (b["status"] == "ok").all()
    assert a[SORT].equals(b[SORT]) and a["params_hash"].equals(b["params_hash"])
    np.testing.assert_allclose(b["value"], a["value"], rtol=0, atol=BACKEND_TOL)
    client = tr.make_client(mlflow_store["tracking_uri"])
    exp = client.get_experiment_by_name("bk")
    run = tr.search_sweep_runs(client, exp.experiment_id, sweep="bk", role="analysis")[-1]
    assert run.data.params["backend"] == "numpy"  # the first run's settings stay the params
    assert run.data.params["device"] == "cpu"


class _Ref:
    """Stands in for a Ray ObjectRef in a tile (only its ``hex()`` is read)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def hex(self) -> str:
        return self.key


@pytest.mark.parametrize("name,params", [("linear_cka_debiased", {}), ("procrustes_sim", {}),
                                         ("knn_jaccard", {"k": 5})])
def test_a_tile_of_torch_states_is_one_cross_block(name, params):
    from analysis.engine.actors import _PairWorker

    items, _ = synthetic(6, seed=9)
    m = get_measure(name)
    states = {k: m.prepare(v["features"], backend="torch", **params) for k, v in items.items()}
    keys = sorted(states)
    tasks = [(t, _Ref(keys[a]), _Ref(keys[b]), keys[a], keys[b])
             for t, (a, b) in enumerate([(0, 3), (0, 4), (1, 3), (1, 5), (2, 4)])]
    out = _PairWorker._tile_block(name, params, {}, tasks, states)
    assert out is not None and [o[0] for o in out] == list(range(5))
    for (_, a, b, _, _), (_, value, error, _) in zip(tasks, out, strict=True):
        assert error == ""
        assert value == pytest.approx(m.compare_states(states[a.key], states[b.key], **params),
                                      abs=BACKEND_TOL)
    numpy_states = {k: m.prepare(v["features"], **params) for k, v in items.items()}
    assert _PairWorker._tile_block(name, params, {}, tasks, numpy_states) is None  # pairs then
