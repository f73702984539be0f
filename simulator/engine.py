"""The SimPy engine: one GPU replica serving a trace under a policy.

The loop is the contract's three lines (plan, run, observe) inside one SimPy process;
the SimPy clock advances by each executed segment's simulated duration, or to the next
arrival when the replica is idle. The event kernel knows nothing about KV caches or
metrics: those live in the executor, the accountant and the recorder.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import asdict, dataclass

import numpy as np
import simpy
from tqdm import tqdm

from policies.contract import Policy, SchedulerView
from policies.kv_cache import KVCache
from simulator.cost_model import CostModel
from simulator.executor import SimExecutor
from simulator.fast_engine import FAST_POLICIES, Shared, run_single, supports
from simulator.metrics import Recorder, RunResult, summarize
from simulator.profile import Profile, load_profile
from simulator.serving import ArrivalFeed, PlanError, edge_checks
from simulator.step_records import Spill, StepRecords
from traces.schema import Trace


@dataclass(frozen=True)
class SimConfig:
    """Engine settings. ``kv_blocks`` overrides the count derived from the profile's memory."""

    profile: str = "a100-llama-2-7b"
    block_size: int = 16
    gpu_memory_utilization: float | None = None
    kv_blocks: int | None = None
    max_context: int | None = None  # default: the profile's model context
    seed: int = 0
    progress: bool = False
    engine: str = "auto"  # auto | fast | python (simulator/fast_continuous.py); not a run setting: same bytes


def simulate(trace: Trace, policy: Policy, config: SimConfig = SimConfig(), *, profile: Profile | None = None,
             length_response=None, steps_dir: str | Path | None = None) -> RunResult:
    """Simulate ``trace`` under ``policy``; returns per-request and per-step tables and a summary.

    ``steps_dir``: a scratch directory (e.g. under the run's output directory) where a long run
    streams its per-step records in part files rather than keeping them in memory
    (:mod:`simulator.step_records`); removed once ``RunResult.write`` has assembled steps.parquet."""
    wall0 = time.perf_counter()
    profile = profile or load_profile(config.profile)
    cost = CostModel(profile)
    blocks = config.kv_blocks or profile.kv_blocks(config.block_size, config.gpu_memory_utilization)
    kv = KVCache(blocks, config.block_size)
    rec = Recorder(trace, blocks, config.block_size)
    if steps_dir is not None:
        rec.spill = Spill(Path(steps_dir))
    n = len(trace)

    # Edge checks a real server makes before queueing: context length and cache size.
    max_context = min(int(config.max_context or profile.model["max_context"]), kv.capacity_tokens)
    max_output, too_long, output = edge_checks(trace, rec, max_context)
    ex = SimExecutor(output, cost, kv, rec, trace.prompt_tokens, length_response=length_response,
                     rng=np.random.default_rng(config.seed))
    ex.max_context = max_context
    bind_truth(policy, ex.true_output)
    bar = tqdm(total=n, desc=f"simulate {getattr(policy, 'name', 'policy')}", unit="req", disable=not config.progress,
               mininterval=0.5)
    if use_fast(policy, config):  # the fused loop: the same decisions, no plan/result objects, no SimPy
        sh = Shared(rec, output)
        run_single(policy, blocks, config.block_size, cost, sh, np.flatnonzero(~too_long).tolist(),
                   bar if config.progress else None)
        sh.write_back()
    else:
        _run_python(trace, policy, ex, kv, max_output, too_long, bar)
    bar.close()
    rec.record_predictions(policy)
    requests = rec.requests_frame()
    piece, totals = rec.step_piece()
    summary = summarize(requests, totals, blocks)
    steps = StepRecords([piece], [totals], replica_column=False, spill_dirs=[Path(steps_dir)] if steps_dir else [])
    summary["sim_wall_s"] = time.perf_counter() - wall0
    cfg = {"engine": "simulator", "policy": getattr(policy, "name", type(policy).__name__),
           "policy_config": _policy_config(policy), "sim": run_settings(config), "profile": profile.name,
           "profile_path": profile.path, "kv_blocks": blocks, "trace": trace.name, "trace_notes": trace.notes,
           "num_requests": n}
    return RunResult(requests=requests, steps=steps, summary=summary, config=cfg)


def use_fast(policy, config) -> bool:
    """Whether to run the fast engine: ``auto`` when it reproduces the policy, ``fast`` (refused for a
    policy it does not reproduce), ``python`` never."""
    if config.engine not in ("auto", "fast", "python"):
        raise ValueError(f"--engine: {config.engine!r} is not one of auto, fast, python")
    if config.engine == "python":
        return False
    ok = supports(policy)
    if config.engine == "fast" and not ok:
        raise ValueError(f"--engine fast runs only the policies {', '.join(c.name for c in FAST_POLICIES)} "
                         f"(built in, unmodified); {getattr(policy, 'name', policy)!r} needs --engine python or auto")
    return ok


def _run_python(trace, policy, ex, kv, max_output, too_long, bar) -> None:
    """The contract's loop in one SimPy process: plan, apply, run, observe."""
    n = len(trace)
    feed = ArrivalFeed(trace, max_output, too_long)
    env = simpy.Environment()

    def loop():
        outstanding = n - int(too_long.sum())
        plan_of, apply_plan, run, observe, deliver = policy.plan, ex.apply_plan, ex.run, policy.observe, feed.deliver
        while True:
            now = env.now
            new = deliver(now)
            plan = plan_of(SchedulerView(now, new, kv, feed.more))
            done = apply_plan(plan, now)
            if done:
                outstanding -= done
                bar.update(done)
            if plan.is_idle:
                if feed.more:
                    yield env.timeout(feed.next_arrival_s - now)
                    continue
                if outstanding > 0:
                    raise PlanError(f"policy {getattr(policy, 'name', policy)!r} returned an idle plan at t={now:.3f}s "
                                    f"with {outstanding} requests outstanding and no arrivals left")
                return
            result = run(plan, now, feed.next_arrival_s)
            yield env.timeout(result.end_s - now)
            observe(result)

    env.process(loop())
    env.run()
    ex.flush()


def run_settings(config) -> dict:
    """A config as written to config.json: display-only settings (the progress bar) left out,
    so the same run gives the same file whether or not it was quiet."""
    d = asdict(config)
    d.pop("progress", None)
    d.pop("engine", None)  # both engines give the same bytes
    return d


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
