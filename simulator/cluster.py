"""A cluster of replicas behind a router: N copies of the single-replica loop on one clock.

Each replica has its own policy instance, KV cache, cost model (profile) and executor;
the router sends each request, at its arrival, to one replica. The design is an exact
discrete-event loop (no SimPy process per replica, so no per-request scheduling
overhead): one heap of replica wake-up times plus the arrival stream, processed in time
order, with arrivals at time t routed before any replica plans at t (as the single engine
delivers every request that arrived at or before the planning time).

Every replica runs the single engine's loop (deliver, plan, apply, run, observe) with the
same clock arithmetic (``now + (t - now)``, as ``env.timeout`` does), so one replica gives
byte-for-byte the single engine's results. The one difference: a decode-only plan that
would stop at the next arrival (``wake_on_arrival``) does not know yet whether that
arrival will be routed to its replica. It is deferred: the replica sleeps until the end of
the plan's step limit (:meth:`SimExecutor.decode_horizon_s`), and if a request is routed to
it earlier the run is executed then, stopping at that request's arrival. While deferred, a
replica's outstanding requests cannot change (nobody finishes before the run ends), so
the router's view at any arrival is exact.

Requests rejected at the edge (a prompt leaving no room in the smallest replica context)
are never routed. Per-request arrays (the records and the truth) are shared by all
replicas: each request lives on one replica only. Per-step records are per replica.
"""
from __future__ import annotations

import heapq
import time
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from policies.contract import RequestView, SchedulerView
from policies.kv_cache import KVCache
from policies.routers import ReplicaLoads
from policies.routers.round_robin import RoundRobin
from simulator.cost_model import CostModel
from simulator.engine import SimConfig, _policy_config, bind_truth, run_settings, use_fast
from simulator.executor import SimExecutor
from simulator.fast_continuous import replica as fast_replica
from simulator.fast_engine import Shared, run_single
from simulator.metrics import RunResult, Recorder, summarize
from simulator.profile import Profile, load_profile
from simulator.serving import PlanError, edge_checks
from simulator.step_records import Spill, StepRecords, StepTotals
from traces.schema import Trace

INF = float("inf")
AT, IDLE, DECODE = 0, 1, 2  # what a replica waits for: a time, a routed request, either (deferred decode)


class Inbox:
    """The requests routed to one replica, in arrival order; ``deliver`` hands out those that have arrived."""

    __slots__ = ("views", "next", "rids")

    def __init__(self):
        self.views: list = []
        self.next = 0
        self.rids: list[int] = []  # the fast engine's inbox: request ids, in arrival order

    @property
    def pending(self) -> bool:
        return self.next < len(self.views)

    @property
    def next_arrival_s(self) -> float:
        return self.views[self.next].arrival_s

    def deliver(self, now: float) -> tuple:
        i = j = self.next
        views = self.views
        while j < len(views) and views[j].arrival_s <= now:
            j += 1
        if j == i:
            return ()
        self.next = j
        return tuple(views[i:j])


