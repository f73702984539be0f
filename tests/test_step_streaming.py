"""Per-step records streamed to Parquet part files (simulator/step_records.py).

With a small chunk, a run given a spill directory writes its per-step records in parts as it goes;
its output files must be byte for byte those of the same run kept in memory, on both engines, for one
replica and for a cluster, and the summary's step figures those of the whole table.
"""
from __future__ import annotations

import hashlib
import math

import polars as pl
import pytest

import simulator.fast_continuous
import simulator.metrics
import simulator.step_records
from policies.registry import make_policy
from policies.routers import make_router
from simulator.cluster import simulate_cluster
from simulator.engine import SimConfig, simulate
from simulator.step_records import StepRecords, StepTotals
from syncintellects.cli import main
from traces import load_trace, select_requests

FILES = ("requests.parquet", "steps.parquet", "config.json", "summary.json")
SMALL = 64


@pytest.fixture
def small_chunk(monkeypatch):
    for mod in (simulator.step_records, simulator.metrics, simulator.fast_continuous):
        monkeypatch.setattr(mod, "CHUNK", SMALL)


@pytest.fixture(scope="module")
def azure():
    return select_requests(load_trace("azure-conv"), num_requests=150, seed=0, rate=5.0, tile=True)


def written(res, out) -> dict:
    res.summary.pop("sim_wall_s")
    res.write(out)
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in FILES}


def run(azure, engine, replicas, steps_dir):
    cfg = SimConfig(kv_blocks=150, engine=engine)
    if replicas == 1:
        return simulate(azure, make_policy("continuous"), cfg, steps_dir=steps_dir)
    return simulate_cluster(azure, [make_policy("continuous") for _ in range(replicas)], make_router("jsq", replicas),
                            cfg, steps_dir=steps_dir)


@pytest.mark.parametrize("replicas", [1, 3])
def test_streamed_run_writes_the_same_bytes(azure, tmp_path, small_chunk, replicas):
    got = {}
    for engine in ("python", "fast"):
        kept = run(azure, engine, replicas, None)
        table = kept.steps
        assert table.height > 3 * SMALL  # several chunks, so the streamed run really streams
        parts = tmp_path / f"parts-{engine}"
        streamed = run(azure, engine, replicas, parts)
        assert not streamed._steps.in_memory and any(parts.rglob("part-*.parquet"))
        assert streamed.steps.equals(table)  # read back from the part files
        got[engine] = written(streamed, tmp_path / f"streamed-{engine}")
        assert not parts.exists()  # the scratch parts are gone once steps.parquet is written
        assert streamed.steps.equals(table)  # now read from steps.parquet
        assert written(kept, tmp_path / f"kept-{engine}") == got[engine]
        assert pl.read_parquet(tmp_path / f"kept-{engine}" / "steps.parquet").equals(table)
    assert got["fast"] == got["python"]


def test_chunked_totals_are_the_whole_tables(azure, small_chunk):
    res = run(azure, "fast", 1, None)
    steps, s = res.steps, res.summary
    t = StepTotals.of(steps)
    assert t.rows_in_table == steps.height and t.kv_peak == s["kv_blocks_peak"] == steps["kv_blocks_used"].max()
    assert t.steps == s["num_steps"] == steps["num_steps"].sum()
    assert t.rows == (steps["batch_size"] * steps["num_steps"]).sum()
    dur = steps["end_s"] - steps["start_s"]
    assert math.isclose(t.busy_s, dur.sum(), rel_tol=1e-12)
    kv_util = (steps["kv_blocks_used"] * dur).sum() / dur.sum() / res.config["kv_blocks"]
    assert math.isclose(s["kv_utilization_mean"], kv_util, rel_tol=1e-12)
    parts = [StepTotals.of(steps.slice(o, 100)) for o in range(0, steps.height, 100)]
    merged = StepTotals.merge(parts)
    assert (merged.steps, merged.rows, merged.padded, merged.kv_peak) == (t.steps, t.rows, t.padded, t.kv_peak)


def test_cli_leaves_no_parts(tmp_path, small_chunk):
    out = tmp_path / "run"
    assert main(["simulate", "--num-requests", "80", "--rate", "4", "--quiet", "--replicas", "2",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert pl.read_parquet(out / "steps.parquet").height > SMALL


def test_a_result_built_from_a_frame_keeps_working():
    frame = pl.DataFrame({"start_s": [0.0], "end_s": [1.0], "num_steps": [1], "batch_size": [1], "padded_rows": [0],
                          "prefill_tokens": [5], "output_tokens": [1], "kv_blocks_used": [1]})
    recs = StepRecords([frame], [StepTotals.of(frame)], replica_column=False)
    assert recs.frame() is frame and recs.height == 1
