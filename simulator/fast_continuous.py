"""The fast engine: continuous batching (``continuous``, ``sarathi``, ``vllm-v0``), its KV accounting
and the simulated executor fused into one loop per replica.

The Python engine drives any policy through the contract (``plan`` -> ``StepPlan`` -> executor ->
``StepResult`` -> ``observe``): about 120 function calls and a handful of objects per segment. For
the built-in continuous-batching policies this loop makes the *same* decisions without them: the
queue, admission (watermark, token budget, sequence limit, chunked prefill, or vllm-v0's
prefill-only steps of whole prompts), recompute preemption of the newest request, block accounting
and the decode group (keys ``tokens - clock``, a histogram of ``key mod block_size``, a heap of
finish clocks, as :mod:`policies.kv_group` and :class:`simulator.executor.SimExecutor` keep them),
timed by the same cost-model arithmetic (:mod:`simulator.fast_cost`). Same output bytes as the
Python engine (``benchmarks/check_identical.py --engines``, ``tests/test_fast_engine.py``).

Which policies it runs and how it is chosen: :mod:`simulator.fast_engine`. :func:`replica` is a
generator speaking the cluster's protocol (``simulator.cluster``): ``(AT, t)`` sleeps until ``t``,
``(IDLE, None)`` waits for a routed request, ``(DECODE, horizon)`` defers a decode run.
"""
from __future__ import annotations

from array import array
from heapq import heappop, heappush

import numpy as np

from simulator.fast_cost import decode_functions
from simulator.metrics import STEP_COLUMNS
from simulator.serving import PlanError
from simulator.step_records import CHUNK

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
    spill_at = len(STEP_COLUMNS) * CHUNK if rec.spill is not None else INF  # stream every CHUNK segments
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

    def turn_away(r, why):  # a rejection: the request leaves the queue with its reason
        heappop(queue)
        if r in admitted:
            raise PlanError(f"request {r} rejected after it started")
        reject_reason[r] = why
        del context[r]
        if loads is not None:
            loads.requests[k] -= 1
            loads.work[k] -= int(work_of[r])

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
                        turn_away(r, f"context of {ctx} tokens needs {-(-(ctx + 1) // bs)} KV blocks; the cache "
                                     f"holds {num_blocks} (watermark {watermark})")
                        rejected += 1
                        continue
                    if v0 and ctx > budget:  # no chunking: wait for a step with room, or never fits
                        if r in admitted:  # preempted: recomputed whole, alone if over the budget
                            if budget < max_tokens:
                                break
                        elif ctx <= max_tokens:
                            break
                        else:
                            turn_away(r, f"context of {ctx} tokens exceeds max_batched_tokens {max_tokens} and "
                                         f"{name} does not chunk prefills")
                            rejected += 1
                            continue
                    c = ctx if v0 or ctx < budget else budget
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
            tokens += rows
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
            steps, out, prefill_tokens = n, n * batch, 0
        # retire the decode rows whose last token the step (or run) made: one place for both kinds of
        # segment. Rows joined by a mixed step's prefills finish after this clock, and every live entry
        # is past the clock when the clock did not move (a prefill-only step), so only stale entries are
        # popped then, which nothing reads.
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
        record((now, end, steps, batch, 0, prefill_tokens, out, used))
        if len(segs) >= spill_at:
            _unpack(segs, rec)
            rec.flush_steps()
            segs = array("d")
            record = segs.extend
        now = yield AT, now + (end - now)


def _unpack(segs: array, rec) -> None:
    """Append the packed per-step records to the recorder's columns, one column at a time."""
    m = np.frombuffer(segs, dtype=np.float64).reshape(-1, len(STEP_COLUMNS))
    for j, (attr, _, dtype) in enumerate(STEP_COLUMNS):
        getattr(rec, attr).frombytes(m[:, j].astype(dtype).tobytes())
