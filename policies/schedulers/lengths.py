"""Per-request length bookkeeping shared by the length-aware schedulers.

A length-aware policy sees output lengths only through its predictor. This module keeps,
for every request the policy holds, its current predicted *total* output length, the
tokens it has generated so far (counted from the step results, the only place a policy
learns about progress) and, for progressive predictors (``refresh_every = k``), when the
next re-prediction is due. It also keeps the first prediction per request, which the
engine copies into the run records as ``predicted_tokens``.

Counting rule (from :class:`policies.contract.StepResult`): every decode row of the plan
that is not padding made ``num_steps`` tokens; every request in ``prefilled`` made one.
"""
from __future__ import annotations

from typing import Iterable

from policies.contract import LazyTexts, RequestView, StepPlan, StepResult

UNBOUNDED = 1 << 30

PREDICTOR_NAMES = "oracle, noisy, prompt, progressive"


def resolve_predictor(policy_name: str, predictor, default: str | None):
    """The predictor a policy was given, or its documented default, or a clear error.

    Simulated predictors need nothing at construction time (the engine binds the truth
    later), so a policy can build its default itself; trained ones need a model, which
    only the caller knows about, so their failure is reported with the flag to pass.
    """
    if predictor is not None:
        return predictor
    if default is None:
        raise ValueError(f"policy {policy_name!r} schedules by predicted output length and needs a length "
                         f"predictor: pass --predictor ({PREDICTOR_NAMES})")
    try:
        from policies.predictors import make_predictor

        return make_predictor(default, trace=None, seed=0, model_dir=None)
    except Exception as e:  # noqa: BLE001 - any failure means the default cannot be built here
        raise ValueError(f"policy {policy_name!r} defaults to the {default!r} length predictor, which could not be "
                         f"built without arguments ({e}); pass --predictor ({PREDICTOR_NAMES})") from None


class LengthTracker:
    """Predictions and generated-token counts for the requests a policy holds."""

    def __init__(self, predictor):
        self.predictor = predictor
        k = getattr(predictor, "refresh_every", None)
        self.refresh_every: int | None = int(k) if k else None
        self.views: dict[int, RequestView] = {}
        self.predicted: dict[int, float] = {}
        self.generated: dict[int, int] = {}
        self.initial: dict[int, float] = {}
        self.done: set[int] = set()          # produced their last token (padding rows from now on)
        self._next_refresh: dict[int, int] = {}
        self._embedding: dict[int, object] = {}  # the engine's latest state per request: embedding, else text

    # -- predictions ---------------------------------------------------------------
    def add(self, view: RequestView) -> float:
        rid = view.request_id
        self.views[rid] = view
        self.generated[rid] = 0
        p = self._predict(rid)
        self.initial[rid] = p
        if self.refresh_every:
            self._next_refresh[rid] = self.refresh_every
        return p

    def _predict(self, rid: int) -> float:
        g = self.generated[rid]
        state = self._embedding.get(rid)
        if callable(state):  # text decoded on demand, once
            state = self._embedding[rid] = state()
        p = float(self.predictor.predict(self.views[rid], g, state))
        p = max(p, g + 1.0)  # the contract's floor; guards against a predictor that forgets it
        self.predicted[rid] = p
        return p

    def repredict(self, rid: int) -> float:
        """Predict again from the request's current progress (after a recompute, say)."""
        return self._predict(rid)

    def remaining(self, rid: int) -> float:
        return max(self.predicted[rid] - self.generated[rid], 1.0)

    def refresh_due(self, rids: Iterable[int]) -> list[int]:
        """Re-predict every request in ``rids`` that passed its next re-prediction point."""
        k = self.refresh_every
        if not k:
            return []
        changed = []
        for r in rids:
            if r in self.done:
                continue
            g = self.generated[r]
            if g >= self._next_refresh[r]:
                self._next_refresh[r] = (g // k + 1) * k
                self._predict(r)
                changed.append(r)
        return changed

    def steps_to_refresh(self, rids: Iterable[int]) -> int:
        """Decode steps until the first of ``rids`` reaches its next re-prediction point."""
        if not self.refresh_every:
            return UNBOUNDED
        gaps = [self._next_refresh[r] - self.generated[r] for r in rids if r not in self.done]
        return max(1, min(gaps)) if gaps else UNBOUNDED

    # -- progress from step results -----------------------------------------------------
    def observe(self, plan: StepPlan | None, result: StepResult) -> None:
        if plan is not None and plan.decode:
            n = result.num_steps
            for r in plan.decode:
                if r not in self.done and r in self.generated:
                    self.generated[r] += n
        for r in result.prefilled:
            if r in self.generated:
                self.generated[r] += 1
        if result.texts:  # predictors accept the answer so far as text when there is no embedding
            texts = result.texts  # a runner's texts are decoded when a prediction reads them (LazyTexts)
            self._embedding.update(texts.deferred() if isinstance(texts, LazyTexts) else texts)
        if result.embeddings:
            self._embedding.update(result.embeddings)
        self.done.update(result.finished)

    def forget(self, rid: int) -> None:
        """Drop a released request (its first prediction stays in :attr:`initial`)."""
        for d in (self.views, self.predicted, self.generated, self._next_refresh, self._embedding):
            d.pop(rid, None)
        self.done.discard(rid)


def with_step_cap(plan: StepPlan, cap: int) -> StepPlan:
    """``plan`` with ``max_steps`` lowered to ``cap`` (a re-prediction point); prefill plans run one step anyway."""
    if plan.prefill or plan.is_idle or cap >= plan.max_steps:
        return plan
    # StepPlan written out rather than dataclasses.replace, which costs more than the rest of a plan
    return StepPlan(plan.decode, plan.prefill, plan.release, plan.preempt, plan.reject, plan.directives,
                    plan.prefill_pad_to, max(1, cap), plan.wake_on_arrival)
