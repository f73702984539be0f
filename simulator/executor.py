"""The simulated executor: runs a StepPlan against the truth and the step-time model.

The truth (each request's output length) lives only here. The executor advances the
KV accountant for decode rows, times the steps with the cost model, writes the run
records, and answers with a StepResult, following the repeat rule of
:mod:`policies.contract`: a decode-only plan runs up to ``max_steps`` steps, stopping
after the first step in which a request produced its last token or, if the plan asks,
after the step during which the next request arrives.
"""
from __future__ import annotations

import heapq

import numpy as np

from policies.contract import StepPlan, StepResult
from policies.kv_cache import KVCache
from simulator.cost_model import CostModel
from simulator.metrics import Recorder
from simulator.serving import ExecutorBase, PlanError

__all__ = ["PlanError", "SimExecutor"]

INF = float("inf")


class SimExecutor(ExecutorBase):
    """Runs plans in simulated time.

    The decode rows are kept as a *group* that advances in lockstep: each active member's
    remaining tokens are ``finish_at - clock`` (``clock``: decode steps the group has run),
    with the members in a heap by ``finish_at``, so a run of ``n`` steps costs O(1) plus the
    members that finish, join or leave, not O(batch). ``remaining`` and ``rec.generated``
    of a member are written back when it finishes or leaves the group (and by :meth:`flush`).
    """

    def __init__(self, output_tokens: np.ndarray, cost: CostModel, kv: KVCache, rec: Recorder,
                 prompt_tokens: np.ndarray, length_response=None, rng: np.random.Generator | None = None):
        super().__init__(kv, rec, prompt_tokens, output_tokens, length_response, rng)
        self.cost = cost
        rec.output_tokens[:] = self.remaining
        self._rows: tuple | None = ()       # the decode tuple the group was built for
        self._members: set[int] = set()     # its requests
        self._finish_at: dict[int, int] = {}  # active member -> group clock at which it produces its last token
        self._total: dict[int, int] = {}      # active member -> generated + remaining (constant while active)
        self._heap: list[tuple[int, int]] = []  # (finish_at, request); stale entries are skipped
        self._clock = 0

    def preempt(self, request_id: int) -> None:
        self._leave(request_id)
        super().preempt(request_id)

    def flush(self) -> None:
        """Write every active member's remaining and generated tokens back (end of the run)."""
        for r in list(self._members):
            self._leave(r)
        self._rows = None

    # -- the decode group ------------------------------------------------------------
    def _leave(self, r: int) -> None:
        if r not in self._members:
            return
        self._members.discard(r)
        self._rows = None
        fin = self._finish_at.pop(r, None)
        if fin is not None:
            rem = fin - self._clock
            self.remaining[r] = rem
            self.rec.generated[r] = self._total.pop(r) - rem

    def _regroup(self, rows: tuple) -> None:
        """Make the group the plan's decode rows: members leave and join; joiners are checked."""
        if rows is self._rows:
            return
        prev = self._rows
        if prev is not None and len(rows) > len(prev) and rows[:len(prev)] == prev:  # the batch plus newcomers
            tail = rows[len(prev):]
            if not any(r in self._members for r in tail) and (len(tail) == 1 or len(set(tail)) == len(tail)):
                self._join(tail)
                self._rows = rows
                return
        new = set(rows)
        if len(new) != len(rows):
            dup = next(r for r in rows if rows.count(r) > 1)
            raise PlanError(f"request {dup} appears more than once in the plan's decode rows")
        for r in self._members - new:
            self._leave(r)
        joining = new - self._members
        if joining:
            self._join(joining)
        self._rows = rows

    def _join(self, joining) -> None:
        pending, remaining, gen = self.pending, self.remaining, self.rec.generated
        clock, heap, members = self._clock, self._heap, self._members
        for r in joining:
            if pending[r] > 0:
                self._rows = None
                raise PlanError(f"request {r} is scheduled to decode before its prefill is complete")
            rem = int(remaining[r])
            if rem > 0:
                fin = clock + rem
                self._finish_at[r] = fin
                self._total[r] = rem + int(gen[r])
                heapq.heappush(heap, (fin, r))
            members.add(r)

    def _steps_to_first_finish(self) -> int:
        heap, fin = self._heap, self._finish_at
        while heap and fin.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] - self._clock

    def _advance(self, n: int, end: float, rows: tuple) -> list[int]:
        """Run the group ``n`` steps ending at ``end``; returns who finished, in decode-row order."""
        self._clock = clock = self._clock + n
        heap, fin = self._heap, self._finish_at
        done = []
        while heap and heap[0][0] <= clock:
            f, r = heapq.heappop(heap)
            if fin.get(r) == f:
                del fin[r]
                self.remaining[r] = 0
                self.rec.generated[r] = self._total.pop(r)
                self.rec.last_token_s[r] = end
                done.append(r)
        if len(done) > 1:
            pos = {r: i for i, r in enumerate(rows)}
            done.sort(key=pos.__getitem__)
        return done

    # -- running -------------------------------------------------------------------
    def run(self, plan: StepPlan, now: float, next_arrival: float) -> StepResult:
        if plan.prefill:
            return self._run_mixed_step(plan, now)
        return self._run_decode(plan, now, next_arrival)

    def _run_decode(self, plan: StepPlan, now: float, next_arrival: float) -> StepResult:
        rows = plan.decode
        if rows is not self._rows:
            self._regroup(rows)
        slots = self.kv.slots(rows)
        batch = len(rows)
        n_active = len(self._finish_at)
        limit = int(plan.max_steps)
        if limit < 1:
            raise PlanError(f"plan.max_steps must be >= 1, got {limit}")
        if n_active:
            limit = min(limit, self._steps_to_first_finish())
        sum_ctx = self.kv.sum_tokens(slots)
        if plan.wake_on_arrival and next_arrival < INF:
            n = self.cost.decode_steps_until(batch, sum_ctx, next_arrival - now, limit)
        else:
            n = limit
        self.kv.append(slots, n)
        end = now + self.cost.decode_run_s(batch, sum_ctx, n)
        finished = tuple(self._advance(n, end, rows)) if n_active else ()
        self.rec.segment(now, end, n, batch, batch - n_active, 0, n * n_active, self.kv.used_blocks)
        return StepResult(start_s=now, end_s=end, num_steps=n, tokens=n * n_active, finished=finished)

    def _run_mixed_step(self, plan: StepPlan, now: float) -> StepResult:
        kv, rec = self.kv, self.rec
        rows = plan.decode
        self._regroup(rows)
        chunks = self.check_prefill(plan, now)
        first, prefilled, finished = [], [], []
        if rows:
            slots = kv.slots(rows)
            sum_ctx = kv.sum_tokens(slots)
        else:
            slots, sum_ctx = None, 0
        end = now + self.cost.step_s(len(rows), sum_ctx, chunks, plan.prefill_pad_to)
        if rows:
            kv.append(slots, 1)
        tokens = 0
        pending, remaining, generated = self.pending, self.remaining, rec.generated
        for ch in plan.prefill:
            i = ch.request_id
            left = int(pending[i]) - ch.num_tokens
            pending[i] = left
            if left == 0:  # context complete: sample the next token
                prefilled.append(i)
                g = int(generated[i])
                if g == 0:
                    first.append(i)
                    rec.first_token_s[i] = end
                generated[i] = g + 1
                rem = int(remaining[i]) - 1
                remaining[i] = rem
                tokens += 1
                if rem == 0:
                    rec.last_token_s[i] = end
                    finished.append(i)
        n_active = len(self._finish_at)
        if n_active:
            tokens += n_active
            finished.extend(self._advance(1, end, rows))
        prefill_tokens = sum(max(c, plan.prefill_pad_to) for c, _ in chunks)
        rec.segment(now, end, 1, len(rows) + len(chunks), len(rows) - n_active, prefill_tokens, tokens, kv.used_blocks)
        return StepResult(start_s=now, end_s=end, num_steps=1, tokens=tokens, first_tokens=tuple(first),
                          prefilled=tuple(prefilled), finished=tuple(finished))

    # -- the cluster's look-ahead ----------------------------------------------------
    def decode_horizon_s(self, plan: StepPlan) -> float:
        """How long a decode-only plan runs if no arrival stops it: the duration ``run(plan, now,
        inf)`` would take (its step limit: ``max_steps`` or the first row to finish). A cluster
        uses it to defer a replica's decode run until it knows whether a request is routed there."""
        rows = plan.decode
        if rows is not self._rows:
            self._regroup(rows)
        limit = int(plan.max_steps)
        if limit < 1:
            raise PlanError(f"plan.max_steps must be >= 1, got {limit}")
        if self._finish_at:
            limit = min(limit, self._steps_to_first_finish())
        return self.cost.decode_run_s(len(rows), self.kv.sum_tokens(self.kv.slots(rows)), limit)
