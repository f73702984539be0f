"""The decode-attention grid: the measured (batch, context) rows are reproduced, the steps in the
real grid survive, and a run of decode steps in closed form equals stepping one at a time."""
import csv
import json
from statistics import median

import pytest
from hypothesis import given, settings, strategies as st

from simulator.cost_model import CostModel
from simulator.profile import ProfileError, load_profile
from simulator.profiles.sources import ATTENTION_CSV

GRID_PROFILES = ("a100-llama-2-7b", "h100-llama-2-7b", "a100-llama-2-70b-tp4", "a100-llama-2-7b-hf", "a100-qwen-72b-tp8")
COSTS = {n: CostModel(load_profile(n)) for n in GRID_PROFILES}


def real_rows():
    rows = {}
    with open(ATTENTION_CSV, newline="") as f:
        for r in csv.DictReader(f):
            if r["kind"] == "decode":
                rows.setdefault((int(r["batch_size"]), int(r["kv_cache_size"])), []).append(float(r["median_ms"]))
    return {k: median(v) for k, v in rows.items()}


def test_grid_reproduces_the_measured_rows_and_their_steps():
    cost, rows = COSTS["a100-llama-2-7b"], real_rows()
    for (b, k), ms in rows.items():
        if k in (32, 1024, 2048, 3072, 4032):
            assert cost.decode_attn_ms(b, b * k) / 32 == pytest.approx(ms, rel=1e-4, abs=1e-6)
    # the real grid's step at 4,032 tokens: batch 6 -> 7 raises a layer from 0.24 to 0.40 ms
    assert cost.decode_attn_ms(6, 6 * 4032) / 32 == pytest.approx(0.239)
    assert cost.decode_attn_ms(7, 7 * 4032) / 32 == pytest.approx(0.403)
    # between measured contexts the grid interpolates; rows measured there (K 512, 1408...) agree
    off = [(cost.decode_attn_ms(b, b * k) / 32, ms) for (b, k), ms in rows.items() if 32 < k < 4032
           and k not in (1024, 2048, 3072) and ms > 0.05]
    assert len(off) > 100
    errs = sorted(abs(a / m - 1) for a, m in off)
    assert errs[len(errs) // 2] < 0.1  # median error of the held-out rows under 10%


def test_grid_shape_outside_the_measured_range():
    cost = COSTS["a100-llama-2-7b"]
    assert cost.decode_attn_ms(4, 4 * 10) == cost.decode_attn_ms(4, 4 * 32)  # flat below the first context
    assert cost.decode_attn_ms(256, 256 * 1024) == pytest.approx(2 * cost.decode_attn_ms(128, 128 * 1024))
    assert cost.decode_attn_ms(8, 8 * 5000) > cost.decode_attn_ms(8, 8 * 4032)  # extrapolated upward
    assert cost.decode_attn_ms(0, 0) == 0.0


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(GRID_PROFILES), st.integers(1, 300), st.integers(0, 5000), st.integers(1, 3000))
def test_closed_form_run_equals_stepping_one_at_a_time(name, batch, mean_ctx, n):
    cost = COSTS[name]
    sum_ctx = batch * mean_ctx + (mean_ctx % batch)  # also contexts that are not a multiple of the batch
    total = sum(cost.step_s(batch, sum_ctx + k * batch) for k in range(n))
    assert cost.decode_run_s(batch, sum_ctx, n) == pytest.approx(total, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(GRID_PROFILES), st.integers(1, 300), st.integers(0, 5000), st.floats(1e-4, 60.0),
       st.integers(1, 4000))
def test_steps_until_is_the_smallest_covering_run(name, batch, mean_ctx, budget, limit):
    cost = COSTS[name]
    sum_ctx = batch * mean_ctx
    n = cost.decode_steps_until(batch, sum_ctx, budget, limit)
    assert 1 <= n <= limit
    if n < limit:
        assert cost.decode_run_s(batch, sum_ctx, n) >= budget
    if n > 1:
        assert cost.decode_run_s(batch, sum_ctx, n - 1) < budget


def test_a_profile_without_the_grid_keeps_the_linear_decode_term(tmp_path):
    data = load_profile().data
    data = json.loads(json.dumps(data))
    del data["coefficients"]["decode_attn_grid"]
    p = tmp_path / "linear.json"
    p.write_text(json.dumps(data))
    lin = CostModel(load_profile(p))
    d = data["coefficients"]["decode_attn"]
    assert lin.decode_attn_ms(10, 5000) == pytest.approx(d["per_step_ms"] + 10 * d["per_seq_ms"] + 5000 * d["per_ctx_token_ms"])
    # the linear summary of the grid is close to the grid on average, but misses its steps
    grid = COSTS["a100-llama-2-7b"]
    assert lin.decode_attn_ms(64, 64 * 2048) == pytest.approx(grid.decode_attn_ms(64, 64 * 2048), rel=0.25)


@pytest.mark.parametrize("edit,field", [
    (lambda g: g.__setitem__("batch", [1]), r"decode_attn_grid.batch must hold"),
    (lambda g: g["ms"].pop(), r"decode_attn_grid.ms must have one row per context"),
    (lambda g: g["ms"][2].__setitem__(5, -1.0), r"decode_attn_grid.ms\[2\]\[5\]"),
    (lambda g: g["context"].reverse(), r"decode_attn_grid.context must hold"),
])
def test_bad_grids_name_their_field(tmp_path, edit, field):
    data = json.loads(json.dumps(load_profile().data))
    edit(data["coefficients"]["decode_attn_grid"])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=field):
        load_profile(p)
