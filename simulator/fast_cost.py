"""The step-time model's hot calls for the fast engine, as closures over per-batch-size constants.

Each function here computes exactly what the :class:`~simulator.cost_model.CostModel` method of
the same role computes, with the same floating-point operations in the same order (so the
same bits), but without the per-call method lookups, the list of run pieces and the repeated
``decode_run_s`` calls of the rounding guard. A profile without the measured decode-attention
grid uses the model's own methods.
"""
from __future__ import annotations

from bisect import bisect_right
from math import ceil

from simulator.cost_model import CostModel, _smallest_covering


def decode_functions(cost: CostModel):
    """``(run_s, steps_until, step_s)``: ``run_s(batch, sum_ctx, n)`` is ``cost.decode_run_s``;
    ``steps_until(batch, sum_ctx, budget_s, limit)`` returns ``(n, run_s(batch, sum_ctx, n))`` with
    ``n = cost.decode_steps_until(...)``; ``step_s(rows, sum_ctx, chunks)`` is ``cost.step_s`` with
    no padding."""
    if cost._grid is None:
        def steps_until_model(batch, sum_ctx, budget_s, limit):
            n = cost.decode_steps_until(batch, sum_ctx, budget_s, limit)
            return n, cost.decode_run_s(batch, sum_ctx, n)
        return cost.decode_run_s, steps_until_model, lambda rows, sum_ctx, chunks: cost.step_s(rows, sum_ctx, chunks, 0)

    per_batch: dict = {}
    fixed, linear_ms, segments = cost.fixed_ms, cost.linear_ms, cost._segments
    p_mixed, p_chunk, p_sq, p_ctx, p_extra = cost.p_mixed, cost.p_chunk, cost.p_sq, cost.p_ctx, cost.p_extra
    p_csq, p_mixed_row, p_mixed_rowk = cost.p_csq, cost.p_mixed_row, cost.p_mixed_rowk

    def constants(batch):
        his, a, b = segments(batch)
        c = per_batch[batch] = (fixed + linear_ms(batch), his, a, b, len(his))
        return c

    def run_s(batch, sum_ctx, n):
        if n <= 0 or batch <= 0:
            return 0.0
        base, his, a, b, nh = per_batch.get(batch) or constants(batch)
        ms = n * base
        k0 = sum_ctx / batch
        i = bisect_right(his, k0)
        j_lo = 0
        while j_lo < n:
            j_hi = n if i == nh else min(n, ceil(his[i] - k0))
            if j_hi > j_lo:
                cnt = j_hi - j_lo
                ms += cnt * (a[i] + b[i] * k0) + b[i] * (cnt * j_lo + cnt * (cnt - 1) / 2.0)
                j_lo = j_hi
            i += 1
        return ms / 1000.0

    def first_guess(batch, sum_ctx, target, limit):  # CostModel._grid_steps_until
        base, his, a, b, nh = per_batch.get(batch) or constants(batch)
        k0 = sum_ctx / batch
        i = bisect_right(his, k0)
        j_lo = 0
        done = 0.0
        while j_lo < limit:
            j_hi = limit if i == nh else min(limit, ceil(his[i] - k0))
            if j_hi > j_lo:
                cnt = j_hi - j_lo
                ai, bi = a[i] + b[i] * k0, b[i]
                c0 = base + ai + bi * j_lo
                seg = cnt * c0 + bi * cnt * (cnt - 1) / 2.0
                if done + seg >= target:
                    return j_lo + _smallest_covering(c0, bi, target - done, cnt)
                done += seg
                j_lo = j_hi
            i += 1
        return limit

    def steps_until(batch, sum_ctx, budget_s, limit):
        if budget_s <= 0:
            return 1, run_s(batch, sum_ctx, 1)
        n = first_guess(batch, sum_ctx, budget_s * 1000.0, limit)
        t = None
        while n > 1:  # the rounding guard of CostModel.decode_steps_until
            t_prev = run_s(batch, sum_ctx, n - 1)
            if t_prev < budget_s:
                break
            n -= 1
            t = t_prev
        while n < limit:
            t = run_s(batch, sum_ctx, n)
            if t >= budget_s:
                break
            n += 1
            t = None
        return n, (run_s(batch, sum_ctx, n) if t is None else t)

    def step_s(rows, sum_ctx, chunks):
        n_tokens = rows
        if rows > 0:
            base, his, a, b, nh = per_batch.get(rows) or constants(rows)
            k = sum_ctx / rows
            i = bisect_right(his, k)
            ms = fixed + (a[i] + b[i] * k)
            if chunks:
                ms += p_mixed + p_mixed_row * rows
        else:
            ms = fixed + 0.0
        for c, k in chunks:
            n_tokens += c
            ms += p_chunk + (p_csq if k else p_sq) * c * c + p_ctx * c * k
        if len(chunks) > 1:  # CostModel.step_s: every loose chunk after the first
            ms += p_extra * (len(chunks) - 1)
        if p_mixed_rowk and rows > 0 and chunks:
            ms += p_mixed_rowk * rows * (n_tokens - rows) / 1000.0
        if n_tokens == 0:
            return 0.0
        return (ms + linear_ms(n_tokens)) / 1000.0

    return run_s, steps_until, step_s
