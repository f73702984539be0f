"""The fast engine's bookkeeping against plain recounts: arrival feed, decode group, records."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import small_trace
from policies.contract import StepPlan
from policies.kv_cache import KVCache
from simulator.cost_model import CostModel
from simulator.executor import SimExecutor
from simulator.metrics import Recorder
from simulator.profile import load_profile
from simulator.serving import ArrivalFeed, PlanError, edge_checks, request_views
from traces.schema import make_trace


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 120)), min_size=1, max_size=40), st.integers(20, 100),
       st.lists(st.floats(0, 120), max_size=30))
def test_arrival_feed_delivers_exactly_the_eager_views(rows, context, times):
    gaps, prompts = zip(*rows)
    trace = make_trace("t", np.cumsum(gaps), prompts, [5] * len(rows))
    rec = Recorder(trace, 100, 16)
    max_output, too_long, _ = edge_checks(trace, rec, context)
    feed = ArrivalFeed(trace, max_output, too_long)
    got = []
    for now in sorted(times) + [float("inf")]:
        expect_next = min((i for i in range(feed.next, len(trace)) if not too_long[i]), default=None)
        assert feed.more == (expect_next is not None)
        assert feed.next_arrival_s == (trace.arrival_s[expect_next] if expect_next is not None else float("inf"))
        out = feed.deliver(now)
        assert all(v.arrival_s <= now for v in out)
        got.extend(out)
    assert got == [v for v, bad in zip(request_views(trace, max_output), too_long) if not bad]


def _executor(trace, blocks=500):
    kv = KVCache(blocks, 16)
    rec = Recorder(trace, blocks, 16)
    ex = SimExecutor(trace.output_tokens.copy(), CostModel(load_profile()), kv, rec, trace.prompt_tokens)
    return kv, rec, ex


def test_decode_group_writes_back_progress_on_preemption_and_flush():
    trace = make_trace("g", [0.0] * 3, [10, 20, 30], [50, 60, 70])
    kv, rec, ex = _executor(trace)
    for i in range(3):
        kv.allocate(i, int(trace.prompt_tokens[i]))
    from policies.contract import PrefillChunk
    pre = StepPlan(prefill=tuple(PrefillChunk(i, int(trace.prompt_tokens[i])) for i in range(3)))
    ex.apply_plan(pre, 0.0)
    r = ex.run(pre, 0.0, float("inf"))
    assert r.prefilled == (0, 1, 2) and list(rec.generated) == [1, 1, 1]
    rows = (0, 1, 2)
    plan = StepPlan(decode=rows, max_steps=10)
    horizon = ex.decode_horizon_s(plan)
    r = ex.run(plan, 1.0, float("inf"))
    assert r.num_steps == 10 and r.end_s - 1.0 == pytest.approx(horizon, rel=1e-15)
    assert list(rec.generated) == [1, 1, 1]  # still in the group: written back lazily
    kv.free(1)
    ex.apply_plan(StepPlan(preempt=(1,)), 2.0)  # leaving the group writes its progress back
    assert rec.generated[1] == 11 and ex.remaining[1] == 60 - 11 and ex.pending[1] == 20 + 11
    r = ex.run(StepPlan(decode=(0, 2), max_steps=1000), 2.0, float("inf"))
    assert r.finished == (0,) and r.num_steps == 50 - 11  # request 0 ran out first
    assert rec.generated[0] == 50 and ex.remaining[0] == 0
    ex.flush()
    assert rec.generated[2] == 11 + 39 and ex.remaining[2] == 70 - 50
    assert kv.tokens_of(2) == 30 + 49 and kv.sum_tokens(kv.slots((0, 2))) == 10 + 49 + 30 + 49
    with pytest.raises(PlanError, match="before its prefill is complete"):
        ex.run(StepPlan(decode=(1,)), 3.0, float("inf"))
    with pytest.raises(PlanError, match="more than once"):
        ex.run(StepPlan(decode=(2, 2)), 3.0, float("inf"))


def test_replica_copies_share_requests_and_keep_their_own_steps():
    trace = small_trace(20)
    rec = Recorder(trace, 100, 16)
    rec.segment(0.0, 0.5, 3, 2, 0, 0, 6, 4)
    copy = rec.replica_copy(200)
    copy.segment(0.0, 1.0, 1, 1, 0, 0, 1, 1)
    assert copy.generated is rec.generated and copy.kv_blocks == 200 and rec.kv_blocks == 100
    assert rec.steps_frame()["num_steps"].to_list() == [3] and copy.steps_frame()["num_steps"].to_list() == [1]