def simulate_cluster(trace: Trace, policies: list, router, config: SimConfig = SimConfig(), *,
                     profiles: list[Profile] | None = None, length_response=None, predictor=None,
                     steps_dir: str | Path | None = None) -> RunResult:
    """Simulate ``trace`` on ``len(policies)`` replicas (policy k on replica k) behind ``router``.

    ``profiles``: one per replica (default: ``config.profile`` for all). ``predictor``: the
    router's length predictor (needed by routers with ``needs_prediction``). ``steps_dir``: where
    a long run streams its per-step records (as in :func:`simulator.engine.simulate`)."""
    wall0 = time.perf_counter()
    n_rep = len(policies)
    if n_rep < 1:
        raise ValueError("--replicas must be >= 1")
    profiles = profiles or [load_profile(config.profile)] * n_rep
    if len(profiles) != n_rep:
        raise ValueError(f"--replica-profiles: {len(profiles)} profiles for {n_rep} replicas")
    blocks = [config.kv_blocks or p.kv_blocks(config.block_size, config.gpu_memory_utilization) for p in profiles]
    kvs = [KVCache(b, config.block_size) for b in blocks]
    shared = Recorder(trace, blocks[0], config.block_size)
    max_context = min(min(int(config.max_context or p.model["max_context"]), kv.capacity_tokens)
                      for p, kv in zip(profiles, kvs))
    max_output, too_long, output = edge_checks(trace, shared, max_context)
    recs, exs = [], []
    fast = all(use_fast(p, config) for p in policies)
    for k in range(n_rep):
        rec = shared.replica_copy(blocks[k])  # shares the per-request arrays; its own per-step columns
        if steps_dir is not None:
            rec.spill = Spill(Path(steps_dir) / f"r{k:04d}")
        if fast:  # the truth is output: what the executors would set
            shared.output_tokens[:] = output
            recs.append(rec)
            continue
        ex = SimExecutor(output, CostModel(profiles[k]), kvs[k], rec, trace.prompt_tokens,
                         length_response=length_response,
                         rng=np.random.default_rng(config.seed if k == 0 else [config.seed, k]))
        if exs:  # one request lives on one replica: its truth-side state is shared, not copied
            ex.prompt_tokens, ex.pending, ex.remaining, ex.started = (exs[0].prompt_tokens, exs[0].pending,
                                                                      exs[0].remaining, exs[0].started)
        ex.max_context = max_context
        bind_truth(policies[k], ex.true_output)
        recs.append(rec)
        exs.append(ex)
    if getattr(router, "needs_prediction", False):
        if predictor is None:
            raise ValueError(f"router {router.name!r} needs a length predictor")
        if hasattr(predictor, "bind_truth"):
            predictor.bind_truth(exs[0].true_output if exs else lambda r: int(shared.output_tokens[r]))

    n = len(trace)
    order = np.flatnonzero(~too_long).tolist()
    arrival = trace.arrival_s.tolist()
    prompt, max_out, texts, slo = trace.prompt_tokens.tolist(), max_output.tolist(), trace.prompt, trace.slo_class
    replica_of = np.full(n, -1, dtype=np.int64)
    work_of = np.zeros(n, dtype=np.int64)
    loads = ReplicaLoads(requests=[0] * n_rep, work=[0] * n_rep)
    inboxes = [Inbox() for _ in range(n_rep)]
    state = {"next": 0}  # index into order of the next request to route
    bar = tqdm(total=n, desc=f"simulate {n_rep} replicas", unit="req", disable=not config.progress, mininterval=0.5)
    bar.update(int(too_long.sum()))

    def more() -> bool:
        return state["next"] < len(order)

    def next_global() -> float:
        return arrival[order[state["next"]]] if more() else INF

    def replica(k: int):
        policy, ex, kv, inbox = policies[k], exs[k], kvs[k], inboxes[k]
        now = 0.0
        while True:
            new = inbox.deliver(now)
            plan = policy.plan(SchedulerView(now_s=now, arrivals=new, kv=kv, more_arrivals=inbox.pending or more()))
            done = ex.apply_plan(plan, now)
            if done:
                for r in plan.release:
                    loads.requests[k] -= 1
                    loads.work[k] -= int(work_of[r])
                for r, _ in plan.reject:
                    loads.requests[k] -= 1
                    loads.work[k] -= int(work_of[r])
                bar.update(done)
            if plan.is_idle:
                if inbox.pending:
                    now = yield AT, now + (inbox.next_arrival_s - now)
                elif more():
                    t = yield IDLE, None
                    now = now + (t - now)
                elif loads.requests[k] > 0:
                    raise PlanError(f"policy {getattr(policy, 'name', policy)!r} on replica {k} returned an idle plan "
                                    f"at t={now:.3f}s with {loads.requests[k]} requests outstanding and no arrivals left")
                else:
                    return
                continue
            if plan.prefill or not plan.wake_on_arrival:
                result = ex.run(plan, now, inbox.next_arrival_s if inbox.pending else next_global())
            elif inbox.pending:
                result = ex.run(plan, now, inbox.next_arrival_s)
            else:
                t = yield DECODE, now + ex.decode_horizon_s(plan)
                result = ex.run(plan, now, t)
            now = yield AT, now + (result.end_s - now)
            policy.observe(result)

    if fast and type(router) is RoundRobin and router._next == 0:
        # Round-robin routing ignores the replicas' state: request order[j] goes to replica j mod N
        # whatever happens, so each replica is exactly a single replica serving its share, and they
        # run one after another (no shared clock needed; same records as the interleaved loop).
        sh = Shared(shared, output)
        for k in range(n_rep):
            rids = order[k::n_rep]
            replica_of[rids] = k
            run_single(policies[k], blocks[k], config.block_size, CostModel(profiles[k]), sh, rids,
                       bar if config.progress else None, recs[k])
        router._next = len(order) % n_rep
        bar.close()
        sh.write_back()
        return _collect(trace, shared, recs, policies, blocks, replica_of, router, profiles, config, wall0, steps_dir)
    if fast:
        sh = Shared(shared, output)
        gens = [fast_replica(policies[k], blocks[k], config.block_size, CostModel(profiles[k]), sh, recs[k],
                             inboxes[k].rids, more, loads, k, work_of, bar if config.progress else None)
                for k in range(n_rep)]
    else:
        gens = [replica(k) for k in range(n_rep)]
    waiting = [AT] * n_rep       # what each replica waits for
    token = [0] * n_rep          # heap entries of a replica with an older token are stale
    heap: list[tuple[float, int, int, int]] = []
    seq = 0

    def resume(k: int, value) -> None:
        nonlocal seq
        try:
            kind, t = gens[k].send(value)
        except StopIteration:
            waiting[k] = None
            return
        waiting[k] = kind
        if kind != IDLE:
            token[k] += 1
            seq += 1
            heapq.heappush(heap, (t, seq, k, token[k]))

    for k in range(n_rep):  # every replica starts at t = 0, after the arrivals at 0 are routed
        seq += 1
        heapq.heappush(heap, (0.0, seq, k, 0))
    started = [False] * n_rep
    predict = predictor.predict if getattr(router, "needs_prediction", False) else None

    while True:
        ta = next_global()
        while heap and heap[0][3] != token[heap[0][2]]:
            heapq.heappop(heap)
        tw = heap[0][0] if heap else INF
        if ta == INF and tw == INF:
            break
        if ta <= tw:  # route the request (arrivals at t go before any replica plans at t)
            i = order[state["next"]]
            state["next"] += 1
            view = RequestView(request_id=i, arrival_s=arrival[i], prompt_tokens=prompt[i], max_output_tokens=max_out[i],
                               prompt=None if texts is None else texts[i], slo_class=None if slo is None else slo[i])
            predicted = predict(view) if predict else 0.0
            k = int(router.choose(view, predicted, loads))
            if not 0 <= k < n_rep:
                raise PlanError(f"router {router.name!r} chose replica {k} of {n_rep}")
            replica_of[i] = k
            work_of[i] = int(view.prompt_tokens + round(predicted))
            loads.requests[k] += 1
            loads.work[k] += int(work_of[i])
            if fast:
                inboxes[k].rids.append(i)
            else:
                inboxes[k].views.append(view)
            if waiting[k] == IDLE or waiting[k] == DECODE:  # wake it: its run stops at this arrival
                resume(k, ta)
            if not more():  # the last arrival: idle replicas learn that nothing more comes
                for j in range(n_rep):
                    if waiting[j] == IDLE:
                        resume(j, ta)
            continue
        t, _, k, _ = heapq.heappop(heap)
        if not started[k]:
            started[k] = True
            resume(k, None)
        elif waiting[k] == DECODE:
            resume(k, next_global())
        else:
            resume(k, t)
    bar.close()
    if fast:
        sh.write_back()
    if any(w is not None for w in waiting):
        stuck = [k for k, w in enumerate(waiting) if w is not None]
        raise PlanError(f"replicas {stuck} still wait for work after the last request")
    return _collect(trace, shared, recs, policies, blocks, replica_of, router, profiles, config, wall0, steps_dir)


