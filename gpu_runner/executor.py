"""The real executor: runs a StepPlan through a model and a paged KV cache.

It mirrors :class:`simulator.executor.SimExecutor` step for step (same plan checks, same
repeat rule, same KV accounting, same Recorder fields), except that tokens come from a
forward pass and time from the clock: every step's duration is measured with
the executor's clock around the whole step (packing, forward, sampling, bookkeeping).

Length modes. *forced*: a request produces exactly its trace's output length: EOS is
masked out before the last token and the last token is EOS (how simulators are validated).
*natural*: the model stops at EOS or at its cap (model context, ``max_new_tokens``).

Clock. ``clock`` is ``time.perf_counter`` (wall time; on a GPU the sampled tokens' ``tolist``
synchronises the device first) or ``time.thread_time`` (the CPU time of the calling thread:
with one torch thread all compute runs on it, so a step's CPU time equals its wall time on
an idle machine but does not count the time other processes steal on a shared one).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from policies.contract import StepPlan, StepResult
from policies.kv_cache import KVCache
from gpu_runner.models import LoadedModel, synthetic_prompt
from gpu_runner.paged import PagedKV, forward, pack
from simulator.metrics import Recorder
from simulator.serving import ExecutorBase, PlanError


class RealExecutor(ExecutorBase):
    def __init__(self, lm: LoadedModel, kv: KVCache, rec: Recorder, prompt_tokens: np.ndarray,
                 output_tokens: np.ndarray, *, forced: bool = True, prompts: list[str] | None = None,
                 seed: int = 0, temperature: float = 0.0, length_response=None, rng: np.random.Generator | None = None,
                 embeddings: bool = False, texts: bool = False, clock=time.perf_counter, repeats: int = 1):
        super().__init__(kv, rec, prompt_tokens, output_tokens, length_response, rng or np.random.default_rng(seed))
        self.lm = lm
        cfg = lm.model.config
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.pool = PagedKV(cfg.num_hidden_layers, kv.num_blocks, kv.block_size, n_kv, hd,
                            next(lm.model.parameters()).dtype, lm.device)
        self.forced = forced
        self.prompts = prompts
        self.seed = seed
        self.temperature = float(temperature)
        # sampling draws come from one stream per request, so a request's tokens do not depend on
        # which other requests shared its batches (the batching depends on measured step times)
        self._streams: dict[int, np.random.Generator] = {}
        rec.output_tokens[:] = self.remaining if forced else 0  # remaining: forced, tokens to make; natural, a cap
        self.cached = np.zeros(len(prompt_tokens), dtype=np.int64)  # tokens whose K/V are in the pool
        self.ctx: dict[int, list[int]] = {}       # prompt ids + generated ids
        self.want_embeddings = embeddings
        self.want_texts = texts and lm.tokenizer is not None  # answer so far, for progressive predictors
        self.text_decode_s = [0.0]  # time spent decoding those texts when read (kept off the virtual clock)
        self.clock = clock
        if int(repeats) < 1:
            raise ValueError(f"step repeats must be >= 1, got {repeats}")
        self.repeats = int(repeats)               # pack + forward timed this many times, the fastest kept
        self.repeat_excess_s = 0.0                # time of the slower repeats (off every step's clock)
        self._last_inputs = None                  # the last step's (decode rows, chunks, pad) for repeat_last()
        self._step_excess = 0.0
        self.step_s: list[float] = []             # measured duration of every step
        self.on_step = None                       # called with each step's duration, off the clock (a probe)
        self.forward_s = 0.0                      # of which inside forward + sampling
        self.segment_work: list[tuple] = []       # (decode rows' KV tokens at the start, chunks, pad): for diagnosis
        self.eos = lm.eos_token_id
        self.is_cuda = str(lm.device).startswith("cuda")

    def tokens_of(self, request_id: int) -> list[int]:
        """Generated token ids of a request."""
        p = int(self.prompt_tokens[request_id])
        return self.ctx.get(request_id, [])[p:]

    # -- plan side effects ----------------------------------------------------------
    def instruction_ids(self, text: str) -> list[int]:
        """Token ids of a length instruction appended to a prompt (no BOS/CLS of its own)."""
        tok = self.lm.tokenizer
        if tok is None:  # a random model without tokenizer: seeded ids, one per estimated token
            from policies.control.controller import estimate_tokens

            return [1000 + k for k in range(estimate_tokens(text))]
        ids = self.lm.encode(" " + text)
        bos = getattr(tok, "bos_token_id", None)
        return ids[1:] if ids and bos is not None and ids[0] == bos else ids

    def set_length(self, i: int, d) -> None:
        """Forced mode: the simulator's length-response model decides the new length. Natural mode:
        the model reads the instruction and decides for itself (capped only by the model context)."""
        if self.forced:
            super().set_length(i, d)

    def add_instruction(self, i: int, d) -> None:
        """The instruction's ids (counted by this executor's tokenizer for the policy) follow the prompt."""
        ids = self.instruction_ids(d.instruction)
        if len(ids) != d.prompt_tokens_added:
            raise PlanError(f"request {i}: the instruction {d.instruction!r} is {len(ids)} tokens for this "
                            f"tokenizer but the directive accounted {d.prompt_tokens_added}")
        self._context(i).extend(ids)  # prompt ids (built now if needed), then the instruction
        super().add_instruction(i, d)

    def preempt(self, request_id: int) -> None:
        """Recompute preemption: drop the K/V; prompt + generated is prefilled again."""
        super().preempt(request_id)
        self.cached[request_id] = 0
        self.pool.release(request_id)

    def release(self, request_id: int) -> None:
        self.pool.release(request_id)

    # -- running --------------------------------------------------------------------
    def run(self, plan: StepPlan, now: float, next_arrival: float) -> StepResult:
        if plan.max_steps < 1:
            raise PlanError(f"plan.max_steps must be >= 1, got {plan.max_steps}")
        idx = np.asarray(plan.decode, dtype=np.int64)
        self.check_decode(idx)
        if plan.prefill:
            return self._run_mixed_step(plan, idx, now)
        return self._run_decode(plan, idx, now, next_arrival)

    def _context(self, i: int) -> list[int]:
        ids = self.ctx.get(i)
        if ids is None:
            p = int(self.prompt_tokens[i])
            syn = synthetic_prompt(self.seed, i, p, self.lm.shape["vocab"], self.eos).tolist()
            text = self.prompts[i] if self.prompts is not None else None
            ids = (self.lm.encode(text) + syn)[:p] if text and self.lm.tokenizer is not None else syn
            self.ctx[i] = ids
        return ids

    def _sample(self, logits: torch.Tensor, rows: list[int], emits: list[bool], order: list[int]) -> list[int]:
        """Next token per row of ``rows``, whose logits are ``logits[order]``; forced mode masks EOS except for
        a request's last token.

        Greedy decoding takes each logit row's argmax (the first maximal index) and reorders the tokens, not
        the logits: on a CPU with numpy, whose argmax over a 128 x 32,000 float32 block took 0.6 ms where
        torch's took 5.7 ms and the reordering copy of the block 1.7 ms (in a 128-row tiny-llama decode step
        of ~20 ms); on a GPU with torch, which also synchronises the device so the step's clock reading is
        true. Sampling (temperature > 0) draws one uniform per emitted token from the request's own seeded
        stream (inverse CDF), so the same seed gives the same tokens whatever the batching."""
        if self.forced:
            logits[:, self.eos] = float("-inf")
        if self.temperature <= 0:
            if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64, torch.float16):
                best = logits.numpy().argmax(-1).tolist()
            else:
                best = logits.argmax(-1).tolist()
            out = [best[k] for k in order]
        else:
            logits = logits[order]
            probs = torch.softmax(logits.double() / self.temperature, dim=-1).cpu().numpy()
            out = [0] * len(rows)
            for k, (r, e) in enumerate(zip(rows, emits)):
                if e:
                    rng = self._streams.get(r)
                    if rng is None:
                        rng = self._streams[r] = np.random.default_rng([self.seed, 11, r])
                    cdf = np.cumsum(probs[k])
                    out[k] = int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
        if self.forced:
            rem = self.remaining
            out = [self.eos if rem[r] == 1 else t for r, t in zip(rows, out)]
        return out

    def _forward(self, idx: np.ndarray, chunks, pad_to: int):
        """One step of compute; returns (tokens per decode row, tokens per chunk, hidden per row)."""
        pool, cached, eos = self.pool, self.cached, self.eos
        dec = []
        for r in idx.tolist():
            c = int(cached[r])
            ctx = self.ctx[r]
            pool.ensure(r, c + 1)
            dec.append((r, ctx[c] if c < len(ctx) else eos, c))  # past the end: a padded row
        chs = []
        for ch in chunks:
            r, c0 = ch.request_id, int(cached[ch.request_id])
            pool.ensure(r, c0 + ch.num_tokens)
            chs.append((r, self._context(r)[c0:c0 + ch.num_tokens], c0))
        self._last_inputs = (dec, chs, pad_to)
        t0 = self.clock()
        inp = pack(pool, dec, chs, pad_to, self.lm.device)
        logits, hidden = forward(self.lm.model, pool, inp)
        if self.repeats > 1:  # minimum-of-k: the step's compute again (it rewrites the same K/V), the fastest kept
            t0 = self._fastest_of(self.repeats, t0, pool, dec, chs, pad_to)
        # chunks are packed loose-first then padded; map logit rows back to plan order
        loose = [k for k, c in enumerate(chs) if not (pad_to > 0 and c[2] == 0)]
        padded = [k for k, c in enumerate(chs) if pad_to > 0 and c[2] == 0]
        order = list(range(len(dec))) + [len(dec) + j for j in np.argsort(loose + padded).tolist()]
        rows = [r for r, _, _ in dec] + [c[0] for c in chs]
        emits = [self.remaining[r] > 0 for r, _, _ in dec] + [ch.num_tokens == self.pending[ch.request_id]
                                                               for ch in chunks]
        toks = self._sample(logits, rows, emits, order)
        self.forward_s += self.clock() - t0
        emb = hidden[order] if self.want_embeddings else None
        return toks[:len(dec)], toks[len(dec):], emb

    def _fastest_of(self, k: int, t0: float, pool, dec, chs, pad_to: int) -> float:
        """Run pack + forward ``k - 1`` more times; return a start time such that ``clock() - start`` counts
        only the fastest of the ``k`` runs (the slower runs' time is added to ``repeat_excess_s``).

        Repeating is safe: the pass writes the same K/V into the same pool slots and its outputs are
        discarded (the last run's logits are those of the first, computed by the same kernels on the
        same inputs). Taking the fastest of k back-to-back runs filters what slows one run and not the
        next (a context switch that evicts the caches, a sibling's burst); the profiler times its grid
        with the same k, so profile and run measure the same thing."""
        sync = torch.cuda.synchronize if self.is_cuda else (lambda: None)
        sync()
        times = [self.clock() - t0]
        for _ in range(k - 1):
            t1 = self.clock()
            inp = pack(pool, dec, chs, pad_to, self.lm.device)
            forward(self.lm.model, pool, inp)
            sync()
            times.append(self.clock() - t1)
        excess = sum(times) - min(times)
        self.repeat_excess_s += excess
        self._step_excess += excess
        return self.clock() - min(times)

    def repeat_last(self) -> None:
        """The last step's pack + forward again, outputs discarded, on no clock (it rewrites the same K/V
        into the same slots, as the minimum-of-k repeats do): called right after that step, before any
        request of it is released."""
        if self._last_inputs is None:
            return
        dec, chs, pad_to = self._last_inputs
        forward(self.lm.model, self.pool, pack(self.pool, dec, chs, pad_to, self.lm.device))
        if self.is_cuda:
            torch.cuda.synchronize()

    def _emit(self, i: int, tok: int, finished: list) -> None:
        """Record one generated token of request i (the caller stamps finish times)."""
        rec = self.rec
        self.ctx[i].append(tok)
        rec.generated[i] += 1
        self.remaining[i] -= 1
        if self.remaining[i] == 0 or (not self.forced and tok == self.eos):
            self.remaining[i] = 0
            if not self.forced:
                rec.output_tokens[i] = rec.generated[i]
            finished.append(i)

    def _run_decode(self, plan: StepPlan, idx: np.ndarray, now: float, next_arrival: float) -> StepResult:
        kv, rec = self.kv, self.rec
        slots = kv.slots(plan.decode)
        self.segment_work.append((int(kv._tokens[slots].sum()), (), 0))
        active = idx[self.remaining[idx] > 0]
        n_active = len(active)
        finished: list[int] = []
        start, n, emb = now, 0, None
        while n < plan.max_steps:
            t0 = self.clock()
            self._step_excess = 0.0
            toks, _, emb = self._forward(idx, (), 0)
            kv.append(slots, 1)
            self.cached[idx] += 1
            for r, t in zip(idx.tolist(), toks):
                if self.remaining[r] > 0:
                    self._emit(r, t, finished)
            dt = self.clock() - t0 - self._step_excess
            self.step_s.append(dt)
            if self.on_step is not None:
                self.on_step(dt)
            now += dt
            n += 1
            if finished or (plan.wake_on_arrival and now >= next_arrival):
                break
        if finished:
            rec.last_token_s[np.asarray(finished)] = now
        rec.segment(start, now, n, len(idx), len(idx) - n_active, 0, n * n_active, kv.used_blocks)
        return StepResult(start_s=start, end_s=now, num_steps=n, tokens=n * n_active, finished=tuple(finished),
                          embeddings=self._embeddings(idx.tolist(), emb), texts=self._texts(active.tolist()))

    def _run_mixed_step(self, plan: StepPlan, idx: np.ndarray, now: float) -> StepResult:
        kv, rec = self.kv, self.rec
        for ch in plan.prefill:  # a request's prompt ids exist before its first step (a server tokenizes
            self._context(ch.request_id)  # on arrival, off the engine's step): not step time
        t0 = self.clock()
        self._step_excess = 0.0
        chunks = self.check_prefill(plan, now)
        self.segment_work.append((int(kv._tokens[kv.slots(plan.decode)].sum()) if len(idx) else 0, tuple(chunks),
                                  plan.prefill_pad_to))
        dec_toks, chunk_toks, emb = self._forward(idx, plan.prefill, plan.prefill_pad_to)
        if len(idx):
            kv.append(kv.slots(plan.decode), 1)
            self.cached[idx] += 1
        first, prefilled, finished = [], [], []
        pending_emit = []
        for ch, tok in zip(plan.prefill, chunk_toks):
            i = ch.request_id
            self.pending[i] -= ch.num_tokens
            self.cached[i] += ch.num_tokens
            if self.pending[i] == 0:  # context complete: this step sampled the next token
                prefilled.append(i)
                if rec.generated[i] == 0:
                    first.append(i)
                pending_emit.append((i, tok))
        act = [(r, t) for r, t in zip(idx.tolist(), dec_toks) if self.remaining[r] > 0]
        for i, tok in pending_emit + act:
            self._emit(i, tok, finished)
        end = now + (self.clock() - t0 - self._step_excess)
        self.step_s.append(end - now)
        if self.on_step is not None:
            self.on_step(end - now)
        for i in first:
            rec.first_token_s[i] = end
        if finished:
            rec.last_token_s[np.asarray(finished)] = end
        prefill_tokens = sum(max(c, plan.prefill_pad_to) for c, _ in chunks)
        rec.segment(now, end, 1, len(idx) + len(chunks), len(idx) - len(act), prefill_tokens,
                    len(pending_emit) + len(act), kv.used_blocks)  # useful tokens, as the simulator counts them
        rows = idx.tolist() + [ch.request_id for ch in plan.prefill]
        return StepResult(start_s=now, end_s=end, num_steps=1, tokens=len(pending_emit) + len(act),
                          first_tokens=tuple(first), prefilled=tuple(prefilled), finished=tuple(finished),
                          embeddings=self._embeddings(rows, emb),
                          texts=self._texts([i for i, _ in pending_emit + act]))

    def _embeddings(self, rows: list[int], emb) -> dict:
        if emb is None:
            return {}
        arr = emb.float().cpu().numpy()
        return {r: arr[k] for k, r in enumerate(rows)}

    def _texts(self, rows: list[int]):
        """The answer so far of ``rows``, decoded when read (:class:`policies.contract.LazyTexts`): a request's
        token list is only ever appended to (its instruction before its first token, then its tokens; a
        recompute re-prefills them, nothing is removed), so the ids it holds now are fixed and decoded later;
        the decoding time is summed in ``text_decode_s``, off the clock."""
        if not self.want_texts or not rows:
            return {}
        from policies.contract import LazyTexts

        decode = self.lm.decode
        src = {}
        for r in rows:
            ids, p = self.ctx.get(r, []), int(self.prompt_tokens[r])
            src[r] = (lambda ids=ids, p=p, n=len(ids): decode(ids[p:n]))
        return LazyTexts(src, clock=self.clock, decode_s=self.text_decode_s)
