"""The SyncIntellects policy: progressive length prediction + length grouping + length control.

``syncintellects`` (the paper's setting, static/task batching) is length-grouped batching
(:mod:`.length_grouped`) driven by a progressive predictor: requests are grouped by
predicted length; members are re-predicted every ``refresh_every`` generated tokens, and
one predicted to overrun its group is cut early and regrouped by its new prediction; and,
with ``--length-control on``, the length controller gives each new batch's requests a
target length (with its prompt instruction), applied before their prefill, to pull the
group's lengths together. With an exact predictor and no controller it makes exactly the
plans of ``length-grouped``.

``syncintellects-continuous`` is the same idea on continuous batching: SRPT by
progressively predicted remaining length with TRAIL-style limited preemption
(:mod:`.srpt`), plus the controller's directives on each request's first prefill.

Both default to the ``progressive`` predictor when none is given.
"""
from __future__ import annotations

from dataclasses import replace

from policies.contract import SchedulerView, StepPlan
from policies.schedulers.length_grouped import LengthGroupedBatching
from policies.schedulers.srpt import SRPTBatching, SRPTConfig


class SyncIntellects(LengthGroupedBatching):
    """Length-grouped static batching with progressive prediction and optional length control."""

    name = "syncintellects"
    default_predictor = "progressive"


class SyncIntellectsContinuous(SRPTBatching):
    """SRPT with limited preemption on continuous batching, plus length control at admission."""

    name = "syncintellects-continuous"
    default_predictor = "progressive"

    def __init__(self, config: SRPTConfig | None = None, *, predictor=None, controller=None, **overrides):
        super().__init__(config, predictor=predictor, **overrides)
        self.controller = controller
        self._started: set[int] = set()

    def plan(self, view: SchedulerView) -> StepPlan:
        plan = super().plan(view)
        for r in plan.release:
            self._started.discard(r)
        fresh = [c.request_id for c in plan.prefill if c.request_id not in self._started]
        self._started.update(fresh)
        if self.controller is None or not fresh:
            return plan
        lt = self.lengths
        targets = self.controller.target_lengths([lt.views[r] for r in fresh], [lt.predicted[r] for r in fresh])
        if len(targets) != len(fresh):
            raise ValueError(f"length controller returned {len(targets)} targets for {len(fresh)} requests")
        directives = []
        kv = view.kv
        for d in targets:  # the instruction joins the prompt: its tokens go into the first chunk
            if d is None:
                continue
            held = kv.tokens_of(d.request_id)
            extra = kv.blocks_for(held + d.prompt_tokens_added) - kv.blocks_for(held)
            if extra <= kv.free_blocks - self.reserve_blocks(kv) and kv.grow(d.request_id, d.prompt_tokens_added):
                self.context[d.request_id] += d.prompt_tokens_added
                directives.append(d)
        if directives:
            extra = {d.request_id: d.prompt_tokens_added for d in directives}
            chunks = tuple(replace(c, num_tokens=c.num_tokens + extra.get(c.request_id, 0)) for c in plan.prefill)
            plan = replace(plan, prefill=chunks, directives=tuple(directives))
            self._last_plan = plan
        return plan
