"""The simulator against closed-form answers and its own step-by-step reference."""
import numpy as np
import pytest

from conftest import OneStepAtATime, small_trace
from policies.schedulers.continuous import ContinuousBatching
from policies.schedulers.static import StaticBatching
from simulator.cost_model import CostModel
from simulator.engine import SimConfig, simulate
from simulator.profile import load_profile
from traces.schema import make_trace

COST = CostModel(load_profile())


def test_lone_request_latency_is_prefill_plus_decode_steps():
    p, n = 300, 50
    res = simulate(make_trace("one", [1.0], [p], [n]), ContinuousBatching())
    r = res.requests.row(0, named=True)
    prefill = COST.step_s(0, 0, [(p, 0)])
    decode = sum(COST.step_s(1, p + k) for k in range(n - 1))  # KV holds p + k tokens before decode step k
    assert r["ttft_s"] == pytest.approx(prefill, rel=1e-12)
    assert r["e2e_latency_s"] == pytest.approx(prefill + decode, rel=1e-9)
    assert r["queue_s"] == 0.0 and r["generated_tokens"] == n


def test_summary_keys_do_not_depend_on_whether_requests_shared_a_batch():
    alone = simulate(make_trace("one", [1.0], [300], [50]), ContinuousBatching()).summary
    together = simulate(make_trace("two", [0.0, 0.0], [300, 300], [50, 50]), StaticBatching(batch_size=2)).summary
    assert set(alone) == set(together)
    assert alone["num_batches"] == 0 and alone["batch_padding_waste"]["mean"] is None
    assert together["num_batches"] == 1 and together["batch_padding_waste"]["mean"] == 0.0


def test_identical_requests_in_a_static_batch_finish_together():
    b, p, n = 8, 200, 40
    trace = make_trace("same", [0.0] * b, [p] * b, [n] * b)
    res = simulate(trace, StaticBatching(batch_size=b))
    fin = res.requests["finish_s"].to_numpy()
    assert np.all(fin == fin[0])
    expected = COST.step_s(0, 0, [(p, 0)] * b) + sum(COST.step_s(b, b * (p + k)) for k in range(n - 1))
    assert fin[0] == pytest.approx(expected, rel=1e-9)


def test_static_batch_returns_responses_when_the_batch_ends():
    trace = make_trace("mixed", [0.0] * 4, [100] * 4, [5, 50, 10, 20])
    res = simulate(trace, StaticBatching(batch_size=4))
    df = res.requests
    assert df["finish_s"].n_unique() == 1
    assert (df["last_token_s"] <= df["finish_s"]).all()
    assert df.filter(df["output_tokens"] == 5)["last_token_s"][0] < df["finish_s"][0]
    assert res.summary["padding_waste"] > 0.3  # three rows idle while the 50-token answer finishes


@pytest.mark.parametrize("policy", [lambda: ContinuousBatching(), lambda: StaticBatching(batch_size=8)])
def test_far_below_capacity_there_is_no_queueing(policy):
    trace = make_trace("sparse", np.arange(20) * 60.0, [500] * 20, [100] * 20)
    res = simulate(trace, policy())
    assert res.requests["queue_s"].max() == 0.0


@pytest.mark.parametrize("policy", [lambda: ContinuousBatching(), lambda: StaticBatching(batch_size=8)])
def test_above_capacity_the_queue_grows_without_bound(policy):
    n = 600
    trace = make_trace("flood", np.arange(n) * 0.02, [800] * n, [200] * n)  # 50 req/s, far above capacity
    q = simulate(trace, policy()).requests["queue_s"].to_numpy()
    quarters = [q[i * n // 4:(i + 1) * n // 4].mean() for i in range(4)]
    assert all(b > a for a, b in zip(quarters, quarters[1:]))
    assert np.polyfit(np.arange(n), q, 1)[0] > 0


@pytest.mark.parametrize("make", [lambda: ContinuousBatching(watermark=0.0), lambda: StaticBatching(batch_size=6)])
def test_multi_step_segments_equal_one_step_at_a_time(make):
    trace = small_trace(n=60, rate=3.0, seed=3)
    cfg = SimConfig(kv_blocks=120, block_size=16)  # tight: forces preemption under continuous batching
    fast = simulate(trace, make(), cfg)
    slow = simulate(trace, OneStepAtATime(make()), cfg)
    for col in ("admitted_s", "first_token_s", "last_token_s", "finish_s"):
        np.testing.assert_allclose(fast.requests[col].to_numpy(), slow.requests[col].to_numpy(), rtol=1e-9)
    assert fast.requests["preemptions"].to_list() == slow.requests["preemptions"].to_list()
    assert fast.summary["num_steps"] == slow.summary["num_steps"]
    assert fast.steps.height < slow.steps.height


def test_preemption_happens_under_memory_pressure_and_tokens_still_add_up():
    trace = small_trace(n=80, rate=20.0, seed=1, prompt=(50, 300), output=(50, 300))
    res = simulate(trace, ContinuousBatching(watermark=0.0), SimConfig(kv_blocks=60, block_size=16))
    assert res.summary["preemptions"] > 0
    fin = res.requests.filter(~res.requests["rejected"])
    assert (fin["generated_tokens"] == fin["output_tokens"]).all()


def test_context_overflow_rejects_or_caps_with_reasons():
    trace = make_trace("long", [0.0, 0.1, 0.2], [5000, 4000, 100], [10, 500, 10])
    res = simulate(trace, ContinuousBatching())
    df = res.requests
    assert df["rejected"].to_list() == [True, False, False]
    assert "model context of 4096" in df["reject_reason"][0]
    assert df["output_capped"].to_list() == [False, True, False] and df["generated_tokens"][1] == 96
    assert res.summary["num_rejected"] == 1 and res.summary["num_finished"] == 2


def test_length_instructions_add_prompt_tokens_in_the_simulator():
    from policies.control import default_length_response, make_controller
    from policies.control.controller import estimate_tokens
    from policies.schedulers.syncintellects import SyncIntellects

    from conftest import SplitPredictor

    n = 8
    trace = make_trace("ctl", [0.0] * n, [100] * n, [40] * n)
    res = simulate(trace, SyncIntellects(predictor=SplitPredictor(), controller=make_controller(), batch_size=n),
                   length_response=default_length_response())
    df = res.requests
    ctl = df.filter(df["target_tokens"] > 0)
    assert ctl.height == n // 2
    assert ctl["instruction_tokens"].to_list() == [estimate_tokens(t) for t in ctl["instruction"].to_list()]
    # one padded prefill of the batch: every prompt padded to the longest prompt + instruction
    first = res.steps.row(0, named=True)
    assert first["prefill_tokens"] == n * (100 + max(ctl["instruction_tokens"]))


@pytest.mark.parametrize("blocks", [200, 300])
def test_a_preempted_request_that_grew_into_the_watermark_is_readmitted_not_rejected(blocks):
    """A long request preempted near a full cache comes back with prompt + generated tokens, which may
    exceed the cache minus the admission watermark: it must be re-admitted, never rejected mid-answer."""
    cap = blocks * 16
    for prompt in range(cap - 80, cap - 10, 7):
        trace = make_trace("near-full", [0.0, 0.001], [1, prompt], [40, cap - prompt])
        res = simulate(trace, ContinuousBatching(), SimConfig(kv_blocks=blocks, max_context=100_000))
        df = res.requests
        assert res.summary["num_finished"] + res.summary["num_rejected"] == 2
        # only a prompt that never fit beside the watermark is refused, and only before it started
        assert df.filter(df["rejected"])["admitted_s"].is_nan().all()
