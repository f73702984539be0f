"""Step-time model: how long one engine step takes, from a calibration profile.

See :mod:`simulator.profile` for the formula. Besides single steps, the model gives the
time of a run of ``n`` identical decode steps in closed form (the batch's total context
grows by ``B`` tokens a step, so attention time is an arithmetic series), which is what
lets the simulator skip over steps in which nothing but token counts change.

Where a profile carries the measured decode-attention grid (``decode_attn_grid``: ms per step
at batch sizes x context lengths), decode attention of ``B`` rows whose contexts sum to ``S``
is the grid at batch ``B`` and the mean context ``K = S / B``: exact in ``B`` at the measured
batch sizes (the real grid has steps, e.g. batch 6 -> 7 at 4,032 tokens), linear between
measured contexts, flat below the first and extrapolated along the last segment above the
last; linear between measured batch sizes and proportional to ``B`` above the largest. In a
decode run ``K`` grows by one token a step, so a run is a sum of arithmetic series, one per
context segment it crosses: still closed form.
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
        self.p_mixed_row = float(c["prefill_attn"].get("mixed_row_ms", 0.0))  # each decode row of such a step
        # each decode row of such a step per 1,000 prompt tokens beside it
        self.p_mixed_rowk = float(c["prefill_attn"].get("mixed_row_ktoken_ms", 0.0))
        self.p_extra = float(c["prefill_attn"].get("per_extra_chunk_ms", 0.0))  # each loose chunk after a step's first
        self.profile = profile
        self._xs = [float(p[0]) for p in c["linear_ops"]]
        self._ys = [float(p[1]) for p in c["linear_ops"]]
        self.fixed_ms = float(c["fixed_step_ms"])
        d, p = c["decode_attn"], c["prefill_attn"]
        self.d_step, self.d_seq, self.d_ctx = float(d["per_step_ms"]), float(d["per_seq_ms"]), float(d["per_ctx_token_ms"])
        self.p_chunk, self.p_sq, self.p_ctx = float(p["per_chunk_ms"]), float(p["per_sq_token_ms"]), float(p["per_ctx_token_ms"])
        # a chunk on a cached prefix, when the profile measured its attention apart (one masked call on the runner)
        self.p_csq = float(p.get("cached_sq_token_ms", p["per_sq_token_ms"]))
        self._linear_cache: dict[int, float] = {}
        g = c.get("decode_attn_grid")
        self._grid = None
        if g is not None:
            self._grid = ([int(b) for b in g["batch"]], [float(k) for k in g["context"]],
                          [[float(v) for v in row] for row in g["ms"]])
        self._segments_cache: dict[int, list[tuple[float, float, float, float]]] = {}

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
        return self.p_chunk + (self.p_csq if cached_tokens else self.p_sq) * c * c + self.p_ctx * c * cached_tokens

    def decode_attn_ms(self, batch: int, sum_ctx: int) -> float:
        if batch <= 0:
            return 0.0
        if self._grid is None:
            return self.d_step + self.d_seq * batch + self.d_ctx * sum_ctx
        his, a, b = self._segments(batch)
        k = sum_ctx / batch
        i = bisect.bisect_right(his, k)
        return a[i] + b[i] * k

    def _segments(self, batch: int) -> tuple[list[float], list[float], list[float]]:
        """Decode attention at ``batch`` rows as pieces: ``a[i] + b[i] K`` for ``his[i-1] <= K < his[i]``
        (the first piece is flat below the first measured context, the last one is unbounded)."""
        seg = self._segments_cache.get(batch)
        if seg is not None:
            return seg
        bs, ks, ms = self._grid
        if batch >= bs[-1]:
            vals = [row[-1] * batch / bs[-1] for row in ms]
        elif batch <= bs[0]:
            vals = [row[0] for row in ms]
        else:
            i = bisect.bisect_left(bs, batch)
            w = (batch - bs[i - 1]) / (bs[i] - bs[i - 1])
            vals = [row[i - 1] + w * (row[i] - row[i - 1]) for row in ms]
        slopes = [(vals[i + 1] - vals[i]) / (ks[i + 1] - ks[i]) for i in range(len(ks) - 1)]
        his = list(ks[:-1])  # the last segment [ks[-2], inf) extends the last measured piece
        a = [vals[0]] + [vals[i] - slopes[i] * ks[i] for i in range(len(ks) - 1)]
        b = [0.0] + slopes
        seg = self._segments_cache[batch] = (his, a, b)
        return seg

    def _runs(self, batch: int, sum_ctx: int, n: int):
        """For a run of ``n`` decode steps: (first step index, steps, a, b) per context piece it crosses,
        in order; step ``j`` has mean context ``K0 + j`` and attention ``a + b j``."""
        his, a, b = self._segments(batch)
        k0 = sum_ctx / batch
        i = bisect.bisect_right(his, k0)
        j_lo, out = 0, []
        while j_lo < n:
            j_hi = n if i == len(his) else min(n, math.ceil(his[i] - k0))
            if j_hi > j_lo:
                out.append((j_lo, j_hi - j_lo, a[i] + b[i] * k0, b[i]))
                j_lo = j_hi
            i += 1
        return out

    # -- whole steps -------------------------------------------------------------
    def step_s(self, decode_rows: int, decode_sum_ctx: int, chunks: list[tuple[int, int]] = (), pad_to: int = 0) -> float:
        """One step: ``decode_rows`` decode rows whose cached contexts sum to ``decode_sum_ctx``,
        plus prefill chunks given as (new tokens, tokens already cached); each chunk is padded
        to ``pad_to`` tokens when that is larger (static batches are left-padded)."""
        n_tokens = decode_rows
        ms = self.fixed_ms + self.decode_attn_ms(decode_rows, decode_sum_ctx)
        if decode_rows > 0 and chunks:
            ms += self.p_mixed + self.p_mixed_row * decode_rows
        loose = 0
        for c, k in chunks:
            c = max(c, pad_to)
            n_tokens += c
            if pad_to > 0 and k == 0:  # a member of the padded group
                ms += self.p_chunk + self.p_pad_sq * c * c
            else:
                ms += self.prefill_attn_ms(c, k)
                loose += 1
        if loose > 1:
            ms += self.p_extra * (loose - 1)
        if self.p_mixed_rowk and decode_rows > 0 and chunks:
            ms += self.p_mixed_rowk * decode_rows * (n_tokens - decode_rows) / 1000.0
        if n_tokens == 0:
            return 0.0
        return (ms + self.linear_ms(n_tokens)) / 1000.0

    def decode_run_s(self, batch: int, sum_ctx: int, n: int) -> float:
        """Total time of ``n`` consecutive decode steps of ``batch`` rows starting at ``sum_ctx``."""
        if n <= 0 or batch <= 0:
            return 0.0
        if self._grid is not None:
            ms = n * (self.fixed_ms + self.linear_ms(batch))
            for j0, cnt, a, b in self._runs(batch, sum_ctx, n):
                ms += cnt * a + b * (cnt * j0 + cnt * (cnt - 1) / 2.0)
            return ms / 1000.0
        per_step = self.fixed_ms + self.linear_ms(batch) + self.d_step + self.d_seq * batch + self.d_ctx * sum_ctx
        return (n * per_step + self.d_ctx * batch * n * (n - 1) / 2.0) / 1000.0

    def decode_steps_until(self, batch: int, sum_ctx: int, budget_s: float, limit: int) -> int:
        """Smallest n in [1, limit] whose n-step run ends at or after ``budget_s``; ``limit`` if none."""
        if budget_s <= 0:
            return 1
        if self._grid is not None:
            n = self._grid_steps_until(batch, sum_ctx, budget_s * 1000.0, limit)
        else:
            n = self._linear_steps_until(batch, sum_ctx, budget_s * 1000.0, limit)
        # guard against rounding: step back/forward to the exact smallest n
        while n > 1 and self.decode_run_s(batch, sum_ctx, n - 1) >= budget_s:
            n -= 1
        while n < limit and self.decode_run_s(batch, sum_ctx, n) < budget_s:
            n += 1
        return n

    def _grid_steps_until(self, batch: int, sum_ctx: int, target: float, limit: int) -> int:
        base = self.fixed_ms + self.linear_ms(batch)
        done = 0.0
        for j0, cnt, a, b in self._runs(batch, sum_ctx, limit):
            c0 = base + a + b * j0  # the segment's first step
            seg = cnt * c0 + b * cnt * (cnt - 1) / 2.0
            if done + seg >= target:
                return j0 + _smallest_covering(c0, b, target - done, cnt)
            done += seg
        return limit

    def _linear_steps_until(self, batch: int, sum_ctx: int, target: float, limit: int) -> int:
        a = self.fixed_ms + self.linear_ms(batch) + self.d_step + self.d_seq * batch + self.d_ctx * sum_ctx
        return max(1, min(_smallest_covering(a, self.d_ctx * batch, target, limit), limit))


def _smallest_covering(c0: float, d: float, target: float, limit: int) -> int:
    """Smallest m >= 1 with m c0 + d m (m - 1) / 2 >= target (steps c0, c0 + d, ...), capped at ``limit``."""
    q = d / 2.0
    if q > 0:
        b = c0 - q
        m = math.ceil((-b + math.sqrt(b * b + 4 * q * target)) / (2 * q))
    else:
        m = math.ceil(target / c0) if c0 > 0 else limit
    return max(1, min(m, limit))
