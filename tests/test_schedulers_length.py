"""Length-aware schedulers driven by hand-written step results (no simulator).

Predictors and controllers here are small test doubles with the collaborator API
(``predict(view, generated, embedding)``, ``refresh_every``, ``target_lengths``).
"""
import pytest

from policies.contract import LengthDirective, PrefillChunk, RequestView, SchedulerView, StepResult
from policies.kv_cache import KVCache
from policies.registry import make_policy
from policies.schedulers.length_grouped import LengthGroupedBatching
from policies.schedulers.sjf import SJFBatching
from policies.schedulers.srpt import SRPTBatching
from policies.schedulers.syncintellects import SyncIntellects, SyncIntellectsContinuous


class TablePredictor:
    """Predicts a fixed total per request; progressive when ``refresh_every`` is set (then ``later`` is used)."""

    name = "table"

    def __init__(self, table, refresh_every=None, later=None):
        self.table, self.refresh_every, self.later = table, refresh_every, later or {}
        self.calls = []

    def predict(self, request, generated=0, embedding=None):
        self.calls.append((request.request_id, generated))
        if generated and request.request_id in self.later:
            return float(self.later[request.request_id])
        return float(self.table[request.request_id])


class HalvingController:
    name = "halving"

    def target_lengths(self, batch, predicted):
        return [LengthDirective(v.request_id, max(1, int(p // 2)), f"Answer in at most {int(p // 2)} tokens.")
                for v, p in zip(batch, predicted)]


def req(i, prompt=10, t=0.0, max_out=1000):
    return RequestView(request_id=i, arrival_s=t, prompt_tokens=prompt, max_output_tokens=max_out)


def view(kv, *arrivals, t=0.0):
    return SchedulerView(now_s=t, arrivals=tuple(arrivals), kv=kv)


def prefilled(*ids, t=0.0):
    return StepResult(t, t + 1, 1, len(ids), first_tokens=ids, prefilled=ids)


def decoded(n, tokens=0, finished=(), t=1.0):
    return StepResult(t, t + 1, n, tokens, finished=tuple(finished))


# -- length-grouped ------------------------------------------------------------------
def test_groups_by_predicted_length_bucket_of_the_oldest_request():
    kv = KVCache(10_000, 16)
    pred = TablePredictor({0: 30, 1: 120, 2: 45, 3: 200, 4: 10})
    pol = LengthGroupedBatching(predictor=pred, bucket_tokens=50)
    p = pol.plan(view(kv, *(req(i, t=0.1 * i) for i in range(5))))
    assert [c.request_id for c in p.prefill] == [0, 2, 4]  # bucket (0, 50]
    assert pol.batch_limit == 50 and pol.initial_predictions == {0: 30, 1: 120, 2: 45, 3: 200, 4: 10}
    assert not p.wake_on_arrival and p.prefill_pad_to == 10
    pol.observe(prefilled(0, 2, 4))
    p = pol.plan(view(kv, t=1))
    assert p.decode == (0, 2, 4) and p.max_steps == 49  # one token came with the prefill
    pol.observe(decoded(9, 27, finished=(4,)))
    p = pol.plan(view(kv, t=2))
    assert p.decode == (0, 2, 4) and p.max_steps == 40 and not p.release  # 4 is padding now
    pol.observe(decoded(35, 70, finished=(0, 2)))
    p = pol.plan(view(kv, t=3))
    assert sorted(p.release) == [0, 2, 4] and [c.request_id for c in p.prefill] == [1]  # next oldest: bucket 2
    assert pol.batch_limit == 150 and not kv.holds(0)


def test_free_rows_go_to_shorter_buckets_never_to_longer_ones():
    pred = TablePredictor({0: 120, 1: 30, 2: 140, 3: 400})
    arrivals = [req(i, t=0.1 * i) for i in range(4)]
    pol = LengthGroupedBatching(predictor=pred, bucket_tokens=50)
    p = pol.plan(view(KVCache(10_000, 16), *arrivals))
    assert [c.request_id for c in p.prefill] == [0, 2, 1] and pol.batch_limit == 150  # own bucket first
    pure = LengthGroupedBatching(predictor=pred, bucket_tokens=50, fill_shorter=False)
    assert [c.request_id for c in pure.plan(view(KVCache(10_000, 16), *arrivals)).prefill] == [0, 2]


def test_bucket_overrun_is_cut_at_the_limit_and_recomputed_with_its_tokens():
    kv = KVCache(10_000, 16)
    pred = TablePredictor({0: 30, 1: 20, 2: 400})
    pol = LengthGroupedBatching(predictor=pred, bucket_tokens=50)
    p = pol.plan(view(kv, req(0, prompt=100), req(1, prompt=40), req(2, prompt=7, t=5)))
    assert [c.request_id for c in p.prefill] == [0, 1]
    pol.observe(prefilled(0, 1))
    p = pol.plan(view(kv, t=1))
    assert p.max_steps == 49
    pol.observe(decoded(20, 40, finished=(1,)))
    pol.plan(view(kv, t=2))
    pol.observe(decoded(29, 29))            # the limit is reached, request 0 is still running
    p = pol.plan(view(kv, t=3))
    assert p.preempt == (0,) and p.release == (1,) and not kv.holds(1)
    # the prediction is spent: request 0 is in the failure pool, served by age before request 2
    assert p.prefill == (PrefillChunk(0, 150),) and kv.tokens_of(0) == 150
    assert pol.cuts[0] == 1 and pol.bucket_of(0) == -1
    assert pol.batch_limit == 1000 - 50     # failure pool: no bucket limit, only the context room
    pol.observe(prefilled(0, t=3))
    p = pol.plan(view(kv, t=4))
    assert p.decode == (0,) and p.max_steps == 949 and not p.preempt
    slack = LengthGroupedBatching(predictor=pred, bucket_tokens=50, limit_slack=0.2)
    slack.plan(view(KVCache(10_000, 16), req(0), req(1)))
    assert slack.batch_limit == 60


def test_variable_batch_size_is_bigger_for_short_buckets_and_bounded_by_kv():
    pred = TablePredictor({i: (20 if i < 200 else 480) for i in range(400)})
    kv = KVCache(100_000, 16)
    pol = LengthGroupedBatching(predictor=pred, bucket_tokens=50, batch_tokens=16 * 512, max_batch_size=128)
    p = pol.plan(view(kv, *(req(i, t=i * 1e-3) for i in range(400))))
    assert len(p.prefill) == 128            # 8192 // 50 = 163, capped at 128
    pol2 = LengthGroupedBatching(predictor=pred, bucket_tokens=50, batch_tokens=16 * 512, max_batch_size=128)
    kv2 = KVCache(100_000, 16)
    p = pol2.plan(view(kv2, *(req(200 + i, t=i * 1e-3) for i in range(200))))
    assert len(p.prefill) == 16             # 8192 // 500
    fixed = LengthGroupedBatching(predictor=pred, bucket_tokens=50, variable_batch=False, batch_size=8)
    assert len(fixed.plan(view(KVCache(100_000, 16), *(req(i) for i in range(50)))).prefill) == 8
    small = KVCache(20, 16)                 # 320 tokens: each member reserves 10 + 50 tokens = 4 blocks
    tight = LengthGroupedBatching(predictor=pred, bucket_tokens=50)
    assert len(tight.plan(view(small, *(req(i) for i in range(50)))).prefill) == 5


def test_progressive_prediction_cuts_an_overrunner_early_and_regroups_it():
    kv = KVCache(10_000, 16)
    pred = TablePredictor({0: 40, 1: 45}, refresh_every=16, later={0: 300, 1: 45})
    pol = LengthGroupedBatching(predictor=pred, bucket_tokens=50)
    pol.plan(view(kv, req(0), req(1)))
    pol.observe(prefilled(0, 1))
    p = pol.plan(view(kv, t=1))
    assert p.max_steps == 15                # capped at the re-prediction point (16 tokens)
    pol.observe(decoded(15, 30))
    p = pol.plan(view(kv, t=2))
    # request 0 now predicted 300 > 50 * 1.25: cut at 16 tokens instead of 50
    assert p.preempt == (0,) and p.decode == (1,) and not kv.holds(0)
    assert pol.lengths.predicted[0] == 300 and pol.bucket_of(0) == (300 - 16 - 1) // 50
    assert (0, 16) in pred.calls


def test_rejects_a_request_the_cache_can_never_hold():
    kv = KVCache(4, 16)  # 64 tokens; the engine caps max_output so that prompt + max_output fits
    pol = LengthGroupedBatching(predictor=TablePredictor({0: 40, 1: 10}))
    p = pol.plan(view(kv, req(0, prompt=70, max_out=1), req(1, prompt=20, t=1, max_out=44)))
    assert [r for r, _ in p.reject] == [0] and "exceeds the KV cache" in p.reject[0][1]
    assert [c.request_id for c in p.prefill] == [1] and pol.batch_limit == 44


# -- SJF -------------------------------------------------------------------------------
def test_sjf_admits_by_predicted_length_not_arrival():
    kv = KVCache(10_000, 16)
    pol = SJFBatching(predictor=TablePredictor({0: 300, 1: 10, 2: 100}), max_num_seqs=1)
    p = pol.plan(view(kv, req(0, t=0.0), req(1, t=0.1), req(2, t=0.2)))
    assert p.prefill == (PrefillChunk(1, 10),)
    pol.observe(StepResult(0, 1, 1, 1, first_tokens=(1,), prefilled=(1,), finished=(1,)))
    p = pol.plan(view(kv, t=1))
    assert p.release == (1,) and p.prefill == (PrefillChunk(2, 10),)
    assert pol.initial_predictions == {0: 300.0, 1: 10.0, 2: 100.0}


# -- SRPT --------------------------------------------------------------------------------
def _srpt_with_long_runner(**cfg):
    # 10 blocks of 16 tokens; request 0 (prompt 100, predicted 500) runs and holds 7 blocks
    kv = KVCache(10, 16)
    pol = SRPTBatching(predictor=TablePredictor({0: 500, 1: 20, 2: 20, 3: 20}), watermark=0.0, **cfg)
    pol.plan(view(kv, req(0, prompt=100)))
    pol.observe(prefilled(0))
    return kv, pol


def test_srpt_preempts_a_long_request_early_for_a_shorter_one():
    kv, pol = _srpt_with_long_runner()
    p = pol.plan(view(kv, req(1, prompt=60, t=1), t=1))  # needs 4 blocks, 3 free
    assert p.preempt == (0,) and p.prefill[0] == PrefillChunk(1, 60) and not kv.holds(0)
    assert pol.preemptions == {0: 1}
    assert pol.context[0] == 101            # prompt + its generated token, recomputed later


def test_srpt_preempts_at_most_max_preemptions_times():
    kv, pol = _srpt_with_long_runner(max_preemptions=1)
    pol.plan(view(kv, req(1, prompt=60, t=1), t=1))
    pol.observe(StepResult(1, 2, 1, 1, first_tokens=(1,), prefilled=(1,), finished=(1,)))
    p = pol.plan(view(kv, t=2))
    assert p.release == (1,) and p.prefill == (PrefillChunk(0, 101),)  # 0 comes back
    pol.observe(StepResult(2, 3, 1, 1, prefilled=(0,)))
    p = pol.plan(view(kv, req(2, prompt=60, t=3), t=3))
    assert p.preempt == () and not p.prefill and p.decode == (0,)  # its one preemption is spent


def test_srpt_never_preempts_a_request_past_its_early_fraction():
    kv, pol = _srpt_with_long_runner(early_fraction=0.5)
    pol.plan(view(kv, t=1))
    pol.observe(decoded(5, 5))              # 6 of 500 generated: still early
    assert pol.may_preempt(0)
    pol.lengths.generated[0] = 260          # past half of its prediction
    assert not pol.may_preempt(0)
    p = pol.plan(view(kv, req(1, prompt=60, t=2), t=2))
    assert p.preempt == () and not p.prefill


def test_srpt_caps_steps_at_progressive_repredictions():
    kv = KVCache(10_000, 16)
    pred = TablePredictor({0: 500}, refresh_every=32, later={0: 40})
    pol = SRPTBatching(predictor=pred)
    pol.plan(view(kv, req(0)))
    pol.observe(prefilled(0))
    p = pol.plan(view(kv, t=1))
    assert p.decode == (0,) and p.max_steps == 31
    pol.observe(decoded(31, 31))
    assert pol.lengths.generated[0] == 32
    p = pol.plan(view(kv, t=2))
    assert (0, 32) in pred.calls and pol.lengths.predicted[0] == 40 and p.max_steps == 32


# -- SyncIntellects -------------------------------------------------------------------------
def test_syncintellects_directs_new_requests_only_on_their_first_prefill():
    kv = KVCache(10_000, 16)
    pol = SyncIntellects(predictor=TablePredictor({0: 30, 1: 40}), controller=HalvingController())
    p = pol.plan(view(kv, req(0), req(1)))
    assert [(d.request_id, d.target_tokens) for d in p.directives] == [(0, 15), (1, 20)]
    pol.observe(prefilled(0, 1))
    pol.plan(view(kv, t=1))
    pol.observe(decoded(49, 49, finished=(1,)))
    p = pol.plan(view(kv, t=2))
    assert p.preempt == (0,) and p.prefill == (PrefillChunk(0, 60),) and p.directives == ()  # recompute: no directive


def test_syncintellects_continuous_directs_at_admission():
    kv = KVCache(10_000, 16)
    pol = SyncIntellectsContinuous(predictor=TablePredictor({0: 30, 1: 80}), controller=HalvingController())
    p = pol.plan(view(kv, req(0), req(1)))
    assert sorted((d.request_id, d.target_tokens) for d in p.directives) == [(0, 15), (1, 40)]
    pol.observe(prefilled(0, 1))
    assert pol.plan(view(kv, t=1)).directives == ()


@pytest.mark.parametrize("name", ["length-grouped", "sjf", "srpt"])
def test_policies_without_a_predictor_name_the_flag(name):
    with pytest.raises(ValueError, match="--predictor"):
        make_policy(name)
