"""The real engine: one model serving a trace under a policy, on a virtual clock.

The loop is the simulator's (:mod:`simulator.engine`) with the executor swapped: the
same edge checks (a prompt that leaves no room in the model context is rejected, outputs
are capped at ``max_context - prompt``), the same KV accountant sized the same way, the
same Recorder and :func:`summarize`, and the same RunResult files.

Clock. Arrivals are served on a *virtual clock* that advances by the measured time of
everything the server does (the policy's planning plus every step) and jumps over idle
gaps to the next arrival. A request therefore sees the latency it would see in real
time, but the run does not sleep through idle gaps (faster, and no sleep jitter). The
measuring clock is wall time (``perf_counter``), or on a CPU with one torch thread the
thread's CPU time (``thread_time``), which other processes on a shared machine cannot
inflate; see docs/validation.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from policies.contract import SchedulerView
from policies.kv_cache import KVCache
from simulator.engine import _policy_config, bind_truth, run_settings
from simulator.metrics import Recorder, RunResult
from simulator.serving import ArrivalFeed, PlanError, collect, edge_checks
from traces.schema import Trace

GIB = 1 << 30


@dataclass(frozen=True)
class RunnerConfig:
    """Real-engine settings. KV size: ``kv_blocks``, else ``kv_tokens`` / block, else from the device memory."""

    block_size: int = 16
    kv_blocks: int | None = None
    kv_tokens: int | None = None
    max_context: int | None = None        # default: the model's context
    length_mode: str = "forced"           # forced | natural
    max_new_tokens: int | None = None     # natural mode: cap on generated tokens
    temperature: float = 0.0              # 0: greedy
    seed: int = 0
    threads: int | None = 1               # torch CPU threads (recorded; 1 is steadiest on a shared machine)
    clock: str = "auto"                   # wall | cpu | auto (cpu on a CPU with one thread, else wall)
    step_repeats: int = 1                 # each step's compute timed k times back to back, the fastest kept
    server_time: str = "clock"            # clock: the server's own time (arrivals, planning) advances the clock;
    #                                       off: measured and reported, but the clock does not advance by it
    progress: bool = False


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def steady_allocator() -> bool:
    """Keep freed memory in the heap (glibc): no mmap/munmap and page faults for the step's large
    temporaries (logits, gathered K/V). Those made 10% of CPU steps 1.5x slower, and a profile's
    medians do not see tails that a run's sum of step times does. False where not glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def step_clock(kind: str, device: str, threads: int | None):
    """The function that measures step time: ``time.perf_counter`` (wall) or ``time.thread_time`` (cpu)."""
    if kind == "auto":
        kind = "cpu" if str(device) == "cpu" and threads == 1 else "wall"
    if kind not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall, cpu or auto, got {kind!r}")
    if kind == "cpu" and str(device) != "cpu":
        raise ValueError("the cpu clock measures host CPU time; on a GPU use --clock wall")
    return kind, (time.thread_time if kind == "cpu" else time.perf_counter)


