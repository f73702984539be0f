"""Shortest-job-first by predicted output length, on continuous batching.

The waiting queue is ordered by the predictor's total output length at arrival (ties by
arrival time); running requests are never preempted for a shorter one (a request that
lost its KV to memory pressure goes back to the head of the queue, as in
:mod:`policies.schedulers.continuous`). Everything else is continuous batching. Needs a
length predictor (``--predictor``).
"""
from __future__ import annotations

from policies.contract import RequestView, SchedulerView, StepPlan, StepResult
from policies.schedulers.continuous import ContinuousBatching, ContinuousConfig
from policies.schedulers.lengths import LengthTracker, resolve_predictor


class SJFBatching(ContinuousBatching):
    """Continuous batching with the queue ordered by predicted output length (non-preemptive)."""

    name = "sjf"
    default_predictor: str | None = None

    def __init__(self, config: ContinuousConfig | None = None, *, predictor=None, **overrides):
        super().__init__(config, **overrides)
        self.predictor = resolve_predictor(self.name, predictor, self.default_predictor)
        self.lengths = LengthTracker(self.predictor)
        self.initial_predictions = self.lengths.initial
        self._last_plan: StepPlan | None = None

    def queue_key(self, view: RequestView) -> tuple:
        rid = view.request_id
        lt = self.lengths
        if rid not in lt.views:
            lt.add(view)
        return (lt.predicted[rid], view.arrival_s)

    def plan(self, view: SchedulerView) -> StepPlan:
        plan = super().plan(view)
        for r in plan.release:
            self.lengths.forget(r)
        for r, _ in plan.reject:
            self.lengths.forget(r)
        self._last_plan = plan
        return plan

    def observe(self, result: StepResult) -> None:
        self.lengths.observe(self._last_plan, result)
        super().observe(result)
