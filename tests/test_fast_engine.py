"""The fast engine (simulator/fast_continuous.py) against the Python engine: the same output bytes.

Real azure-conv requests (with a small KV cache that forces preemptions and rejections), sarathi,
policy parameters, the cluster under every router, and random synthetic workloads (hypothesis).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from policies.predictors import make_predictor
from policies.registry import make_policy
from policies.routers import make_router
from policies.schedulers.continuous import ContinuousBatching
from simulator.cluster import simulate_cluster
from simulator.engine import SimConfig, simulate, use_fast
from syncintellects.cli import main
from traces import load_trace, select_requests
from traces.schema import Trace

FILES = ("requests.parquet", "steps.parquet", "config.json", "summary.json")


def digests(result, tmp_path, name) -> dict:
    result.summary.pop("sim_wall_s")  # the run's own wall time: the one figure that differs
    out = result.write(tmp_path / name)
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def azure():
    return select_requests(load_trace("azure-conv"), num_requests=400, seed=0, rate=6.0, tile=True)


def both_single(trace, tmp_path, policy="continuous", kv_blocks=None, **params):
    got = {}
    for engine in ("python", "fast"):
        res = simulate(trace, make_policy(policy, **params), SimConfig(kv_blocks=kv_blocks, engine=engine))
        got[engine] = (digests(res, tmp_path, engine), res)
    return got


@pytest.mark.parametrize("policy, kv_blocks, params", [
    ("continuous", None, {}),
    ("continuous", 120, {}),                     # preemptions and rejections
    ("sarathi", 200, {}),
    ("continuous", 300, {"max_num_seqs": 8, "max_batched_tokens": 700, "watermark": 0.05}),
    ("vllm-v0", 150, {}),
    ("vllm-v0", 400, {"max_batched_tokens": 600}),  # longer prompts turned away: vllm-v0 does not chunk
])
def test_single_replica_same_bytes(azure, tmp_path, policy, kv_blocks, params):
    got = both_single(azure, tmp_path, policy, kv_blocks, **params)
    assert got["fast"][0] == got["python"][0]
    res = got["fast"][1]
    assert res.requests["generated_tokens"].sum() == res.steps["output_tokens"].sum()
    if kv_blocks == 120:  # the cases exercise what they are meant to
        assert res.summary["preemptions"] > 0 and res.summary["num_rejected"] > 0
    if policy == "vllm-v0" and params:
        assert res.requests["reject_reason"].str.contains("does not chunk").any()


@pytest.mark.parametrize("router, replicas, kv_blocks", [
    ("round-robin", 4, None), ("round-robin", 3, 150), ("least-loaded", 3, 200), ("jsq", 4, 150),
    ("length-aware", 2, None),
])
def test_cluster_same_bytes(azure, tmp_path, router, replicas, kv_blocks):
    got = {}
    for engine in ("python", "fast"):
        r = make_router(router, replicas)
        pred = make_predictor("noisy", trace=azure, seed=0) if r.needs_prediction else None
        res = simulate_cluster(azure, [make_policy("continuous") for _ in range(replicas)], r,
                               SimConfig(kv_blocks=kv_blocks, engine=engine), predictor=pred)
        got[engine] = digests(res, tmp_path, engine)
        served = res.requests.filter(~res.requests["rejected"])
        assert served["replica"].null_count() == 0 and served["finish_s"].is_not_nan().all()
    assert got["fast"] == got["python"]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 10_000), kv_blocks=st.integers(8, 120),
       max_num_seqs=st.integers(1, 12), max_batched_tokens=st.integers(16, 600), rate=st.floats(0.5, 40),
       policy=st.sampled_from(["continuous", "vllm-v0", "sarathi"]))
def test_random_workloads_same_records(n, seed, kv_blocks, max_num_seqs, max_batched_tokens, rate, policy):
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.exponential(1.0 / rate, n).cumsum())
    if n > 2:
        arrivals[1] = arrivals[0]  # simultaneous arrivals
    trace = Trace(name="synthetic", request_id=np.arange(n), arrival_s=arrivals,
                  prompt_tokens=rng.integers(1, 400, n), output_tokens=rng.integers(1, 300, n))
    runs = [simulate(trace, make_policy(policy, max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens),
                     SimConfig(kv_blocks=kv_blocks, engine=engine)) for engine in ("python", "fast")]
    assert runs[0].requests.equals(runs[1].requests, null_equal=True)
    assert runs[0].steps.equals(runs[1].steps)
    assert runs[0].config == runs[1].config


def test_engine_choice():
    class Tweaked(ContinuousBatching):  # a subclass may override a hook: never the fused loop
        pass

    assert use_fast(make_policy("continuous"), SimConfig())
    assert use_fast(make_policy("sarathi"), SimConfig())
    assert not use_fast(Tweaked(), SimConfig())
    patched = make_policy("continuous")
    patched.plan = lambda view: None  # an instance whose plan was replaced (a spy in a test, say)
    assert not use_fast(patched, SimConfig())
    assert not use_fast(make_policy("static"), SimConfig())
    assert not use_fast(make_policy("continuous"), SimConfig(engine="python"))
    assert use_fast(make_policy("vllm-v0"), SimConfig(engine="fast"))
    with pytest.raises(ValueError, match="--engine fast"):
        use_fast(make_policy("static"), SimConfig(engine="fast"))


def test_cli_engine_flag(tmp_path, capsys):
    base = ["simulate", "--num-requests", "60", "--rate", "4", "--quiet"]
    assert main(base + ["--policy", "static", "--engine", "fast", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine fast" in err[0]
    for engine in ("python", "fast"):
        assert main(base + ["--engine", engine, "--out", str(tmp_path / engine)]) == 0
    for f in ("requests.parquet", "steps.parquet", "config.json"):
        assert (tmp_path / "python" / f).read_bytes() == (tmp_path / "fast" / f).read_bytes()
    assert "engine" not in json.loads((tmp_path / "fast" / "config.json").read_text())["sim"]


def test_policy_rejections_while_decoding(tmp_path):
    """Prompts the edge accepts but the policy turns away (they need the watermark's block), arriving
    while others decode: the plan that rejects also decodes, for one step (max_steps=1)."""
    n = 40
    prompt = np.where(np.arange(n) % 5 == 3, 1590, 60)  # 1,591 tokens need 100 blocks; 99 are above the watermark
    trace = Trace(name="rejections", request_id=np.arange(n), arrival_s=np.arange(n) * 0.05,
                  prompt_tokens=prompt, output_tokens=np.full(n, 80))
    got = {}
    for engine in ("python", "fast"):
        res = simulate(trace, make_policy("continuous"), SimConfig(kv_blocks=100, engine=engine))
        got[engine] = digests(res, tmp_path, engine)
        assert res.requests["rejected"].sum() == 8
        assert res.requests.filter(pl.col("rejected"))["reject_reason"].str.contains("watermark").all()
    assert got["fast"] == got["python"]


def test_vllm_v0_recomputes_a_preempted_request_past_its_budget(tmp_path):
    """vllm-v0 preempts a request whose prompt + generated tokens outgrew max_batched_tokens (100):
    it is recomputed whole, alone in an over-budget prefill-only step, and finishes (this raised
    PlanError "rejected after it started" in both engines). Same bytes on both engines."""
    trace = Trace(name="outgrown", request_id=np.arange(3), arrival_s=np.array([0.0, 0.0, 0.1]),
                  prompt_tokens=np.array([90, 90, 40]), output_tokens=np.array([200, 200, 30]))
    got = {}
    for engine in ("python", "fast"):
        res = simulate(trace, make_policy("vllm-v0", max_batched_tokens=100), SimConfig(kv_blocks=24, engine=engine))
        got[engine] = digests(res, tmp_path, engine)
        req = res.requests.sort("request_id")
        assert not req["rejected"].any() and (req["generated_tokens"] == trace.output_tokens).all()
        assert res.summary["preemptions"] > 0
        over = res.steps.filter(pl.col("prefill_tokens") > 100)  # the recompute: one request, prompt + generated
        assert over.height >= 1 and (over["batch_size"] == 1).all()
    assert got["fast"] == got["python"]
