"""Fit the simulator's step-time model to measured steps.

One non-negative least-squares problem, weighted by relative error, over the model of
:mod:`simulator.profile`: ``linear_ops`` is a table with knots at the measured token counts
(fitted as non-negative increments, so it is non-decreasing in N), ``fixed_step_ms`` is 0
(the table already holds the constant), and the attention terms are the profile's six
coefficients plus the padded group's own quadratic term (``padded_sq_token_ms``: the runner
runs a left-padded group as one masked attention call, which costs more per token^2 on CPU
than a causal call per chunk; one shared term made the table zig-zag to absorb the difference)
the quadratic term of a chunk on a cached prefix (``cached_sq_token_ms``: the runner runs it as one
masked call, as it runs a padded group; a burst's continuing 1000-token chunk on 127 cached tokens cost
7.6 ms more than the same chunk uncached, priced 1.9 ms more by the causal term and the per-cached-token
term alone), and a once-per-step cost of mixing decode rows with chunks (``mixed_step_ms``: measured mixed steps
cost 1-2 ms more than the sum of their parts; without it the fit priced them 5-12% low) and per decode row
(``mixed_row_ktoken_ms``, per decode row and 1,000 prompt tokens: a burst's mixed steps of 24-130 decode rows
beside ~4,000 prompt tokens were priced 4% low with the constant alone; a cost per decode row, ``mixed_row_ms``,
0.02 ms, brought them to 1.02 but priced steps of many rows beside a few hundred prompt tokens, as Sarathi's
512-token budget makes them, 3-6% high: scaled by the step's prompt tokens, the grid's such points went from
0.94-0.96 to 0.97-0.99 and a burst's last steps from 0.92-0.95 to 0.96-0.98, its first ones unchanged; the cost
model still reads ``mixed_row_ms`` from profiles that have it), and a cost of
every loose chunk of a step beyond its first (``per_extra_chunk_ms``: each chunk's causal attention
call, gathers and scatters per layer; with the per-chunk cost alone, fitted mostly on single-chunk
points where it trades off against the table, steps of 8-16 chunks were priced 6-8% low: vllm-v0's
prefill-only batches and a burst's mixed steps). Samples are dicts with ``decode_rows``, ``sum_ctx``,
``chunks`` [[C, K0], ...], ``pad_to`` and ``median_ms``.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def _features(s: dict) -> tuple[int, list[float]]:
    b, pad = s["decode_rows"], s["pad_to"]
    eff = [max(c, pad) for c, _ in s["chunks"]]
    padded = [pad > 0 and k == 0 for _, k in s["chunks"]]  # members of the left-padded group
    n = b + sum(eff)
    cached = [k > 0 for _, k in s["chunks"]]  # loose chunks on a cached prefix: one masked call each
    return n, [1.0 if b else 0.0, float(b), s["sum_ctx"], float(len(eff)),
               float(sum(c * c for c, p, h in zip(eff, padded, cached) if not p and not h)),
               float(sum(c * k for c, (_, k) in zip(eff, s["chunks"]))),
               float(sum(c * c for c, p in zip(eff, padded) if p)),
               1.0 if b and eff else 0.0,
               float(max(0, sum(1 for p in padded if not p) - 1)),
               float(sum(c * c for c, p, h in zip(eff, padded, cached) if not p and h)),
               b * (n - b) / 1000.0 if b and eff else 0.0]


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


def _nnls(a: np.ndarray, y: np.ndarray, m: int) -> np.ndarray:
    """Relative-error NNLS; the first ``m`` columns (the table) as non-negative increments (y_i = d_0 + ... +
    d_i), i.e. non-decreasing in N: decode-only steps alone cannot tell the table (a function of N) from
    per-row costs, and an unconstrained table zig-zags between knots."""
    cum = np.tril(np.ones((m, m)))
    a_inc = np.hstack([a[:, :m] @ cum, a[:, m:]])
    sol, _ = nnls(a_inc / y[:, None], np.ones_like(y))
    return np.concatenate([cum @ sol[:m], sol[m:]])


def _coefficients(knots, table, d, p) -> dict:
    return {"fixed_step_ms": 0.0,
            "linear_ops": [[int(k), float(f"{v:.6g}")] for k, v in zip(knots, table)],
            "decode_attn": {"per_step_ms": d[0], "per_seq_ms": d[1], "per_ctx_token_ms": d[2]},
            "prefill_attn": {"per_chunk_ms": p[0], "per_sq_token_ms": p[1], "per_ctx_token_ms": p[2],
                             "padded_sq_token_ms": p[3], "mixed_step_ms": p[4], "per_extra_chunk_ms": p[5],
                             "cached_sq_token_ms": p[6], "mixed_row_ktoken_ms": p[7]}}


def fit(samples: list[dict]) -> tuple[dict, dict]:
    """NNLS fit of the step-time model; returns (coefficients, fit report).

    Every term is fitted, decode attention as the linear term; where the decode samples form a full
    batch x context grid, the profile also carries that grid (:func:`decode_grid`), which the cost model
    then uses for decode attention. (Refitting the table and the prefill terms with the grid's decode
    attention in mixed steps was tried: with a table shared by decode and prefill steps it priced
    single-chunk prefills up to 16% off.) The report's errors are of the cost model with the final
    coefficients (decode grid points: 0 by construction)."""
    from simulator.cost_model import CostModel
    from simulator.profile import Profile

    rows = [_features(s) for s in samples]
    knots = _knots([n for n, _ in rows])
    m = len(knots)
    y = np.array([s["median_ms"] for s in samples])
    a = np.array([np.concatenate([_interp_weights(n, knots), f]) for n, f in rows])
    sol = _nnls(a, y, m)
    d = [float(v) for v in sol[m:m + 3]]
    coeff = _coefficients(knots, sol[:m], d, [float(v) for v in sol[m + 3:]])
    grid = decode_grid(samples, knots, np.array([v for _, v in coeff["linear_ops"]]))  # the table as stored
    if grid is not None:
        coeff["decode_attn_grid"] = grid
    cost = CostModel(Profile(data={"coefficients": coeff}, path="fit"))
    pred = np.array([cost.step_s(s["decode_rows"], s["sum_ctx"], [tuple(c) for c in s["chunks"]], s["pad_to"]) * 1e3
                     for s in samples])
    rel = pred / y - 1
    report = {"median_abs_rel_error": float(np.median(np.abs(rel))), "max_abs_rel_error": float(np.abs(rel).max()),
              "by_kind": {k: float(np.median(np.abs(rel[[s["kind"] == k for s in samples]])))
                          for k in sorted({s["kind"] for s in samples})}}
    for s, p in zip(samples, pred):
        s["fit_ms"] = round(float(p), 5)
    return coeff, report


def decode_grid(samples: list[dict], knots: list[int], table: np.ndarray) -> dict | None:
    """The measured decode steps as the cost model's ``decode_attn_grid``: at every measured (batch, mean
    context), the step's median time less the fitted table at N = batch, so that the model prices a
    decode step at a grid point at exactly its measured time (the linear decode term was off by up to
    10-13% at some points: grouped attention over ragged contexts is not linear in the sum of contexts).
    None unless the decode samples form a full batch x context rectangle (at least 2 x 2)."""
    dec = [s for s in samples if s["kind"] == "decode" and not s["chunks"] and s["decode_rows"] > 0]
    if not dec:
        return None
    ks = sorted(s["sum_ctx"] / s["decode_rows"] for s in dec)
    centres: list[list[float]] = []
    for k in ks:  # contexts within 3% of each other are one grid context (rounding of the rows' spread)
        if centres and k <= centres[-1][0] * 1.03:
            centres[-1].append(k)
        else:
            centres.append([k])
    ctx = [float(np.mean(c)) for c in centres]
    batches = sorted({s["decode_rows"] for s in dec})
    cell: dict[tuple[int, int], float] = {}
    for s in dec:
        k = s["sum_ctx"] / s["decode_rows"]
        j = min(range(len(ctx)), key=lambda i: abs(ctx[i] - k))
        cell[(j, s["decode_rows"])] = s["median_ms"] - float(_interp_weights(s["decode_rows"], knots) @ table)
    if len(ctx) < 2 or len(batches) < 2 or len(cell) != len(ctx) * len(batches):
        return None
    return {"batch": batches, "context": [round(k, 3) for k in ctx],
            "ms": [[round(max(cell[(j, b)], 0.0), 6) for b in batches] for j in range(len(ctx))],
            "source": "measured decode steps (median) less linear_ops at N = batch"}
