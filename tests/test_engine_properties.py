"""Invariants over random traces and configurations (hypothesis), and determinism."""
import json

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from policies.schedulers.continuous import ContinuousBatching
from policies.schedulers.static import StaticBatching
from simulator.engine import SimConfig, simulate
from traces.schema import make_trace


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 40))
    gaps = draw(st.lists(st.floats(0.0, 3.0), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 600), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    block_size = draw(st.sampled_from([1, 8, 16, 32]))
    kv_tokens = draw(st.integers(64, 8000))
    kind = draw(st.sampled_from(["continuous", "static"]))
    if kind == "continuous":
        policy = ContinuousBatching(max_batched_tokens=draw(st.integers(16, 2048)), max_num_seqs=draw(st.integers(1, 64)),
                                    watermark=draw(st.sampled_from([0.0, 0.01, 0.05])))
    else:
        policy = StaticBatching(batch_size=draw(st.integers(1, 16)))
    trace = make_trace("prop", np.cumsum(gaps), prompts, outputs)
    cfg = SimConfig(kv_blocks=max(1, kv_tokens // block_size), block_size=block_size, max_context=draw(st.integers(64, 4096)))
    return trace, policy, cfg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_run_invariants(sc):
    trace, policy, cfg = sc
    res = simulate(trace, policy, cfg)
    df, steps, s = res.requests, res.steps, res.summary
    rejected = df["rejected"].to_numpy()
    finish = df["finish_s"].to_numpy()
    # every request finishes exactly once or is rejected with a reason, never both
    assert np.all(np.isfinite(finish) != rejected)
    assert all(r for r in df.filter(df["rejected"])["reject_reason"].to_list())
    assert s["num_finished"] + s["num_rejected"] == len(trace)
    # KV in use never exceeds capacity
    cap = res.config["kv_blocks"]
    assert steps.height == 0 or steps["kv_blocks_used"].max() <= cap
    # simulated time never goes backwards
    st_, en = steps["start_s"].to_numpy(), steps["end_s"].to_numpy()
    assert np.all(en >= st_) and np.all(st_[1:] >= en[:-1] - 1e-12)
    ok = df.filter(~df["rejected"])
    for a, b in (("arrival_s", "admitted_s"), ("admitted_s", "first_token_s"), ("first_token_s", "last_token_s"),
                 ("last_token_s", "finish_s")):
        assert (ok[b] >= ok[a] - 1e-12).all(), (a, b)
    # tokens produced equal the requests' output tokens
    assert (ok["generated_tokens"] == ok["output_tokens"]).all()
    assert int(steps["output_tokens"].sum()) == int(ok["output_tokens"].sum()) == s["output_tokens"]
    assert (ok["output_tokens"] <= ok["trace_output_tokens"]).all()


def _run_to(tmp, seed):
    trace = make_trace("det", np.cumsum(np.random.default_rng(5).exponential(0.3, 200)),
                       np.random.default_rng(6).integers(10, 900, 200), np.random.default_rng(7).integers(1, 400, 200))
    return simulate(trace, ContinuousBatching(), SimConfig(seed=seed, kv_blocks=400)).write(tmp)


def test_same_config_and_seed_give_byte_identical_files(tmp_path):
    a, b = _run_to(tmp_path / "a", 1), _run_to(tmp_path / "b", 1)
    for name in ("requests.parquet", "steps.parquet", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    sa.pop("sim_wall_s"), sb.pop("sim_wall_s")  # a wall-clock measurement, the only field allowed to differ
    assert sa == sb
