"""The simulated executor: runs a StepPlan against the truth and the step-time model.

The truth (each request's output length) lives only here. The executor advances the
KV accountant for decode rows, times the steps with the cost model, writes the run
records, and answers with a StepResult, following the repeat rule of
:mod:`policies.contract`: a decode-only plan runs up to ``max_steps`` steps, stopping
after the first step in which a request produced its last token or, if the plan asks,
after the step during which the next request arrives.
"""
from __future__ import annotations

import numpy as np

from policies.contract import StepPlan, StepResult
from policies.kv_cache import KVCache
from simulator.cost_model import CostModel
from simulator.metrics import Recorder
from simulator.serving import ExecutorBase, PlanError

__all__ = ["PlanError", "SimExecutor"]


class SimExecutor(ExecutorBase):
    def __init__(self, output_tokens: np.ndarray, cost: CostModel, kv: KVCache, rec: Recorder,
                 prompt_tokens: np.ndarray, length_response=None, rng: np.random.Generator | None = None):
        super().__init__(kv, rec, prompt_tokens, output_tokens, length_response, rng)
        self.cost = cost
        rec.output_tokens[:] = self.remaining
        self._decode_key: tuple | None = None
        self._decode_idx = np.empty(0, dtype=np.int64)
        self._decode_slots = np.empty(0, dtype=np.int64)

    def preempt(self, request_id: int) -> None:
        super().preempt(request_id)
        self._decode_key = None

    def release(self, request_id: int) -> None:
        self._decode_key = None  # its KV slot may be reused: never trust cached slots across a release

    # -- running -------------------------------------------------------------------
    def run(self, plan: StepPlan, now: float, next_arrival: float) -> StepResult:
        if plan.prefill:
            return self._run_mixed_step(plan, now)
        return self._run_decode(plan, now, next_arrival)

    def _decode_rows(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]:
        if plan.decode is not self._decode_key:
            idx = np.asarray(plan.decode, dtype=np.int64)
            self.check_decode(idx)
            self._decode_idx = idx
            self._decode_slots = self.kv.slots(plan.decode)
            self._decode_key = plan.decode
        return self._decode_idx, self._decode_slots

    def _run_decode(self, plan: StepPlan, now: float, next_arrival: float) -> StepResult:
        idx, slots = self._decode_rows(plan)
        rem = self.remaining[idx]
        batch = len(idx)
        active = rem > 0
        n_active = int(np.count_nonzero(active))
        limit = int(plan.max_steps)
        if limit < 1:
            raise PlanError(f"plan.max_steps must be >= 1, got {limit}")
        if n_active == batch:  # no padded rows (continuous batching): skip the mask
            limit = min(limit, int(rem.min()))
        elif n_active:
            limit = min(limit, int(rem[active].min()))
        sum_ctx = int(self.kv._tokens[slots].sum())
        if plan.wake_on_arrival and next_arrival < float("inf"):
            n = self.cost.decode_steps_until(batch, sum_ctx, next_arrival - now, limit)
        else:
            n = limit
        self.kv.append(slots, n)
        end = now + self.cost.decode_run_s(batch, sum_ctx, n)
        finished: tuple[int, ...] = ()
        if n_active:
            act = idx if n_active == batch else idx[active]
            self.remaining[act] -= n
            self.rec.generated[act] += n
            done = act[self.remaining[act] == 0]
            if len(done):
                self.rec.last_token_s[done] = end
                finished = tuple(done.tolist())
        self.rec.segment(now, end, n, batch, batch - n_active, 0, n * n_active, self.kv.used_blocks)
        return StepResult(start_s=now, end_s=end, num_steps=n, tokens=n * n_active, finished=finished)

    def _run_mixed_step(self, plan: StepPlan, now: float) -> StepResult:
        kv, rec = self.kv, self.rec
        chunks = self.check_prefill(plan, now)
        first, prefilled, finished = [], [], []
        idx, slots = self._decode_rows(plan) if plan.decode else (np.empty(0, np.int64), np.empty(0, np.int64))
        sum_ctx = int(kv._tokens[slots].sum()) if len(slots) else 0
        end = now + self.cost.step_s(len(idx), sum_ctx, chunks, plan.prefill_pad_to)
        kv.append(slots, 1)
        tokens = 0
        for ch in plan.prefill:
            i = ch.request_id
            self.pending[i] -= ch.num_tokens
            if self.pending[i] == 0:  # context complete: sample the next token
                prefilled.append(i)
                if rec.generated[i] == 0:
                    first.append(i)
                    rec.first_token_s[i] = end
                rec.generated[i] += 1
                self.remaining[i] -= 1
                tokens += 1
                if self.remaining[i] == 0:
                    rec.last_token_s[i] = end
                    finished.append(i)
        n_active = 0
        if len(idx):
            rem = self.remaining[idx]
            act = idx[rem > 0]
            n_active = len(act)
            self.remaining[act] -= 1
            rec.generated[act] += 1
            tokens += n_active
            done = act[self.remaining[act] == 0]
            if len(done):
                rec.last_token_s[done] = end
                finished.extend(done.tolist())
        prefill_tokens = sum(max(c, plan.prefill_pad_to) for c, _ in chunks)
        rec.segment(now, end, 1, len(idx) + len(chunks), len(idx) - n_active, prefill_tokens, tokens, kv.used_blocks)
        return StepResult(start_s=now, end_s=end, num_steps=1, tokens=tokens, first_tokens=tuple(first),
                          prefilled=tuple(prefilled), finished=tuple(finished))

    # -- the cluster's look-ahead ----------------------------------------------------
    def decode_horizon_s(self, plan: StepPlan) -> float:
        """How long a decode-only plan runs if no arrival stops it: the duration ``run(plan, now,
        inf)`` would take (its step limit: ``max_steps`` or the first row to finish). A cluster
        uses it to defer a replica's decode run until it knows whether a request is routed there."""
        idx, slots = self._decode_rows(plan)
        rem = self.remaining[idx]
        limit = int(plan.max_steps)
        if limit < 1:
            raise PlanError(f"plan.max_steps must be >= 1, got {limit}")
        active = rem[rem > 0]
        if len(active):
            limit = min(limit, int(active.min()))
        return self.cost.decode_run_s(len(idx), int(self.kv._tokens[slots].sum()), limit)
