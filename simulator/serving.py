"""Serving rules both engines share, so they treat the same trace and plan identically.

- :func:`edge_checks`: what a server decides before queueing (prompts that leave no room
  in the model context are rejected with a reason; outputs are capped at the context).
- :class:`ArrivalFeed`: hands the policy the requests that arrived since its last plan.
- :class:`ExecutorBase`: the truth-side state of an executor (tokens to prefill and to
  generate per request) and the checks every plan passes before it runs: releases,
  rejections, preemptions, length directives and prefill chunks against the KV accountant.
The simulated and the real executor differ only in how a step is executed and timed.
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np

from policies.contract import RequestView, StepPlan
from policies.kv_cache import KVCache
import polars as pl

from simulator.metrics import Recorder, summarize
from traces.schema import Trace


class PlanError(RuntimeError):
    """A policy returned a plan that breaks the contract (names the request and the rule)."""


def edge_checks(trace: Trace, rec: Recorder, max_context: int, natural_cap: np.ndarray | int | None = None):
    """Reject prompts with no room in the context; cap outputs at it.

    Returns (max_output, too_long, output): the most tokens each request may generate, the
    rejected mask, and the tokens each request is to produce (the trace's lengths capped at
    the context, or with ``natural_cap`` — natural-length serving — the cap itself).
    """
    prompt = trace.prompt_tokens
    max_output = np.maximum(max_context - prompt, 0)
    too_long = prompt >= max_context
    if natural_cap is None:
        output = np.minimum(trace.output_tokens, np.maximum(max_output, 1))
        rec.output_capped[:] = (trace.output_tokens > max_output) & ~too_long
    else:
        output = np.maximum(np.minimum(max_output, natural_cap), 1)
    for i in np.flatnonzero(too_long).tolist():
        rec.reject_reason[i] = (f"prompt of {int(prompt[i])} tokens leaves no room for output in the model "
                                f"context of {max_context} tokens")
    return max_output, too_long, output


def request_views(trace: Trace, max_output: np.ndarray) -> list[RequestView]:
    prompts = trace.prompt
    slo = trace.slo_class
    return [
        RequestView(request_id=i, arrival_s=float(a), prompt_tokens=int(p), max_output_tokens=int(m),
                    prompt=None if prompts is None else prompts[i], slo_class=None if slo is None else slo[i])
        for i, (a, p, m) in enumerate(zip(trace.arrival_s.tolist(), trace.prompt_tokens.tolist(), max_output.tolist()))
    ]


def collect(rec: Recorder, policy, kv_blocks: int) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """After a run: the per-request and per-step tables and their summary."""
    rec.record_predictions(policy)
    requests, steps = rec.requests_frame(), rec.steps_frame()
    return requests, steps, summarize(requests, steps, kv_blocks)


class ArrivalFeed:
    """The trace's requests in arrival order; rejected-at-the-edge requests are never delivered.

    Views are made as requests are delivered (a million-request trace needs no million views
    up front); ``more`` and ``next_arrival_s`` are plain attributes, updated on delivery.
    """

    def __init__(self, trace: Trace, max_output: np.ndarray, too_long: np.ndarray):
        self.trace = trace
        self.arrivals = trace.arrival_s
        self.max_output = max_output
        self.too_long = too_long
        self.n = n = len(trace)
        self.next = 0  # index of the first request not yet delivered
        # next_ok[i]: the first request at or after i that will be delivered (n: none), so that
        # engines never stop a run of steps for a request the edge checks rejected
        ok = np.where(too_long, n, np.arange(n))
        self._next_ok = np.append(np.minimum.accumulate(ok[::-1])[::-1], n) if n else np.array([0])
        self._times = self.arrivals.tolist()  # bisect on a list: no numpy call per delivery
        self._first_t = self._times[0] if n else float("inf")  # arrival of request `next`
        self._update()

    def _update(self) -> None:
        j = int(self._next_ok[self.next])
        self.more = j < self.n
        self.next_arrival_s = float(self.arrivals[j]) if j < self.n else float("inf")

    def deliver(self, now: float) -> tuple[RequestView, ...]:
        """Requests that arrived at or before ``now`` and were not delivered yet."""
        if now < self._first_t:
            return ()
        i = self.next
        j = bisect_right(self._times, now, i)
        if j <= i:
            return ()
        self.next = j
        self._first_t = self._times[j] if j < self.n else float("inf")
        self._update()
        t, too_long = self.trace, self.too_long
        prompts, slo = t.prompt, t.slo_class
        return tuple(
            RequestView(request_id=k, arrival_s=float(t.arrival_s[k]), prompt_tokens=int(t.prompt_tokens[k]),
                        max_output_tokens=int(self.max_output[k]), prompt=None if prompts is None else prompts[k],
                        slo_class=None if slo is None else slo[k])
            for k in range(i, j) if not too_long[k])


class ExecutorBase:
    """Truth-side request state and the plan checks shared by the simulated and the real executor."""

    def __init__(self, kv: KVCache, rec: Recorder, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                 length_response=None, rng: np.random.Generator | None = None):
        self.kv, self.rec = kv, rec
        self.prompt_tokens = prompt_tokens.astype(np.int64).copy()  # grows by any length instruction
        self.pending = self.prompt_tokens.copy()                     # context tokens still to prefill
        self.remaining = output_tokens.astype(np.int64).copy()       # tokens still to produce
        self.started = np.zeros(len(prompt_tokens), dtype=bool)
        self.length_response = length_response
        self.rng = rng or np.random.default_rng(0)
        self.max_context: int | None = None  # set by the engine: instructions count against it

    def true_output(self, request_id: int) -> int:
        """The request's true output length (after capping and length control)."""
        return int(self.rec.output_tokens[request_id])

    # -- plan bookkeeping at the plan's start ----------------------------------------
    def apply_plan(self, plan: StepPlan, now: float) -> int:
        """Releases, rejections, preemptions and directives of a plan; returns requests completed."""
        if not (plan.release or plan.reject or plan.preempt or plan.directives):
            return 0
        rec = self.rec
        for r in plan.release:
            if self.remaining[r] != 0 or self.pending[r] != 0:
                raise PlanError(f"request {r} released at t={now:.6f}s before it finished generating")
            if rec.released[r]:
                raise PlanError(f"request {r} released twice")
            rec.released[r] = True
            rec.finish_s[r] = now
            self.release(r)
        for r, why in plan.reject:
            if self.started[r]:
                raise PlanError(f"request {r} rejected after it started")
            if r in rec.reject_reason:
                raise PlanError(f"request {r} rejected twice")
            rec.reject_reason[r] = why
        for r in plan.preempt:
            self.preempt(r)
        for r in plan.release:
            if self.kv.holds(r):
                raise PlanError(f"request {r} was released but the policy did not free its KV blocks")
        if plan.preempt:
            again = {c.request_id for c in plan.prefill}  # preempted and re-admitted in one plan is fine
            for r in plan.preempt:
                if self.kv.holds(r) and r not in again:
                    raise PlanError(f"request {r} was preempted but the policy did not free its KV blocks")
        if plan.directives:
            self.apply_directives(plan)
        return len(plan.release) + len(plan.reject)

    def release(self, request_id: int) -> None:
        """Hook: free an engine's own per-request resources (the real KV pool)."""

    def preempt(self, request_id: int) -> None:
        """Recompute preemption: the request's whole context (prompt + generated) is prefilled again."""
        i = request_id
        self.pending[i] = self.prompt_tokens[i] + self.rec.generated[i]
        self.rec.preemptions[i] += 1

    def apply_directives(self, plan: StepPlan) -> None:
        """Length directives: the response model sets the new length; the instruction joins the prompt."""
        for d in plan.directives:
            i = d.request_id
            if self.started[i]:
                raise PlanError(f"length directive for request {i} after its prefill started")
            self.set_length(i, d)
            self.add_instruction(i, d)
            self.rec.target_tokens[i] = d.target_tokens
            self.rec.instruction[i] = d.instruction

    def set_length(self, i: int, d) -> None:
        if self.length_response is None:
            raise PlanError("the policy issued length directives but no length-response model is configured")
        achieved, qos = self.length_response.apply(int(self.remaining[i]), d.target_tokens, self.rng)
        self.remaining[i] = max(1, int(achieved))
        self.rec.output_tokens[i] = self.remaining[i]
        self.rec.qos[i] = qos

    def add_instruction(self, i: int, d) -> None:
        """The instruction becomes part of the prompt: its tokens are prefilled with it."""
        k = d.prompt_tokens_added
        if k < 0:
            raise PlanError(f"length directive for request {i} adds {k} prompt tokens")
        self.prompt_tokens[i] += k
        self.pending[i] += k
        self.rec.instruction_tokens[i] = k
        if self.max_context is not None:  # the instruction takes room from the answer in the model context
            cap = max(self.max_context - int(self.prompt_tokens[i]), 1)
            if self.remaining[i] > cap:
                self.remaining[i] = cap
                self.rec.output_capped[i] = True
                if self.rec.output_tokens[i] > cap:
                    self.rec.output_tokens[i] = cap

    # -- checks before a step runs ----------------------------------------------------
    def check_prefill(self, plan: StepPlan, now: float) -> list[tuple[int, int]]:
        """Validate the plan's prefill chunks against the request state and the KV accountant.

        Returns (new tokens, tokens already cached) per chunk; marks first admissions."""
        kv, rec = self.kv, self.rec
        chunks = []
        for ch in plan.prefill:
            i, c = ch.request_id, ch.num_tokens
            pending = int(self.pending[i])
            if c < 1 or c > pending:
                raise PlanError(f"prefill chunk of {c} tokens for request {i}, "
                                f"which has {pending} tokens left to prefill")
            held = kv.tokens_of(i) if kv.holds(i) else 0
            done_before = int(self.prompt_tokens[i]) + int(rec.generated[i]) - pending
            if held != done_before + c:
                raise PlanError(f"request {i}: KV holds {held} tokens but prefill needs {done_before + c}; "
                                f"the policy must allocate KV for a chunk before planning it")
            chunks.append((c, done_before))
            if not self.started[i]:
                self.started[i] = True
                rec.admitted_s[i] = now
        return chunks

    def check_decode(self, idx: np.ndarray) -> None:
        if len(idx) and (self.pending[idx] > 0).any():
            bad = int(idx[np.argmax(self.pending[idx] > 0)])
            raise PlanError(f"request {bad} is scheduled to decode before its prefill is complete")
