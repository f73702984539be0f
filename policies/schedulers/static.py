"""Static "task" batching, the SyncIntellects paper's baseline.

Take up to ``batch_size`` waiting requests in arrival order, prefill them together (each
prompt left-padded to the longest, as a padded ``generate()`` call does) and decode the
batch until every member has produced its last token. Nobody joins mid-batch; finished
rows stay in the batch as padding; every member's response is returned when the batch
ends. A batch is only formed if the cache can hold its worst case (every row growing for
as many steps as the longest possible answer), so a running batch never runs out of KV.

Subclasses choose *which* waiting requests form the next batch (:meth:`select`), e.g.
grouping by predicted length.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from policies.contract import PrefillChunk, RequestView, SchedulerView, StepPlan, StepResult

UNBOUNDED = 1 << 30


@dataclass(frozen=True)
class StaticConfig:
    batch_size: int = 16


class StaticBatching:
    name = "static"

    def __init__(self, config: StaticConfig | None = None, **overrides):
        self.config = config or StaticConfig(**overrides)
        if self.config.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.config.batch_size}")
        self.waiting: deque[RequestView] = deque()
        self.batch: tuple[int, ...] = ()
        self._prefilled = False
        self._unfinished = 0
        self._slots: np.ndarray | None = None

    # -- batch formation (override to group differently) ------------------------
    def select(self, waiting: deque[RequestView], kv) -> list[RequestView]:
        """Pick the next batch from the head of the queue, FCFS, within the worst-case KV."""
        return self.fit_worst_case([waiting[i] for i in range(min(self.config.batch_size, len(waiting)))], kv)

    @staticmethod
    def fit_worst_case(candidates: list[RequestView], kv) -> list[RequestView]:
        """The longest prefix of ``candidates`` whose worst-case KV footprint fits the free cache."""
        chosen: list[RequestView] = []
        longest = 0
        for v in candidates:
            longest_next = max(longest, v.max_output_tokens)
            need = sum(kv.blocks_for(c.prompt_tokens + longest_next) for c in chosen + [v])
            if need > kv.free_blocks:
                break
            chosen.append(v)
            longest = longest_next
        return chosen

    # -- contract ----------------------------------------------------------------
    def plan(self, view: SchedulerView) -> StepPlan:
        kv = view.kv
        self.waiting.extend(view.arrivals)
        release: tuple[int, ...] = ()
        if self.batch and self._prefilled and self._unfinished == 0:
            release = self.batch
            for r in release:
                kv.free(r)
            self.batch, self._slots = (), None
        if not self.batch:
            return self._start_batch(kv, release)
        steps = kv.max_decode_steps(self._slot_array(kv), UNBOUNDED)
        return StepPlan(decode=self.batch, release=release, max_steps=steps, wake_on_arrival=False)

    def observe(self, result: StepResult) -> None:
        if result.prefilled:
            self._prefilled = True
        self._unfinished -= len(result.finished)

    # -- helpers -----------------------------------------------------------------
    def _slot_array(self, kv) -> np.ndarray:
        if self._slots is None:
            self._slots = kv.slots(self.batch)
        return self._slots

    def _start_batch(self, kv, release: tuple[int, ...]) -> StepPlan:
        rejected = []
        while self.waiting:
            chosen = self.select(self.waiting, kv)
            if chosen:
                break
            head = self.waiting.popleft()  # cannot fit even alone in an empty cache
            rejected.append((head.request_id, f"worst case of {head.prompt_tokens}+{head.max_output_tokens} tokens "
                                              f"exceeds the KV cache of {kv.capacity_tokens} tokens"))
        else:
            return StepPlan(release=release, reject=tuple(rejected))
        if all(self.waiting[k] is v for k, v in enumerate(chosen)):  # FCFS: the head of the queue, O(batch)
            for _ in chosen:
                self.waiting.popleft()
        else:  # a subclass chose from elsewhere in the queue
            ids = {v.request_id for v in chosen}
            self.waiting = deque(v for v in self.waiting if v.request_id not in ids)
        for v in chosen:
            kv.allocate(v.request_id, v.prompt_tokens)
        self.batch = tuple(v.request_id for v in chosen)
        self._prefilled = False
        self._unfinished = len(chosen)
        pad_to = max(v.prompt_tokens for v in chosen)
        return StepPlan(prefill=tuple(PrefillChunk(v.request_id, v.prompt_tokens) for v in chosen), release=release,
                        reject=tuple(rejected), prefill_pad_to=pad_to, wake_on_arrival=False)