def default_kv_blocks(lm, block_size: int, kv_tokens: int | None = None, memory_utilization: float = 0.9) -> int:
    """CPU: ``kv_tokens`` (default 32768) worth of blocks; GPU: what the device memory leaves after the weights."""
    if kv_tokens is not None:
        return max(1, int(kv_tokens) // block_size)
    if str(lm.device).startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(lm.device)).total_memory
        free = total * memory_utilization - lm.weights_bytes - 2 * GIB
        return max(1, int(free // (lm.kv_bytes_per_token * block_size)))
    return 32768 // block_size


SERVER_TIME = ("clock", "off")


def serve(trace: Trace, policy, lm, config: RunnerConfig = RunnerConfig(), *, length_response=None,
          probe_profile=None, probe_every_s: float = 0.3, interleave: dict | None = None) -> RunResult:
    """Serve ``trace`` with the real model under ``policy``; per-request and per-step tables and a summary.

    With ``probe_profile``, probe steps of that profile's grid are timed every ``probe_every_s`` of
    measured step time, off the virtual clock (:mod:`gpu_runner.probe`); the summary's ``runner.probe``
    reports the machine factor. With ``interleave`` ({sweeps, expected_steps, quick}), the profile's grid
    is timed in between the run's steps (:mod:`gpu_runner.interleave`), off the virtual clock;
    ``result.interleaver`` then fits it."""
    from gpu_runner.executor import RealExecutor

    if config.length_mode not in ("forced", "natural"):
        raise ValueError(f"length mode must be 'forced' or 'natural', got {config.length_mode!r}")
    if config.server_time not in SERVER_TIME:
        raise ValueError(f"server time must be one of {', '.join(SERVER_TIME)}, got {config.server_time!r}")
    on_clock = config.server_time == "clock"
    wall0 = time.perf_counter()
    threads = set_threads(config.threads) if lm.device == "cpu" else None
    steady = steady_allocator()
    clock_kind, clock = step_clock(config.clock, lm.device, threads)
    blocks = config.kv_blocks or default_kv_blocks(lm, config.block_size, config.kv_tokens)
    kv = KVCache(blocks, config.block_size)
    rec = Recorder(trace, blocks, config.block_size)
    n = len(trace)

    # Edge checks, exactly as the simulator makes them.
    max_context = min(int(config.max_context or lm.shape["max_context"]), lm.shape["max_context"], kv.capacity_tokens)
    forced = config.length_mode == "forced"
    natural_cap = None if forced else (config.max_new_tokens if config.max_new_tokens is not None else max_context)
    max_output, too_long, output = edge_checks(trace, rec, max_context, natural_cap)
    prompt = trace.prompt_tokens
    rng = np.random.default_rng(config.seed)
    ex = RealExecutor(lm, kv, rec, prompt, output, forced=forced, prompts=trace.prompt, seed=config.seed,
                      temperature=config.temperature, length_response=length_response, rng=rng,
                      embeddings=bool(getattr(policy, "wants_embeddings", False)
                                      or getattr(getattr(policy, "predictor", None), "wants_embeddings", False)),
                      texts=getattr(policy, "predictor", None) is not None, clock=clock, repeats=config.step_repeats)
    ex.max_context = max_context
    probe = None
    if probe_profile is not None:
        from gpu_runner.probe import Probe

        from gpu_runner.probe import profile_reference

        ref = profile_reference(probe_profile)
        if ref is None:
            raise ValueError(f"profile {probe_profile.path} has no probe section: measure it again with "
                             "`syncintellects profile`")
        probe = Probe(lm, clock, every_s=probe_every_s, seed=config.seed, cases=list(ref),
                      repeats=int(probe_profile.data["probe"].get("repeats", 3)),  # as the reference was measured
                      step_repeats=config.step_repeats)
        probe.measure()  # one probe before the first step: every run has at least one
        ex.on_step = probe.tick
    inter = None
    if interleave:
        from gpu_runner.interleave import Interleaver

        inter = Interleaver(lm, clock, sweeps=interleave["sweeps"], expected_steps=interleave["expected_steps"],
                            step_repeats=config.step_repeats, quick=interleave.get("quick", False), seed=config.seed)
        inter.warm_up()
        hooks = [h for h in (ex.on_step, lambda dt: inter.tick(dt, ex.segment_work[-1], rewarm=ex.repeat_last)) if h is not None]
        ex.on_step = hooks[0] if len(hooks) == 1 else (lambda dt: [h(dt) for h in hooks])
    if forced:
        bind_truth(policy, ex.true_output)
    controller = getattr(policy, "controller", None)
    if controller is not None and hasattr(controller, "bind_token_counter"):
        controller.bind_token_counter(lambda text: len(ex.instruction_ids(text)))  # the model's own tokenizer
    feed = ArrivalFeed(trace, max_output, too_long)
    outstanding = n - int(too_long.sum())
    own_before: list[float] = []  # the server's own time since the previous step, before each step (segment)
    pending = 0.0
    bar = tqdm(total=n, desc=f"run {getattr(policy, 'name', 'policy')}", unit="req", disable=not config.progress,
               mininterval=0.5)

    now = 0.0
    decoded = ex.text_decode_s  # decoding the answer so far for a predictor is off the clock, as it always was
    while True:
        t0, x0 = clock(), decoded[0]
        new = feed.deliver(now)
        plan = policy.plan(SchedulerView(now_s=now, arrivals=new, kv=kv, more_arrivals=feed.more))
        done = ex.apply_plan(plan, now)
        outstanding -= done
        bar.update(done)
        # the server's own time (arrivals, planning) passes on the clock too, unless server_time is "off"
        dt = clock() - t0 - (decoded[0] - x0)
        pending += dt
        if not on_clock:
            dt = 0.0
        if plan.is_idle:
            if feed.more:
                now = max(now + dt, feed.next_arrival_s)
                continue
            if outstanding > 0:
                raise PlanError(f"policy {getattr(policy, 'name', policy)!r} returned an idle plan at t={now:.3f}s "
                                f"with {outstanding} requests outstanding and no arrivals left")
            break
        now += dt
        own_before.append(pending)
        pending = 0.0
        result = ex.run(plan, now, feed.next_arrival_s)
        now = result.end_s
        t1, x0 = clock(), decoded[0]
        policy.observe(result)
        dt = clock() - t1 - (decoded[0] - x0)
        pending += dt
        if on_clock:
            now += dt
    bar.close()
    plan_s = float(sum(own_before) + pending)  # all of the server's own time, the last observe's included
    requests, steps, summary = collect(rec, policy, blocks)
    step_s = np.asarray(ex.step_s)
    summary["run_wall_s"] = time.perf_counter() - wall0
    summary["runner"] = {
        "steps": int(len(step_s)),
        "step_ms_mean": float(step_s.mean() * 1e3) if len(step_s) else None,
        "forward_share": float(ex.forward_s / step_s.sum()) if len(step_s) else None,
        "python_overhead_ms_per_step": float((step_s.sum() - ex.forward_s) / len(step_s) * 1e3) if len(step_s) else None,
        "policy_ms_per_plan": float(plan_s / max(len(rec.seg_start), 1) * 1e3),
        "virtual_clock_s": now,
        "step_repeats": config.step_repeats,
        "repeat_excess_s": ex.repeat_excess_s,  # the slower repeats' time, on no clock
        "policy_s": plan_s,
        "server_time": config.server_time,  # whether that own time advanced the run's clock
        "text_decode_s": ex.text_decode_s[0],  # answers decoded for a predictor when it read them, on no clock
    }
    if probe is not None:
        summary["runner"]["probe"] = probe.report(ref)
    cfg = {"engine": "runner", "policy": getattr(policy, "name", type(policy).__name__),
           "policy_config": _policy_config(policy), "runner": run_settings(config), "model": lm.shape, "dtype": lm.dtype,
           "device": str(lm.device), "torch_threads": threads, "steady_allocator": steady, "kv_blocks": blocks,
           "max_context": max_context,
           "trace": trace.name, "trace_notes": trace.notes, "num_requests": n,
           "clock": f"virtual, advanced by measured {clock_kind} time"}
    result = RunResult(requests=requests, steps=steps, summary=summary, config=cfg)
    result.executor = ex  # generated token ids, for tests and inspection (not written)
    result.interleaver = inter
    result.own_before = np.asarray(own_before)  # the server's own time before each step (s), on or off the clock
    return result
