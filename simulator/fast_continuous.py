"""The fast engine: continuous batching (``continuous``, ``sarathi``, ``vllm-v0``), its KV accounting
and the simulated executor fused into one loop per replica.

The Python engine drives any policy through the contract (``plan`` -> ``StepPlan`` ->
executor -> ``StepResult`` -> ``observe``), which costs about 120 function calls and a handful
of objects per segment. For the built-in continuous-batching policies this module runs the
*same* decisions without the objects: the queue, admission (watermark, token budget,
sequence limit, chunked prefill, or vllm-v0's prefill-only steps of whole prompts), recompute
preemption of the newest request, block
accounting and the decode group (members stored as ``tokens - clock``, with a histogram of
``key mod block_size`` and a heap of finish clocks, as :mod:`policies.kv_group` and
:class:`simulator.executor.SimExecutor` keep them), timed by the same :class:`CostModel`
calls with the same arguments (:mod:`simulator.fast_cost`). Its outputs are byte-identical to the Python engine's
(``benchmarks/check_identical.py --engines``, ``tests/test_fast_engine.py``).

It is chosen automatically when the policy is exactly one of those classes (a subclass or
any other policy, or ``--engine python``, runs the Python engine): it replaces the policy
object's logic, so it must never run a policy it does not reproduce.

:func:`replica` is a generator speaking the cluster's protocol (``simulator.cluster``): it
yields ``(AT, t)`` to sleep until ``t``, ``(IDLE, None)`` to wait for a routed request and
``(DECODE, horizon)`` for a deferred decode run; the single engine drives it with every
request in its inbox from the start (:func:`simulator.fast_engine.run_single`).
"""
from __future__ import annotations

from array import array
from heapq import heappop, heappush

import numpy as np

from simulator.fast_cost import decode_functions
from simulator.metrics import STEP_COLUMNS
from simulator.serving import PlanError

INF = float("inf")
AT, IDLE, DECODE = 0, 1, 2
UNBOUNDED = 1 << 30
ROOM, ADMIT = 0, 1

