"""Baseline policies driven by hand-written step results: no simulator, as vLLM's scheduler tests do."""
from policies.contract import PrefillChunk, RequestView, SchedulerView, StepResult
from policies.kv_cache import KVCache
from policies.schedulers.continuous import ContinuousBatching
from policies.schedulers.static import StaticBatching


def req(i, prompt=10, t=0.0, max_out=100):
    return RequestView(request_id=i, arrival_s=t, prompt_tokens=prompt, max_output_tokens=max_out)


def view(kv, *arrivals, t=0.0):
    return SchedulerView(now_s=t, arrivals=tuple(arrivals), kv=kv)


def test_static_batches_fcfs_pads_and_releases_together():
    kv = KVCache(1000, 16)
    pol = StaticBatching(batch_size=2)
    p = pol.plan(view(kv, req(0, 10), req(1, 30), req(2, 5)))
    assert [c.request_id for c in p.prefill] == [0, 1] and p.prefill_pad_to == 30
    assert not p.wake_on_arrival and kv.tokens_of(0) == 10 and kv.tokens_of(1) == 30 and not kv.holds(2)
    pol.observe(StepResult(0, 1, 1, 2, first_tokens=(0, 1), prefilled=(0, 1)))
    p = pol.plan(view(kv, t=1))
    assert p.decode == (0, 1) and not p.prefill and p.max_steps > 1
    pol.observe(StepResult(1, 2, 5, 10, finished=(0,)))
    p = pol.plan(view(kv, req(3, 7, t=2), t=2))
    assert p.decode == (0, 1) and p.release == ()  # finished row 0 stays as padding; nobody joins mid-batch
    pol.observe(StepResult(2, 3, 3, 3, finished=(1,)))
    p = pol.plan(view(kv, t=3))
    assert p.release == (0, 1) and [c.request_id for c in p.prefill] == [2, 3]
    assert not kv.holds(0) and not kv.holds(1) and kv.holds(2)


def test_static_rejects_what_can_never_fit():
    kv = KVCache(4, 16)  # 64 tokens
    pol = StaticBatching(batch_size=4)
    p = pol.plan(view(kv, req(0, prompt=50, max_out=50), req(1, prompt=10, max_out=20)))
    assert [r for r, _ in p.reject] == [0] and "exceeds the KV cache" in p.reject[0][1]
    assert [c.request_id for c in p.prefill] == [1]


def test_continuous_admits_fcfs_within_token_budget_and_chunks():
    kv = KVCache(1000, 16)
    pol = ContinuousBatching(max_batched_tokens=100, max_num_seqs=8)
    p = pol.plan(view(kv, req(0, 60), req(1, 70)))
    assert p.prefill == (PrefillChunk(0, 60), PrefillChunk(1, 40)) and p.max_steps == 1
    pol.observe(StepResult(0, 1, 1, 1, first_tokens=(0,), prefilled=(0,)))
    p = pol.plan(view(kv, t=1))
    assert p.decode == (0,) and p.prefill == (PrefillChunk(1, 30),)  # the chunked prompt continues first
    pol.observe(StepResult(1, 2, 1, 2, first_tokens=(1,), prefilled=(1,)))
    p = pol.plan(view(kv, t=2))
    assert p.decode == (0, 1) and not p.prefill and p.wake_on_arrival and p.max_steps > 1


def test_continuous_releases_finished_and_frees_kv():
    kv = KVCache(100, 16)
    pol = ContinuousBatching()
    pol.plan(view(kv, req(0, 20), req(1, 20)))
    pol.observe(StepResult(0, 1, 1, 2, first_tokens=(0, 1), prefilled=(0, 1)))
    pol.plan(view(kv, t=1))
    pol.observe(StepResult(1, 2, 4, 8, finished=(1,)))
    p = pol.plan(view(kv, t=2))
    assert p.release == (1,) and p.decode == (0,) and not kv.holds(1)


def test_continuous_preempts_newest_and_recomputes_prompt_plus_generated():
    kv = KVCache(4, 4)  # 16 tokens
    pol = ContinuousBatching(watermark=0.0)
    p = pol.plan(view(kv, req(0, 4), req(1, 4)))
    assert len(p.prefill) == 2 and kv.used_blocks == 2
    pol.observe(StepResult(0, 1, 1, 2, first_tokens=(0, 1), prefilled=(0, 1)))
    p = pol.plan(view(kv, t=1))
    # each request holds 4 tokens (1 block); 2 blocks free: both rows can grow 4 tokens each
    assert p.decode == (0, 1) and p.max_steps == 4
    kv.append(kv.slots([0, 1]), 4)  # the executor's side of 4 decode steps
    pol.observe(StepResult(1, 2, 4, 8))
    p = pol.plan(view(kv, t=2))
    assert p.preempt == (1,) and p.decode == (0,) and not kv.holds(1)
    # request 1 had 4 prompt + 5 generated tokens: all 9 are recomputed when it comes back
    assert pol.context[1] == 9


def test_continuous_rejects_context_larger_than_cache():
    kv = KVCache(4, 4)
    pol = ContinuousBatching(watermark=0.0)
    p = pol.plan(view(kv, req(0, 40), req(1, 4)))
    assert [r for r, _ in p.reject] == [0] and p.prefill == (PrefillChunk(1, 4),)
