"""Continuous (iteration-level) batching, as in vLLM.

Every step runs all requests whose prompt is prefilled as decode rows, plus prefill
chunks of waiting requests admitted first-come-first-served while free KV blocks (above
a small watermark), the per-step token budget and the sequence limit allow; a prompt
larger than the remaining budget is prefilled in chunks over several steps. When the
cache cannot hold one more step, the newest running request is preempted and later
recomputed (its prompt and generated tokens are prefilled again).

Requests are queued with a *priority key*; FCFS uses the arrival order. Subclasses that
order the queue differently (SJF, SRPT) override :meth:`queue_key` and, for preemption by
priority, :meth:`preempt_victim`.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from policies.contract import PrefillChunk, RequestView, SchedulerView, StepPlan, StepResult

UNBOUNDED = 1 << 30


@dataclass(frozen=True)
class ContinuousConfig:
    max_num_seqs: int = 256
    max_batched_tokens: int = 4096
    watermark: float = 0.01

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_batched_tokens < 1:
            raise ValueError(f"max_num_seqs and max_batched_tokens must be >= 1, got {self.max_num_seqs} and "
                             f"{self.max_batched_tokens}")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark (share of KV blocks kept free) must be in [0, 1), got {self.watermark}")


class ContinuousBatching:
    name = "continuous"
    chunked_prefill = True  # a prompt larger than the step's token budget is prefilled over several steps

    def __init__(self, config: ContinuousConfig | None = None, **overrides):
        self.config = config or ContinuousConfig(**overrides)
        self._queue: list[tuple] = []      # heap of (key, seq, request_id)
        self._seq = 0
        self.views: dict[int, RequestView] = {}
        self.context: dict[int, int] = {}   # request -> context tokens to prefill when (re)admitted
        self.pending: dict[int, int] = {}   # running request -> context tokens not yet planned for prefill
        self.running: list[int] = []       # admission order (newest last)
        self.prefilling: list[int] = []    # running requests with context left to prefill
        self._decode: tuple[int, ...] = ()
        self._decode_slots: np.ndarray | None = None
        self._finished: list[int] = []
        self.admitted: set[int] = set()    # admitted at least once: a preempted one is never rejected

    # -- queue ordering hooks --------------------------------------------------
    def queue_key(self, view: RequestView) -> tuple:
        return (view.arrival_s,)

    def preempt_victim(self, candidates: list[int]) -> int:
        return candidates[-1]

    def _enqueue(self, rid: int, front: bool = False) -> None:
        key = (-1.0,) if front else self.queue_key(self.views[rid])
        self._seq += 1
        heapq.heappush(self._queue, (key, self._seq, rid))

    # -- contract ----------------------------------------------------------------
    def plan(self, view: SchedulerView) -> StepPlan:
        kv = view.kv
        release = self._intake(view)
        preempt = self._make_room(kv)
        rejected: list[tuple[int, str]] = []
        chunks = self._admit(kv, rejected)
        decode = self._decode
        if chunks or rejected:
            return StepPlan(decode=decode, prefill=tuple(chunks), release=release, preempt=preempt,
                            reject=tuple(rejected), max_steps=1)
        if not decode:
            return StepPlan(release=release, preempt=preempt)
        steps = kv.max_decode_steps(self._slots(kv), UNBOUNDED)
        return StepPlan(decode=decode, release=release, preempt=preempt, max_steps=steps)

    def _intake(self, view: SchedulerView) -> tuple[int, ...]:
        """Queue the arrivals; free the requests that finished last step (returned: the plan's release)."""
        kv = view.kv
        for r in view.arrivals:
            self.views[r.request_id] = r
            self.context[r.request_id] = r.prompt_tokens
            self._enqueue(r.request_id)
        release = tuple(self._finished)
        if release:
            self._finished = []
            gone = set(release)
            for r in release:
                kv.free(r)
                del self.views[r], self.context[r], self.pending[r]
                self.admitted.discard(r)
            self.running = [r for r in self.running if r not in gone]
            self._set_decode(tuple([r for r in self._decode if r not in gone]))
        return release

    def observe(self, result: StepResult) -> None:
        if result.prefilled:
            done = set(result.prefilled)
            self.prefilling = [r for r in self.prefilling if r not in done]
            fin = set(result.finished)
            self._set_decode(self._decode + tuple([r for r in result.prefilled if r not in fin]))
        if result.finished:
            self._finished.extend(result.finished)
            fin = set(result.finished)
            self._set_decode(tuple([r for r in self._decode if r not in fin]))

    # -- helpers -----------------------------------------------------------------
    def _set_decode(self, decode: tuple[int, ...]) -> None:
        if decode != self._decode:
            self._decode = decode
            self._decode_slots = None

    def _slots(self, kv) -> np.ndarray:
        if self._decode_slots is None:
            self._decode_slots = kv.slots(self._decode)
        return self._decode_slots

    def _make_room(self, kv) -> tuple[int, ...]:
        """Preempt until every decode row can take one more step."""
        preempted = []
        while self._decode and kv.growth_blocks(self._slots(kv), 1) > kv.free_blocks:
            victim = self.preempt_victim(self.running)
            self.evict(victim, kv)
            self._enqueue(victim, front=True)
            preempted.append(victim)
        return tuple(preempted)

    def evict(self, rid: int, kv) -> None:
        """Recompute preemption's bookkeeping: drop the request's KV; it will prefill its context again."""
        self.running.remove(rid)
        if rid in self.prefilling:  # its context is unchanged: prefill it again from the start
            self.prefilling.remove(rid)
        else:  # prompt + generated: the cached tokens plus the sampled token not yet cached
            self.context[rid] = kv.tokens_of(rid) + 1
        del self.pending[rid]
        kv.free(rid)
        self._set_decode(tuple(r for r in self._decode if r != rid))

    def reserve_blocks(self, kv) -> int:
        """Blocks admission must leave free: the watermark plus one more step of every decode row."""
        return self.watermark_blocks(kv) + (kv.growth_blocks(self._slots(kv), 1) if self._decode else 0)

    def watermark_blocks(self, kv) -> int:
        return int(self.config.watermark * kv.num_blocks)

    def prefill_budget(self) -> int:
        """Prefill tokens this step may take: the token budget less one per decode row."""
        return self.config.max_batched_tokens - len(self._decode)

    def _admit(self, kv, rejected: list) -> list[PrefillChunk]:
        cfg = self.config
        budget = self.prefill_budget()
        watermark = self.watermark_blocks(kv)
        reserve = self.reserve_blocks(kv)
        chunks: list[PrefillChunk] = []
        for r in self.prefilling:  # continue chunked prefills first (admitted: the watermark is behind them)
            if budget <= 0:
                return chunks
            c = min(self.pending[r], budget)
            held = kv.tokens_of(r)
            if kv.blocks_for(held + c) - kv.blocks_for(held) > kv.free_blocks - (reserve - watermark):
                return chunks
            kv.grow(r, c)
            self.pending[r] -= c
            chunks.append(PrefillChunk(r, c))
            budget -= c
        while self._queue and budget > 0 and len(self.running) < cfg.max_num_seqs:
            r = self._queue[0][2]
            ctx = self.context[r]
            # A request that ran before (preempted) may have grown into the watermark: it is
            # re-admitted without one rather than rejected half-way through its answer.
            wm = 0 if r in self.admitted else watermark
            if kv.blocks_for(ctx + 1) > kv.num_blocks - wm:
                heapq.heappop(self._queue)
                rejected.append((r, f"context of {ctx} tokens needs {kv.blocks_for(ctx + 1)} KV blocks; the cache "
                                    f"holds {kv.num_blocks} (watermark {watermark})"))
                del self.views[r], self.context[r]
                continue
            if not self.chunked_prefill and ctx > budget:
                if r in self.admitted:  # a preempted request is recomputed whole, alone if over the budget
                    if budget < cfg.max_batched_tokens:
                        break
                elif ctx > cfg.max_batched_tokens:  # a prompt that never fits a step: turned away, as vLLM v0 does
                    heapq.heappop(self._queue)
                    rejected.append((r, f"context of {ctx} tokens exceeds max_batched_tokens {cfg.max_batched_tokens} "
                                        f"and {self.name} does not chunk prefills"))
                    del self.views[r], self.context[r]
                    continue
                else:
                    break
            c = ctx if not self.chunked_prefill else min(ctx, budget)
            if kv.blocks_for(c) > kv.free_blocks - (reserve - watermark + wm):
                break
            heapq.heappop(self._queue)
            kv.allocate(r, c)
            self.admitted.add(r)
            self.pending[r] = ctx - c
            chunks.append(PrefillChunk(r, c))
            self.running.append(r)
            self.prefilling.append(r)
            budget -= c
        return chunks