def replica(policy, num_blocks, bs, cost, sh, rec, rids: list, more=None, loads=None, k: int = 0,
            work_of=None, bar=None):
    """The continuous-batching replica loop (see the module docstring); ``rec``: this replica's recorder
    (its per-step columns), ``rids``: its inbox (appended to by the cluster's router), ``more``: whether
    the cluster has requests left to route (None: a single replica, whose inbox is complete)."""
    cfg = policy.config
    max_seqs, max_tokens = cfg.max_num_seqs, cfg.max_batched_tokens
    watermark = int(cfg.watermark * num_blocks)
    v0 = not policy.chunked_prefill  # vllm-v0: prefill-only steps first, whole prompts, then make room
    phases = (ADMIT, ROOM) if v0 else (ROOM, ADMIT)
    name = policy.name
    arrival, prompt, remaining, generated, preempts = sh.arrival, sh.prompt, sh.remaining, sh.generated, sh.preemptions
    admitted_s, first_s, last_s, finish_s, released = (rec.admitted_s, rec.first_token_s, rec.last_token_s,
                                                       rec.finish_s, rec.released)
    reject_reason = rec.reject_reason
    segs = array("d")  # the per-step records, 8 values a segment (exact: counts < 2**53), unpacked at the end
    record = segs.extend
    decode_run_s, steps_until, step_s = decode_functions(cost)
    # the policy's state (ContinuousBatching's fields)
    queue: list = []                  # heap of (key, seq, request); key: arrival time, -1.0 for the preempted
    seq = 0
    context: dict = {}                # request -> context tokens to prefill when (re)admitted
    ppend: dict = {}                  # running request -> context tokens not yet planned
    running: list = []                # admission order (newest last)
    prefilling: list = []
    admitted: set = set()
    finished: list = []               # finished last step: released by the next plan
    # the KV accountant: blocks in use, tokens of holders outside the decode group
    used = 0
    ktok: dict = {}
    # the decode group (KV and executor): key = tokens - clock; finish clock per member
    members: dict = {}
    fin_of: dict = {}
    total_of: dict = {}
    heap: list = []
    hist = [0] * bs
    sumkey = 0
    clock = 0
    ptr = 0
    now = 0.0
    while True:
        # -- intake: deliver arrivals, release what finished last step --------------------
        n_in = len(rids)
        while ptr < n_in and arrival[rids[ptr]] <= now:
            r = rids[ptr]
            ptr += 1
            context[r] = prompt[r]
            seq += 1
            heappush(queue, (arrival[r], seq, r))
        done = 0
        if finished:
            for r in finished:
                released[r] = True
                finish_s[r] = now
                t = ktok.pop(r)
                used -= -(-t // bs)
                del context[r], ppend[r]
                admitted.discard(r)
                if loads is not None:
                    loads.requests[k] -= 1
                    loads.work[k] -= int(work_of[r])
            if len(finished) == 1:
                running.remove(finished[0])
            else:
                gone = set(finished)
                running = [r for r in running if r not in gone]
            done = len(finished)
            finished = []
        chunks = []  # (request, tokens, tokens already cached)
        rejected = 0
        for phase in phases:
            if phase == ROOM:  # -- make room: preempt the newest while the decode rows cannot take one more step
                if v0 and chunks:  # vllm-v0: a prefill-only step, the decodes wait
                    continue
                while members and hist[-clock % bs] > num_blocks - used:
                    victim = running.pop()
                    if victim in prefilling:
                        prefilling.remove(victim)
                        t = ktok.pop(victim)
                    else:
                        key = members.pop(victim)
                        t = key + clock
                        sumkey -= key
                        hist[key % bs] -= 1
                        context[victim] = t + 1
                        rem = fin_of.pop(victim) - clock
                        remaining[victim] = rem
                        generated[victim] = total_of.pop(victim) - rem
                    del ppend[victim]
                    used -= -(-t // bs)
                    preempts[victim] += 1
                    seq += 1
                    heappush(queue, (-1.0, seq, victim))
                continue
            # -- admit: continue chunked prefills, then first-come-first-served ---------------
            nd = len(members)
            budget = max_tokens if v0 else max_tokens - nd  # vllm-v0: decodes pause for a prefill step
            growth = hist[-clock % bs] if nd and not v0 else 0  # vllm-v0 reserves only the watermark
            free = num_blocks - used
            stopped = False
            for r in prefilling:
                if budget <= 0:
                    stopped = True
                    break
                c = min(ppend[r], budget)
                held = ktok[r]
                delta = -(-(held + c) // bs) + (-held) // bs  # blocks_for(held + c) - blocks_for(held)
                if delta > free - growth:
                    stopped = True
                    break
                ktok[r] = held + c
                used += delta
                free -= delta
                ppend[r] -= c
                chunks.append((r, c, held))
                budget -= c
            if not stopped:
                while queue and budget > 0 and len(running) < max_seqs:
                    r = queue[0][2]
                    ctx = context[r]
                    wm = 0 if r in admitted else watermark
                    if -(-(ctx + 1) // bs) > num_blocks - wm:
                        heappop(queue)
                        if r in admitted:
                            raise PlanError(f"request {r} rejected after it started")
                        reject_reason[r] = (f"context of {ctx} tokens needs {-(-(ctx + 1) // bs)} KV blocks; the cache "
                                            f"holds {num_blocks} (watermark {watermark})")
                        del context[r]
                        rejected += 1
                        if loads is not None:
                            loads.requests[k] -= 1
                            loads.work[k] -= int(work_of[r])
                        continue
                    if v0 and ctx > budget:  # no chunking: wait for a step with room, or never fits
                        if ctx <= max_tokens:
                            break
                        heappop(queue)
                        if r in admitted:
                            raise PlanError(f"request {r} rejected after it started")
                        reject_reason[r] = (f"context of {ctx} tokens exceeds max_batched_tokens {max_tokens} and "
                                            f"{name} does not chunk prefills")
                        del context[r]
                        admitted.discard(r)
                        rejected += 1
                        if loads is not None:
                            loads.requests[k] -= 1
                            loads.work[k] -= int(work_of[r])
                        continue
                    c = ctx if ctx < budget else budget
                    b = -(-c // bs)
                    if b > free - (growth + wm):
                        break
                    heappop(queue)
                    used += b
                    free -= b
                    ktok[r] = c
                    if r not in admitted:
                        admitted.add(r)
                        admitted_s[r] = now
                    ppend[r] = ctx - c
                    chunks.append((r, c, 0))
                    running.append(r)
                    prefilling.append(r)
                    budget -= c
        done += rejected
        if done and bar is not None:
            bar.update(done)
        # -- idle --------------------------------------------------------------------------
        if not chunks and not members:
            if ptr < len(rids):
                now = yield AT, now + (arrival[rids[ptr]] - now)
            elif more is not None and more():
                t = yield IDLE, None
                now = now + (t - now)
            elif running or queue:
                raise PlanError(f"policy {name!r} returned an idle plan at t={now:.3f}s with requests outstanding "
                                f"and no arrivals left")
            else:
                _unpack(segs, rec)
                return
            continue
        if chunks:  # -- a mixed step: decode rows plus prefill chunks, one step ----------------
            rows = 0 if v0 else nd
            end = now + step_s(rows, sumkey + rows * clock if rows else 0, [(c, h) for _, c, h in chunks])
            if rows:
                delta = hist[-clock % bs]
                if used + delta > num_blocks:
                    raise PlanError(f"growing {rows} requests by 1 token needs {delta} more blocks")
                used += delta
                clock += 1
            tokens = prefill_tokens = 0
            prefilled = []
            for r, c, _ in chunks:
                prefill_tokens += c
                if ppend[r] == 0:  # context complete: the step samples the next token
                    g = generated[r]
                    if g == 0:
                        first_s[r] = end
                    generated[r] = g + 1
                    rem = remaining[r] - 1
                    remaining[r] = rem
                    tokens += 1
                    prefilled.append(r)
                    if rem == 0:
                        last_s[r] = end
                        finished.append(r)
            if rows:
                tokens += rows
                while heap and heap[0][0] <= clock:
                    f, r = heappop(heap)
                    if fin_of.get(r) == f:
                        del fin_of[r]
                        remaining[r] = 0
                        generated[r] = total_of.pop(r)
                        last_s[r] = end
                        key = members.pop(r)
                        sumkey -= key
                        hist[key % bs] -= 1
                        ktok[r] = key + clock
                        finished.append(r)
            steps, batch, out = 1, rows + len(chunks), tokens
            if prefilled:  # observe: prefilled requests leave the prefilling list and join the decode rows
                if len(prefilled) == 1:
                    prefilling.remove(prefilled[0])
                else:
                    done_set = set(prefilled)
                    prefilling = [r for r in prefilling if r not in done_set]
                for r in prefilled:
                    rem = remaining[r]
                    if rem:
                        key = ktok.pop(r) - clock
                        members[r] = key
                        sumkey += key
                        hist[key % bs] += 1
                        fin = clock + rem
                        fin_of[r] = fin
                        total_of[r] = rem + generated[r]
                        heappush(heap, (fin, r))
        else:  # -- a decode run: up to the cache's limit, the first finish or the next arrival ---
            batch = len(members)  # (vllm-v0 made room after admission)
            if rejected:
                limit = 1
            else:
                limit = UNBOUNDED
                free = num_blocks - used
                if batch * (-(-(limit + bs - 1) // bs)) > free:
                    q, spare = divmod(free, batch)
                    a = -clock % bs
                    cum = r = 0
                    while r < bs - 1:
                        cum += hist[(a - r) % bs]
                        if cum > spare:
                            break
                        r += 1
                    limit = min(limit, q * bs + r)
            while heap and fin_of.get(heap[0][1]) != heap[0][0]:
                heappop(heap)
            first = heap[0][0] - clock
            if first < limit:
                limit = first
            sum_ctx = sumkey + batch * clock
            if ptr < len(rids):
                nxt = arrival[rids[ptr]]
            elif more is not None:
                nxt = yield DECODE, now + decode_run_s(batch, sum_ctx, limit)
            else:
                nxt = INF
            if nxt < INF:
                n, dur = steps_until(batch, sum_ctx, nxt - now, limit)
            else:
                n, dur = limit, decode_run_s(batch, sum_ctx, limit)
            q, r = divmod(n, bs)
            a = -clock % bs
            lo = a - r + 1
            delta = batch * q + (sum(hist[lo:a + 1]) if lo >= 0 else sum(hist[:a + 1]) + sum(hist[lo:]))
            if used + delta > num_blocks:
                raise PlanError(f"growing {batch} requests by {n} tokens needs {delta} more blocks")
            used += delta
            clock += n
            end = now + dur
            while heap and heap[0][0] <= clock:
                f, r = heappop(heap)
                if fin_of.get(r) == f:
                    del fin_of[r]
                    remaining[r] = 0
                    generated[r] = total_of.pop(r)
                    last_s[r] = end
                    key = members.pop(r)
                    sumkey -= key
                    hist[key % bs] -= 1
                    ktok[r] = key + clock
                    finished.append(r)
            steps, out, prefill_tokens = n, n * batch, 0
        record((now, end, steps, batch, 0, prefill_tokens, out, used))
        now = yield AT, now + (end - now)


def _unpack(segs: array, rec) -> None:
    """Append the packed per-step records to the recorder's columns, one column at a time."""
    m = np.frombuffer(segs, dtype=np.float64).reshape(-1, len(STEP_COLUMNS))
    for j, (attr, _, dtype) in enumerate(STEP_COLUMNS):
        getattr(rec, attr).frombytes(m[:, j].astype(dtype).tobytes())
