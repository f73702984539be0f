"""Shortest-remaining-predicted-time first with limited preemption (TRAIL-style), on continuous batching.

The queue is ordered by predicted *remaining* output tokens. With a progressive predictor
(``refresh_every = k``) running requests are re-predicted every ``k`` generated tokens;
the plan's ``max_steps`` is capped at the next re-prediction point so the policy sees
every one of them.

Preemption for priority is limited as in TRAIL (Shahout et al., arXiv 2410.01035): when
the head of the queue cannot be admitted (KV or sequence limit), a running request whose
predicted remaining length is over ``min_ratio`` times the head's may be preempted (recompute) only
if it is still early (generated < ``early_fraction`` of its predicted total) and has been
preempted fewer than ``max_preemptions`` times; never near its end. When memory runs out
the request with the longest predicted remaining length is preempted, as a priority
scheduler would. Recompute is not free (the prompt is prefilled again: about a thousand
tokens on the Azure conversation trace), which is why a victim must be much longer than
the request it makes room for. Needs a length predictor (``--predictor``).
"""
from __future__ import annotations

from dataclasses import dataclass

from policies.contract import RequestView, SchedulerView, StepPlan
from policies.schedulers.continuous import ContinuousConfig
from policies.schedulers.lengths import with_step_cap
from policies.schedulers.sjf import SJFBatching


@dataclass(frozen=True)
class SRPTConfig(ContinuousConfig):
    early_fraction: float = 0.5
    max_preemptions: int = 1
    min_ratio: float = 2.0        # preempt only a request predicted to need this many times the head's remaining


class SRPTBatching(SJFBatching):
    """Continuous batching by predicted remaining length, preempting long requests only early and rarely."""

    name = "srpt"

    def __init__(self, config: SRPTConfig | None = None, *, predictor=None, **overrides):
        super().__init__(config or SRPTConfig(**overrides), predictor=predictor)
        if not 0.0 <= self.config.early_fraction <= 1.0 or self.config.max_preemptions < 0:
            raise ValueError(f"srpt needs 0 <= early_fraction <= 1 and max_preemptions >= 0, got {self.config}")
        self.preemptions: dict[int, int] = {}

    def queue_key(self, view: RequestView) -> tuple:
        rid = view.request_id
        if rid not in self.lengths.views:
            self.lengths.add(view)
        return (self.lengths.remaining(rid), view.arrival_s)

    def may_preempt(self, rid: int) -> bool:
        """TRAIL's limit: early in the request and not preempted too often."""
        lt = self.lengths
        return (self.preemptions.get(rid, 0) < self.config.max_preemptions
                and lt.generated[rid] < self.config.early_fraction * lt.predicted[rid])

    def preempt_victim(self, candidates: list[int]) -> int:
        # memory pressure: someone must go; the longest predicted remaining loses least by waiting
        rank = {r: i for i, r in enumerate(candidates)}
        victim = max(candidates, key=lambda r: (self.lengths.remaining(r), rank[r]))
        self.preemptions[victim] = self.preemptions.get(victim, 0) + 1
        return victim

    # -- contract --------------------------------------------------------------------
    def plan(self, view: SchedulerView) -> StepPlan:
        self.lengths.refresh_due(self._decode)
        plan = super().plan(view)
        for r in plan.release:
            self.preemptions.pop(r, None)
        plan = with_step_cap(plan, self.lengths.steps_to_refresh(plan.decode))
        self._last_plan = plan
        return plan

    def _make_room(self, kv) -> tuple[int, ...]:
        return super()._make_room(kv) + self._preempt_for_shorter(kv)

    # -- priority preemption ---------------------------------------------------------
    def _head_blocked(self, kv) -> bool:
        cfg = self.config
        if len(self.running) >= cfg.max_num_seqs:
            return True
        head = self._queue[0][2]
        wm = 0 if head in self.admitted else self.watermark_blocks(kv)
        if kv.blocks_for(self.context[head] + 1) > kv.num_blocks - wm:
            return False  # it can never fit: the base policy rejects it, nobody should make room
        budget = cfg.max_batched_tokens - len(self._decode)
        if budget <= 0:
            return False  # a compute limit, not a memory one: preempting would not help
        return kv.blocks_for(min(self.context[head], budget)) > kv.free_blocks - self.reserve_blocks(kv)

    def _preempt_for_shorter(self, kv) -> tuple[int, ...]:
        out: list[int] = []
        lt = self.lengths
        while self._queue and self._head_blocked(kv):
            head_remaining = lt.remaining(self._queue[0][2])
            victims = [r for r in self._decode
                       if self.may_preempt(r) and lt.remaining(r) > self.config.min_ratio * head_remaining]
            if not victims:
                break
            rank = {r: i for i, r in enumerate(self.running)}
            v = max(victims, key=lambda r: (lt.remaining(r), rank[r]))
            self.preemptions[v] = self.preemptions.get(v, 0) + 1
            self.evict(v, kv)
            self._enqueue(v)  # unlike a memory preemption, queued by its own priority
            out.append(v)
        return tuple(out)
