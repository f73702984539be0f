"""vLLM's scheduler before chunked prefill (vLLM <= 0.5; Vidur's ``vllm`` scheduler).

Iteration-level batching that puts prefills first: whenever a waiting request can be
admitted, the step is a *prefill-only* step (whole prompts, first-come-first-served, within
``max_batched_tokens``, ``max_num_seqs`` and the free KV blocks above the watermark), and every
running decode pauses for it. Only when nothing can be admitted does a step decode all running
requests; if the cache cannot hold one more decode step, the newest request is preempted and
later recomputed. A prompt is never split across steps: one larger than ``max_batched_tokens``
is turned away with a reason (vLLM v0 refuses such prompts too).

A preempted request is recomputed as one prefill of its prompt and the tokens generated so far.
That context may have outgrown ``max_batched_tokens``; vLLM v0 never meets this case because it
requires ``max_num_batched_tokens >= max_model_len`` without chunked prefill, so every sequence
fits one step. Here (no model length limit) such a request is recomputed anyway, alone in a
prefill-only step over the budget, once it heads the queue: a request that started is finished,
never turned away half-way through its answer.

It differs from :class:`~policies.schedulers.continuous.ContinuousBatching` (chunked prefill
mixed into decode steps, Sarathi-style) only in how a step is composed, so it reuses that
class's queue, admission, preemption and bookkeeping.
"""
from __future__ import annotations

from policies.contract import SchedulerView, StepPlan
from policies.schedulers.continuous import UNBOUNDED, ContinuousBatching


class VLLMv0(ContinuousBatching):
    name = "vllm-v0"
    chunked_prefill = False

    def prefill_budget(self) -> int:
        return self.config.max_batched_tokens  # decodes pause: a prefill step has the whole budget

    def reserve_blocks(self, kv) -> int:
        return self.watermark_blocks(kv)  # vLLM v0 admits while free blocks stay above the watermark

    def plan(self, view: SchedulerView) -> StepPlan:
        kv = view.kv
        release = self._intake(view)
        rejected: list[tuple[int, str]] = []
        chunks = self._admit(kv, rejected)
        if chunks:  # prefill-only step: running decodes wait
            return StepPlan(prefill=tuple(chunks), release=release, reject=tuple(rejected), max_steps=1)
        preempt = self._make_room(kv)
        decode = self._decode
        if not decode:
            return StepPlan(release=release, preempt=preempt, reject=tuple(rejected))
        steps = 1 if rejected else kv.max_decode_steps(self._slots(kv), UNBOUNDED)
        return StepPlan(decode=decode, release=release, preempt=preempt, reject=tuple(rejected), max_steps=steps)
