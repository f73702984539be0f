"""Engines' schedulers: vllm-v0 (prefill-only steps, decodes paused) and sarathi (stall-free,
chunked under a token budget), on real simulations and hand-built views."""
import pytest

from conftest import OneStepAtATime, small_trace
from policies.contract import RequestView, SchedulerView
from policies.kv_cache import KVCache
from policies.registry import make_policy
from simulator.engine import SimConfig, simulate


class PlanSpy(OneStepAtATime):
    """Records every plan with the decode rows that were running when it was made."""

    def __init__(self, inner):
        super().__init__(inner)
        self.plans = []

    def plan(self, view):
        running = tuple(self.inner._decode)
        plan = self.inner.plan(view)
        self.plans.append((plan, running, len(self.inner.running)))
        return plan


def run(policy_name, trace, **params):
    spy = PlanSpy(make_policy(policy_name, **params))
    res = simulate(trace, spy, SimConfig(seed=0))
    return spy, res


@pytest.fixture(scope="module")
def busy_trace():
    return small_trace(n=300, rate=6.0, seed=3, prompt=(50, 2000), output=(5, 300))


def test_vllm_v0_never_mixes_prefill_into_a_decode_step(busy_trace):
    spy, res = run("vllm-v0", busy_trace)
    prefill_plans = [(p, running) for p, running, _ in spy.plans if p.prefill]
    assert prefill_plans and all(not p.decode for p, _ in prefill_plans)
    # decodes really pause: some prefill steps were taken while requests were decoding
    assert sum(1 for _, running in prefill_plans if running) > 10
    assert res.summary["num_finished"] == len(busy_trace)
    # prefills are whole prompts (no chunking) within the token budget
    for p, _ in prefill_plans:
        assert sum(c.num_tokens for c in p.prefill) <= 4096


def test_sarathi_never_stalls_decodes_and_keeps_the_budget(busy_trace):
    spy, res = run("sarathi", busy_trace)
    mixed = 0
    for p, running, _ in spy.plans:
        if p.prefill:
            kept = set(p.decode) | set(p.preempt) | set(p.release)
            assert set(running) <= kept  # every running decode row is in the step (or left it)
            assert len(p.decode) + sum(c.num_tokens for c in p.prefill) <= 512
            mixed += bool(p.decode)
    assert mixed > 10
    assert res.summary["num_finished"] == len(busy_trace)


def test_pausing_decodes_costs_tpot_and_chunking_costs_ttft(busy_trace):
    tpot = {n: run(n, busy_trace)[1].summary for n in ("vllm-v0", "continuous", "sarathi")}
    # vLLM v0 stalls decodes for every prefill; sarathi's small chunks delay first tokens
    assert tpot["vllm-v0"]["tpot_s"]["mean"] > tpot["continuous"]["tpot_s"]["mean"]
    assert tpot["sarathi"]["ttft_s"]["mean"] > tpot["continuous"]["ttft_s"]["mean"]


def test_max_num_seqs_param_is_respected(busy_trace):
    for name in ("vllm-v0", "sarathi"):
        spy, res = run(name, busy_trace, max_num_seqs=4)
        assert max(n for *_, n in spy.plans) <= 4
        assert res.summary["num_finished"] == len(busy_trace)


def test_vllm_v0_turns_away_a_prompt_larger_than_its_budget():
    pol = make_policy("vllm-v0", max_batched_tokens=100)
    kv = KVCache(1000, 16)
    views = (RequestView(0, 0.0, 150, 50), RequestView(1, 0.0, 60, 50))
    plan = pol.plan(SchedulerView(now_s=0.0, arrivals=views, kv=kv, more_arrivals=False))
    assert [r for r, _ in plan.reject] == [0] and "does not chunk" in plan.reject[0][1]
    assert [(c.request_id, c.num_tokens) for c in plan.prefill] == [(1, 60)] and not plan.decode


def test_engines_policies_run_from_the_cli(tmp_path):
    from syncintellects.cli import main

    for name in ("vllm-v0", "sarathi"):
        assert main(["simulate", "--trace", "azure-conv", "--num-requests", "40", "--policy", name, "--param",
                     "max_num_seqs=8", "--out", str(tmp_path / name), "--quiet"]) == 0
