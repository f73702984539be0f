"""Step-time model: how long one engine step takes, from a calibration profile.

See :mod:`simulator.profile` for the formula. Besides single steps, the model gives the
time of a run of ``n`` identical decode steps in closed form (the batch's total context
grows by ``B`` tokens a step, so attention time is an arithmetic series), which is what
lets the simulator skip over steps in which nothing but token counts change.
"""
from __future__ import annotations

import bisect
import math

from simulator.profile import Profile


class CostModel:
    def __init__(self, profile: Profile):
        c = profile.coefficients
        # a left-padded prefill group's attention (one masked call), when the profile measured it apart
        self.p_pad_sq = float(c["prefill_attn"].get("padded_sq_token_ms", c["prefill_attn"]["per_sq_token_ms"]))
        self.p_mixed = float(c["prefill_attn"].get("mixed_step_ms", 0.0))  # a step with decode rows and chunks
        self.profile = profile
        self._xs = [float(p[0]) for p in c["linear_ops"]]
        self._ys = [float(p[1]) for p in c["linear_ops"]]
        self.fixed_ms = float(c["fixed_step_ms"])
        d, p = c["decode_attn"], c["prefill_attn"]
        self.d_step, self.d_seq, self.d_ctx = float(d["per_step_ms"]), float(d["per_seq_ms"]), float(d["per_ctx_token_ms"])
        self.p_chunk, self.p_sq, self.p_ctx = float(p["per_chunk_ms"]), float(p["per_sq_token_ms"]), float(p["per_ctx_token_ms"])
        self._linear_cache: dict[int, float] = {}

    # -- pieces ------------------------------------------------------------------
    def linear_ms(self, num_tokens: int) -> float:
        """Non-attention time (ms) for a step processing ``num_tokens`` tokens."""
        v = self._linear_cache.get(num_tokens)
        if v is None:
            xs, ys = self._xs, self._ys
            x = float(num_tokens)
            if x <= xs[0]:
                v = ys[0]
            else:
                i = min(bisect.bisect_left(xs, x), len(xs) - 1)
                x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
                v = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            self._linear_cache[num_tokens] = v
        return v

    def prefill_attn_ms(self, chunk_tokens: int, cached_tokens: int) -> float:
        c = chunk_tokens
        return self.p_chunk + self.p_sq * c * c + self.p_ctx * c * cached_tokens

    def decode_attn_ms(self, batch: int, sum_ctx: int) -> float:
        return self.d_step + self.d_seq * batch + self.d_ctx * sum_ctx if batch > 0 else 0.0

    # -- whole steps -------------------------------------------------------------
    def step_s(self, decode_rows: int, decode_sum_ctx: int, chunks: list[tuple[int, int]] = (), pad_to: int = 0) -> float:
        """One step: ``decode_rows`` decode rows whose cached contexts sum to ``decode_sum_ctx``,
        plus prefill chunks given as (new tokens, tokens already cached); each chunk is padded
        to ``pad_to`` tokens when that is larger (static batches are left-padded)."""
        n_tokens = decode_rows
        ms = self.fixed_ms + self.decode_attn_ms(decode_rows, decode_sum_ctx)
        if decode_rows > 0 and chunks:
            ms += self.p_mixed
        for c, k in chunks:
            c = max(c, pad_to)
            n_tokens += c
            if pad_to > 0 and k == 0:  # a member of the padded group
                ms += self.p_chunk + self.p_pad_sq * c * c
            else:
                ms += self.prefill_attn_ms(c, k)
        if n_tokens == 0:
            return 0.0
        return (ms + self.linear_ms(n_tokens)) / 1000.0

    def decode_run_s(self, batch: int, sum_ctx: int, n: int) -> float:
        """Total time of ``n`` consecutive decode steps of ``batch`` rows starting at ``sum_ctx``."""
        if n <= 0 or batch <= 0:
            return 0.0
        per_step = self.fixed_ms + self.linear_ms(batch) + self.d_step + self.d_seq * batch + self.d_ctx * sum_ctx
        return (n * per_step + self.d_ctx * batch * n * (n - 1) / 2.0) / 1000.0

    def decode_steps_until(self, batch: int, sum_ctx: int, budget_s: float, limit: int) -> int:
        """Smallest n in [1, limit] whose n-step run ends at or after ``budget_s``; ``limit`` if none."""
        if budget_s <= 0:
            return 1
        a = self.fixed_ms + self.linear_ms(batch) + self.d_step + self.d_seq * batch + self.d_ctx * sum_ctx
        q = self.d_ctx * batch / 2.0  # time(n) = (q n^2 + (a - q) n) / 1000
        target = budget_s * 1000.0
        if q > 0:
            b = a - q
            n = math.ceil((-b + math.sqrt(b * b + 4 * q * target)) / (2 * q))
        else:
            n = math.ceil(target / a)
        n = max(1, min(n, limit))
        # guard against rounding: step back/forward to the exact smallest n
        while n > 1 and self.decode_run_s(batch, sum_ctx, n - 1) >= budget_s:
            n -= 1
        while n < limit and self.decode_run_s(batch, sum_ctx, n) < budget_s:
            n += 1
        return n
