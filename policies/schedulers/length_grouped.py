"""Length-grouped static batching (Sequence Scheduling, Zheng et al., NeurIPS 2023).

Static ("task") batching whose batches are formed from requests of similar predicted
length, so that short answers do not sit as padding behind a long one:

- *Binning.* Waiting requests fall into buckets of ``bucket_tokens`` by predicted
  remaining output length. The next batch is taken from the bucket of the oldest waiting
  request (so no bucket starves), in arrival order; rows the bucket cannot fill go to the
  oldest requests of shorter buckets (``fill_shorter``), which finish within the limit.
- *Variable batch size.* A bucket's batch holds up to ``batch_tokens // bucket_limit``
  requests (bigger batches for short buckets), at most ``max_batch_size``, and only as
  many as the KV cache holds when every member grows to the bucket's limit.
- *Failure collection and recompute.* A batch decodes for at most its bucket's limit.
  When it reaches the limit, members that have not finished are cut: their KV is freed
  (a recompute preemption) and they are queued again with their prompt plus the tokens
  they generated. A predictor that can re-predict (progressive) puts them in the bucket
  of their new predicted remaining length; otherwise their prediction is spent and they
  go to the *failure pool*, a bucket without a limit (as the paper's recompute with the
  maximum length), batched like any other by the age of its oldest request.
- A progressive predictor is re-asked every ``refresh_every`` generated tokens; a member
  whose new prediction says it will overrun the limit by more than ``early_cut_slack`` is
  cut at once rather than at the limit (less wasted decoding and a shorter recompute).

Finished members stay in the batch as padding and are returned when the batch ends, as
in :mod:`policies.schedulers.static`. The policy needs a length predictor
(``--predictor``); a length controller, when given, is asked for per-request targets for
the requests of each new batch that have not started (see :mod:`.syncintellects`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.contract import PrefillChunk, RequestView, SchedulerView, StepPlan, StepResult
from policies.schedulers.bucket_queue import BucketQueue
from policies.schedulers.lengths import UNBOUNDED, LengthTracker, resolve_predictor

FAILURE_POOL = -1


@dataclass(frozen=True)
class LengthGroupedConfig:
    batch_size: int = 16            # batch size of the failure pool (and of every bucket if not variable)
    bucket_tokens: int = 50         # bucket width in predicted tokens (Sequence Scheduling's granularity)
    variable_batch: bool = True
    batch_tokens: int = 16 * 512    # variable batch size: rows * bucket limit per batch
    max_batch_size: int = 128
    early_cut_slack: float = 0.25   # progressive: cut when the new prediction exceeds the limit by this fraction
    limit_slack: float = 0.0        # a bucket's limit is its upper edge times (1 + limit_slack)
    fill_shorter: bool = True       # fill a batch's free rows with the oldest requests of shorter buckets


class LengthGroupedBatching:
    """Static batching grouped by predicted length, with failure recompute and variable batch size."""

    name = "length-grouped"
    default_predictor: str | None = None

    def __init__(self, config: LengthGroupedConfig | None = None, *, predictor=None, controller=None, **overrides):
        self.config = config or LengthGroupedConfig(**overrides)
        c = self.config
        if c.batch_size < 1 or c.bucket_tokens < 1 or c.max_batch_size < 1 or c.batch_tokens < 1:
            raise ValueError(f"batch_size, bucket_tokens, batch_tokens and max_batch_size must be >= 1, got {c}")
        self.predictor = resolve_predictor(self.name, predictor, self.default_predictor)
        self.controller = controller
        self.lengths = LengthTracker(self.predictor)
        self.initial_predictions = self.lengths.initial
        self.waiting = BucketQueue()         # request ids by bucket, in arrival order
        self.context: dict[int, int] = {}   # tokens to prefill when (re)admitted: prompt (+ generated)
        self.instruction_tokens: dict[int, int] = {}  # prompt tokens added by a length instruction
        self.started: set[int] = set()      # prefilled at least once (no directive any more)
        self.cuts: dict[int, int] = {}      # request -> times cut from a batch
        self.batch: tuple[int, ...] = ()
        self.batch_limit = 0                # tokens a member may generate in this batch
        self.batch_tokens_done = 0          # tokens each member row has made in this batch
        self._prefilled = False
        self._slots: np.ndarray | None = None
        self._last_plan: StepPlan | None = None

    # -- buckets -------------------------------------------------------------------
    def bucket_of(self, rid: int) -> int:
        """Bucket index by predicted remaining tokens; the failure pool when the prediction is spent."""
        lt = self.lengths
        if lt.predicted[rid] <= lt.generated[rid]:
            return FAILURE_POOL
        return int((lt.predicted[rid] - lt.generated[rid] - 1) // self.config.bucket_tokens)

    def bucket_limit(self, bucket: int, view: RequestView, generated: int) -> int:
        # a length instruction's tokens take their room in the model context from the answer
        room = max(view.max_output_tokens - self.instruction_tokens.get(view.request_id, 0) - generated, 1)
        if bucket == FAILURE_POOL:
            return room
        return min(int((bucket + 1) * self.config.bucket_tokens * (1.0 + self.config.limit_slack)), room)

    def bucket_batch_size(self, bucket: int) -> int:
        c = self.config
        if bucket == FAILURE_POOL or not c.variable_batch:
            return c.batch_size
        return max(1, min(c.max_batch_size, c.batch_tokens // ((bucket + 1) * c.bucket_tokens)))

    def select(self, kv) -> tuple[list[int], int]:
        """The next batch (request ids) and its per-member token limit."""
        head = self.waiting.head()
        bucket = self.bucket_of(head)
        size = self.bucket_batch_size(bucket)
        lt = self.lengths
        chosen, limit = [], 0
        # Candidates in queue order: the head's bucket, then (to fill free rows) shorter buckets, whose
        # requests finish within the limit. Only the first `size` can be chosen.
        same = self.waiting.first(bucket, size)
        if self.config.fill_shorter and len(same) < size:
            same += self.waiting.first_below(bucket, size - len(same))
        for r in same:
            if len(chosen) == size:
                break
            lim = max(limit, self.bucket_limit(bucket, lt.views[r], lt.generated[r]))
            # every member's row grows for the whole batch (finished rows are padding)
            need_next = sum(kv.blocks_for(self.context[m] + lim) for m in chosen + [r])
            if need_next > kv.free_blocks:
                break
            chosen.append(r)
            limit = lim
        return chosen, limit

    # -- contract ------------------------------------------------------------------
    def plan(self, view: SchedulerView) -> StepPlan:
        kv = view.kv
        for v in view.arrivals:
            self.lengths.add(v)
            self.context[v.request_id] = v.prompt_tokens
            self.waiting.add(v.request_id, self.bucket_of(v.request_id), v.arrival_s)
        plan = self._plan(kv)
        self._last_plan = plan
        return plan

    def observe(self, result: StepResult) -> None:
        self.lengths.observe(self._last_plan, result)
        if result.prefilled:
            self._prefilled = True
            self.batch_tokens_done = 1
        elif self._last_plan is not None and self._last_plan.decode:
            self.batch_tokens_done += result.num_steps

    # -- planning --------------------------------------------------------------------
    def _plan(self, kv) -> StepPlan:
        release: list[int] = []
        preempt: list[int] = []
        if self.batch and self._prefilled:
            lt = self.lengths
            unfinished = [r for r in self.batch if r not in lt.done]
            if unfinished and self.batch_tokens_done < self.batch_limit:
                lt.refresh_due(unfinished)
                late = self._early_cuts(unfinished)
                if late:
                    self._cut(late, kv, preempt)
                    self.batch = tuple(r for r in self.batch if r not in preempt)
                    self._slots = None
                    unfinished = [r for r in unfinished if r not in preempt]
                if unfinished:
                    steps = min(kv.max_decode_steps(self._slot_array(kv), UNBOUNDED),
                                self.batch_limit - self.batch_tokens_done, lt.steps_to_refresh(unfinished))
                    if steps >= 1:
                        return StepPlan(decode=self.batch, preempt=tuple(preempt), max_steps=steps,
                                        wake_on_arrival=False)
            # the batch is over: collect its failures for recompute, return its finished members
            self._cut(unfinished, kv, preempt)
            for r in self.batch:
                if r in lt.done:
                    kv.free(r)
                    release.append(r)
                    self._forget(r)
            self.batch, self._slots = (), None
        return self._start_batch(kv, tuple(release), tuple(preempt))

    def _early_cuts(self, unfinished: list[int]) -> list[int]:
        """Members whose refreshed prediction overruns the batch's limit by more than the slack."""
        if not self.lengths.refresh_every:
            return []
        lt, c = self.lengths, self.config
        start = {r: lt.generated[r] - self.batch_tokens_done for r in unfinished}
        return [r for r in unfinished
                if lt.predicted[r] - start[r] > self.batch_limit * (1.0 + c.early_cut_slack)]

    def _cut(self, rids: list[int], kv, preempt: list[int]) -> None:
        """Recompute preemption of unfinished members: free KV, requeue with prompt + generated tokens."""
        lt = self.lengths
        for r in rids:
            kv.free(r)
            preempt.append(r)
            self.cuts[r] = self.cuts.get(r, 0) + 1
            self.context[r] = lt.views[r].prompt_tokens + self.instruction_tokens.get(r, 0) + lt.generated[r]
            if lt.refresh_every:
                lt.repredict(r)
            self._requeue(r)

    def _requeue(self, rid: int) -> None:
        """Back into the queue at its arrival position, in the bucket of its new prediction."""
        self.waiting.add(rid, self.bucket_of(rid), self.lengths.views[rid].arrival_s)

    def _forget(self, rid: int) -> None:
        self.lengths.forget(rid)
        self.context.pop(rid, None)
        self.instruction_tokens.pop(rid, None)
        self.started.discard(rid)
        self.cuts.pop(rid, None)

    def _slot_array(self, kv) -> np.ndarray:
        if self._slots is None:
            self._slots = kv.slots(self.batch)
        return self._slots

    def _start_batch(self, kv, release: tuple[int, ...], preempt: tuple[int, ...]) -> StepPlan:
        rejected = []
        while self.waiting:
            chosen, limit = self.select(kv)
            if chosen:
                break
            head = self.waiting.head()  # cannot fit even alone in the free cache
            self.waiting.remove(head)
            v = self.lengths.views[head]
            rejected.append((head, f"context of {self.context[head]} tokens plus a bucket limit of "
                                   f"{self.bucket_limit(self.bucket_of(head), v, self.lengths.generated[head])} "
                                   f"tokens exceeds the KV cache of {kv.capacity_tokens} tokens"))
            self._forget(head)
        else:
            return StepPlan(release=release, preempt=preempt, reject=tuple(rejected))
        for r in chosen:
            self.waiting.remove(r)
        directives = self._directives([r for r in chosen if r not in self.started])
        kept = []
        added = {d.request_id: d for d in directives}
        for r in chosen:  # the instruction is part of the prompt: KV for prompt + instruction
            d = added.get(r)
            if d is not None and kv.allocate(r, self.context[r] + d.prompt_tokens_added):
                self.context[r] += d.prompt_tokens_added
                self.instruction_tokens[r] = d.prompt_tokens_added
                kept.append(d)
            elif not kv.allocate(r, self.context[r]):  # select() made sure the batch fits
                raise RuntimeError(f"KV allocation of {self.context[r]} tokens for request {r} failed after select()")
        directives = tuple(kept)
        self.started.update(chosen)
        self.batch = tuple(chosen)
        self.batch_limit = limit
        self.batch_tokens_done = 0
        self._prefilled = False
        self._slots = None
        pad_to = max(self.context[r] for r in chosen)
        return StepPlan(prefill=tuple(PrefillChunk(r, self.context[r]) for r in chosen), release=release,
                        preempt=preempt, reject=tuple(rejected), directives=directives, prefill_pad_to=pad_to,
                        wake_on_arrival=False)

    def _directives(self, fresh: list[int]) -> tuple:
        """The length controller's targets for the batch's requests that have not started."""
        if self.controller is None or not fresh:
            return ()
        lt = self.lengths
        targets = self.controller.target_lengths([lt.views[r] for r in fresh], [lt.predicted[r] for r in fresh])
        if len(targets) != len(fresh):
            raise ValueError(f"length controller returned {len(targets)} targets for a batch of {len(fresh)}")
        return tuple(d for d in targets if d is not None)
