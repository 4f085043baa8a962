"""Every registered measure through the Ray engine equals the serial engine exactly.

tests/test_pairwise.py checks the engines' mechanics on six measures; this one runs all of
``MEASURES`` (26; the two inversion-transfer measures, which need inverted inputs and their seed
labels, go through both engines in tests/test_transfer.py) with their default params, on a shared input set (each unordered pair once for
a symmetric measure) and on per-model sets (every ordered pair), through ``RayEngine`` with two
actors and ``SerialEngine`` pair by pair, and compares the rows value for value.
"""

from __future__ import annotations

import pandas as pd
from test_pairwise import SORT, run, synthetic

from analysis.engine import MeasureSpec, RayEngine, SerialEngine, plan_pairs
from analysis.measures import MEASURES


def test_every_measure_through_ray_actors_equals_the_serial_engine(ray_session):
    only_inverted = {n for n, m in MEASURES.items() if m.input_sets == ("inverted",)}
    assert only_inverted == {"transfer_target", "transfer_seed"}  # tests/test_transfer.py
    names = sorted(set(MEASURES) - only_inverted)
    specs = [MeasureSpec(name) for name in names]
    assert len(specs) == 24
    items, blocks = synthetic(5, n=120, d=12)
    a_items, a_blocks = synthetic(3, n=120, d=12, seed=1, per_model=True)
    items.update(a_items)
    plan = plan_pairs(blocks + a_blocks, specs)
    assert {s.name for s, tasks in plan.items() if tasks} == set(names)
    serial = run(SerialEngine(use_blocks=False), plan, items)
    actors = run(RayEngine(actors=2, tile_pairs=4), plan, items)
    bad = serial[serial["status"] != "ok"]
    assert bad.empty, bad[["measure", "error"]].drop_duplicates().to_string()
    assert set(serial["measure"]) == set(names)
    pd.testing.assert_frame_equal(serial.drop(columns="elapsed_s"),
                                  actors.drop(columns="elapsed_s"))  # both sorted by run()
