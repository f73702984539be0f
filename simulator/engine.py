"""The SimPy engine: one GPU replica serving a trace under a policy.

The loop is the contract's three lines (plan, run, observe) inside one SimPy process;
the SimPy clock advances by each executed segment's simulated duration, or to the next
arrival when the replica is idle. The event kernel knows nothing about KV caches or
metrics: those live in the executor, the accountant and the recorder.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import simpy
from tqdm import tqdm

from policies.contract import Policy, RequestView, SchedulerView
from policies.kv_cache import KVCache
from simulator.cost_model import CostModel
from simulator.executor import PlanError, SimExecutor
from simulator.metrics import Recorder, RunResult, summarize
from simulator.profile import Profile, load_profile
from traces.schema import Trace


@dataclass(frozen=True)
class SimConfig:
    """Engine settings. ``kv_blocks`` overrides the count derived from the profile's memory."""

    profile: str = "a100-llama-2-7b-fp16"
    block_size: int = 16
    gpu_memory_utilization: float | None = None
    kv_blocks: int | None = None
    max_context: int | None = None  # default: the profile's model context
    seed: int = 0
    progress: bool = False
    extra: dict = field(default_factory=dict)


def request_views(trace: Trace, max_output: np.ndarray) -> list[RequestView]:
    prompts = trace.prompt
    slo = trace.slo_class
    return [
        RequestView(request_id=i, arrival_s=float(a), prompt_tokens=int(p), max_output_tokens=int(m),
                    prompt=None if prompts is None else prompts[i], slo_class=None if slo is None else slo[i])
        for i, (a, p, m) in enumerate(zip(trace.arrival_s.tolist(), trace.prompt_tokens.tolist(), max_output.tolist()))
    ]


def simulate(trace: Trace, policy: Policy, config: SimConfig = SimConfig(), *, profile: Profile | None = None,
             length_response=None) -> RunResult:
    """Simulate ``trace`` under ``policy``; returns per-request and per-step tables and a summary."""
    wall0 = time.perf_counter()
    profile = profile or load_profile(config.profile)
    cost = CostModel(profile)
    blocks = config.kv_blocks or profile.kv_blocks(config.block_size, config.gpu_memory_utilization)
    kv = KVCache(blocks, config.block_size)
    rec = Recorder(trace, blocks, config.block_size)
    n = len(trace)

    # Edge checks a real server makes before queueing: context length and cache size.
    max_context = min(int(config.max_context or profile.model["max_context"]), kv.capacity_tokens)
    prompt = trace.prompt_tokens
    max_output = np.maximum(max_context - prompt, 0)
    too_long = prompt >= max_context
    output = np.minimum(trace.output_tokens, np.maximum(max_output, 1))
    rec.output_capped[:] = (trace.output_tokens > max_output) & ~too_long
    for i in np.flatnonzero(too_long).tolist():
        rec.reject_reason[i] = (f"prompt of {int(prompt[i])} tokens leaves no room for output in the model "
                                f"context of {max_context} tokens")
    rng = np.random.default_rng(config.seed)
    ex = SimExecutor(output, cost, kv, rec, prompt, length_response=length_response, rng=rng)
    bind_truth(policy, ex.true_output)
    views = request_views(trace, max_output)
    arrivals = trace.arrival_s
    env = simpy.Environment()
    state = {"outstanding": n - int(too_long.sum())}
    bar = tqdm(total=n, desc=f"simulate {getattr(policy, 'name', 'policy')}", unit="req", disable=not config.progress,
               mininterval=0.5)

    def deliver(now: float, i: int) -> tuple[int, tuple[RequestView, ...]]:
        j = int(np.searchsorted(arrivals, now, side="right"))
        if j <= i:
            return i, ()
        return j, tuple(views[k] for k in range(i, j) if not too_long[k])

    def finish_release(plan, now: float) -> None:
        for r in plan.release:
            if ex.remaining[r] != 0 or ex.pending[r] != 0:
                raise PlanError(f"request {r} released at t={now:.6f}s before it finished generating")
            if rec.released[r]:
                raise PlanError(f"request {r} released twice")
            rec.released[r] = True
            rec.finish_s[r] = now
        for r, why in plan.reject:
            if ex.started[r]:
                raise PlanError(f"request {r} rejected after it started")
            rec.reject_reason[r] = why
        done = len(plan.release) + len(plan.reject)
        state["outstanding"] -= done
        bar.update(done)

    def loop():
        i = 0
        while True:
            now = env.now
            i, new = deliver(now, i)
            plan = policy.plan(SchedulerView(now_s=now, arrivals=new, kv=kv, more_arrivals=i < n))
            finish_release(plan, now)
            for r in plan.preempt:
                ex.preempt(r)
            if plan.directives:
                ex.apply_directives(plan)
            if plan.is_idle:
                if i < n:
                    yield env.timeout(float(arrivals[i]) - now)
                    continue
                if state["outstanding"] > 0:
                    raise PlanError(f"policy {getattr(policy, 'name', policy)!r} returned an idle plan at t={now:.3f}s "
                                    f"with {state['outstanding']} requests outstanding and no arrivals left")
                return
            nxt = float(arrivals[i]) if i < n else float("inf")
            result = ex.run(plan, now, nxt)
            yield env.timeout(result.end_s - now)
            policy.observe(result)

    env.process(loop())
    env.run()
    bar.close()
    # Policies that predict lengths expose their first prediction per request (for error metrics).
    for r, v in getattr(policy, "initial_predictions", {}).items():
        rec.predicted_tokens[r] = v
    requests = rec.requests_frame()
    steps = rec.steps_frame()
    summary = summarize(requests, steps, blocks)
    summary["sim_wall_s"] = time.perf_counter() - wall0
    cfg = {"engine": "simulator", "policy": getattr(policy, "name", type(policy).__name__),
           "policy_config": _policy_config(policy), "sim": asdict(config), "profile": profile.name,
           "profile_path": profile.path, "kv_blocks": blocks, "trace": trace.name, "trace_notes": trace.notes,
           "num_requests": n}
    return RunResult(requests=requests, steps=steps, summary=summary, config=cfg)


def bind_truth(policy, true_output) -> None:
    """Give simulated predictors (models of a real predictor's error) the true output lengths.

    Only a policy's ``predictor`` may ask (by having ``bind_truth``); the policy itself
    never sees the truth. ``true_output(request_id)`` is the length after any length control.
    """
    predictor = getattr(policy, "predictor", None)
    if predictor is not None and hasattr(predictor, "bind_truth"):
        predictor.bind_truth(true_output)


def _policy_config(policy) -> dict:
    cfg = getattr(policy, "config", None)
    if cfg is None:
        return {}
    try:
        return asdict(cfg)
    except TypeError:
        return dict(cfg) if isinstance(cfg, dict) else {"repr": repr(cfg)}
