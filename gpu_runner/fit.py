"""Fit the simulator's step-time model to measured steps.

One non-negative least-squares problem, weighted by relative error, over the model of
:mod:`simulator.profile`: ``linear_ops`` is a table with knots at the measured token counts
(fitted as non-negative increments, so it is non-decreasing in N), ``fixed_step_ms`` is 0
(the table already holds the constant), and the attention terms are the profile's six
coefficients plus the padded group's own quadratic term (``padded_sq_token_ms``: the runner
runs a left-padded group as one masked attention call, which costs more per token^2 on CPU
than a causal call per chunk; one shared term made the table zig-zag to absorb the difference)
and a once-per-step cost of mixing decode rows with chunks (``mixed_step_ms``: measured mixed steps
cost 1-2 ms more than the sum of their parts; without it the fit priced them 5-12% low). Samples are dicts with ``decode_rows``, ``sum_ctx``, ``chunks`` [[C, K0], ...],
``pad_to`` and ``median_ms``.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def _features(s: dict) -> tuple[int, list[float]]:
    b, pad = s["decode_rows"], s["pad_to"]
    eff = [max(c, pad) for c, _ in s["chunks"]]
    padded = [pad > 0 and k == 0 for _, k in s["chunks"]]  # members of the left-padded group
    n = b + sum(eff)
    return n, [1.0 if b else 0.0, float(b), s["sum_ctx"], float(len(eff)),
               float(sum(c * c for c, p in zip(eff, padded) if not p)),
               float(sum(c * k for c, (_, k) in zip(eff, s["chunks"]))),
               float(sum(c * c for c, p in zip(eff, padded) if p)),
               1.0 if b and eff else 0.0]


def _knots(ns: list[int]) -> list[int]:
    out = []
    for n in sorted(set(ns)):
        if not out or n >= out[-1] * 1.4:
            out.append(n)
    if len(out) < 2:
        out.append(out[-1] * 2)
    return out


def _interp_weights(n: int, knots: list[int]) -> np.ndarray:
    """Weights w with linear_ms(n) = w . table, matching CostModel.linear_ms (incl. extrapolation)."""
    w = np.zeros(len(knots))
    if n <= knots[0]:
        w[0] = 1.0
        return w
    i = min(int(np.searchsorted(knots, n)), len(knots) - 1)
    x0, x1 = knots[i - 1], knots[i]
    f = (n - x0) / (x1 - x0)
    w[i - 1], w[i] = 1 - f, f
    return w


def fit(samples: list[dict]) -> tuple[dict, dict]:
    """NNLS fit of the step-time model; returns (coefficients, fit report)."""
    rows = [_features(s) for s in samples]
    knots = _knots([n for n, _ in rows])
    y = np.array([s["median_ms"] for s in samples])
    a = np.array([np.concatenate([_interp_weights(n, knots), f]) for n, f in rows])
    # The table is fitted as non-negative increments (y_i = d_0 + ... + d_i), i.e. non-decreasing in N:
    # decode-only steps alone cannot tell the table (a function of N) from per-row costs, and an
    # unconstrained table zig-zags between knots.
    m = len(knots)
    cum = np.tril(np.ones((m, m)))
    a_inc = np.hstack([a[:, :m] @ cum, a[:, m:]])
    sol, _ = nnls(a_inc / y[:, None], np.ones_like(y))
    sol = np.concatenate([cum @ sol[:m], sol[m:]])
    pred = a @ sol
    rel = pred / y - 1
    d_step, d_seq, d_ctx, p_chunk, p_sq, p_ctx, p_pad_sq, p_mixed = (float(v) for v in sol[m:])
    coeff = {
        "fixed_step_ms": 0.0,
        "linear_ops": [[int(k), float(f"{v:.6g}")] for k, v in zip(knots, sol[:m])],
        "decode_attn": {"per_step_ms": d_step, "per_seq_ms": d_seq, "per_ctx_token_ms": d_ctx},
        "prefill_attn": {"per_chunk_ms": p_chunk, "per_sq_token_ms": p_sq, "per_ctx_token_ms": p_ctx,
                         "padded_sq_token_ms": p_pad_sq, "mixed_step_ms": p_mixed},
    }
    report = {"median_abs_rel_error": float(np.median(np.abs(rel))), "max_abs_rel_error": float(np.abs(rel).max()),
              "by_kind": {k: float(np.median(np.abs(rel[[s["kind"] == k for s in samples]])))
                          for k in sorted({s["kind"] for s in samples})}}
    for s, p in zip(samples, pred):
        s["fit_ms"] = round(float(p), 5)
    return coeff, report