def _collect(trace, shared, recs, policies, blocks, replica_of, router, profiles, config, wall0, steps_dir) -> RunResult:
    for policy in policies:
        shared.record_predictions(policy)
    n_rep = len(policies)
    requests = shared.requests_frame()
    pieces, totals = zip(*[r.step_piece() for r in recs])  # tables (views of the records) or part files
    all_steps = StepRecords(list(pieces), list(totals), replica_column=n_rep > 1,
                            spill_dirs=[Path(steps_dir)] if steps_dir else [])
    if n_rep == 1:  # exactly the single engine's tables and summary
        summary = summarize(requests, totals[0], blocks[0])
    else:
        rep = pl.Series("replica", replica_of, dtype=pl.Int64)
        requests = requests.with_columns(replica=pl.when(rep >= 0).then(rep).otherwise(None))
        per = [summarize(requests.filter(pl.col("replica") == k), totals[k], blocks[k]) for k in range(n_rep)]
        whole = StepTotals.merge(list(totals))
        summary = summarize(requests, whole, sum(blocks))
        span = summary["makespan_s"]
        summary["gpu_busy_fraction"] = whole.busy_s / (span * n_rep) if summary["num_finished"] else 0.0  # mean over replicas
        summary["kv_utilization_mean"] = sum(p["kv_utilization_mean"] * b for p, b in zip(per, blocks)) / sum(blocks)
        summary["kv_blocks_peak"] = sum(p["kv_blocks_peak"] for p in per)  # sum of the replicas' own peaks
        summary["router"] = router.name
        summary["replicas"] = [dict(p, replica=k, profile=profiles[k].name) for k, p in enumerate(per)]
    summary["sim_wall_s"] = time.perf_counter() - wall0
    names = {getattr(p, "name", type(p).__name__) for p in policies}
    cfg = {"engine": "simulator", "policy": names.pop() if len(names) == 1 else sorted(names),
           "policy_config": _policy_config(policies[0]), "sim": run_settings(config), "profile": profiles[0].name,
           "profile_path": profiles[0].path, "kv_blocks": blocks[0], "trace": trace.name, "trace_notes": trace.notes,
           "num_requests": len(trace)}
    if n_rep > 1:
        cfg.update(router=router.name, replicas=[{"profile": p.name, "profile_path": p.path, "kv_blocks": b}
                                                 for p, b in zip(profiles, blocks)])
    return RunResult(requests=requests, steps=all_steps, summary=summary, config=cfg)
