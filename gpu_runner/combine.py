"""Several identical real runs made into one: every step's time is the median over the runs.

On a shared machine a real run is one realisation of a machine whose speed moves by 2x: a spell of
contention that lasts a few seconds slows every step it covers (the fastest of K back-to-back repeats
of a step does not filter it), and one such spell moved a whole run's mean latency by up to 56%. When
the schedule does not depend on step times (a burst: every request has arrived before the first step),
the N runs make the same decisions step for step, and only their step times differ. The combined run
keeps those decisions and takes, for every step (a segment of the step table), the median of its N
measured times, and likewise the median of the server's own time between steps; its timeline is
rebuilt from them, and every request timestamp (admitted, first and last token, finish) is carried
over by the same piecewise-linear map. A spell that covers a step in fewer than half the runs leaves
no trace in the combined run, as a grid point's median over sweeps leaves none in the profile.

The runs must agree on everything but time (the same steps, batch sizes, tokens, KV blocks,
preemptions, predictions): :func:`combine_runs` raises :class:`RunsDiffer` naming the first
difference otherwise, and no request may be admitted before it arrives on the combined timeline.
(Which requests had arrived when a step started may differ between the runs, e.g. the last few of
a burst spread over 0.15 ms; that the runs decided alike with different arrivals in view is what
makes the combination sound.)
"""
from __future__ import annotations

import numpy as np
import polars as pl

from simulator.metrics import RunResult, summarize, with_latency_columns

TIME_STEP_COLUMNS = ("start_s", "end_s")
TIME_REQUEST_COLUMNS = ("admitted_s", "first_token_s", "last_token_s", "finish_s")
DERIVED_REQUEST_COLUMNS = ("e2e_latency_s", "ttft_s", "queue_s", "tpot_s", "normalized_latency_s")


class RunsDiffer(ValueError):
    """The repeated runs did not make the same decisions: their step times cannot be combined."""


def _first_difference(a: pl.DataFrame, b: pl.DataFrame, what: str) -> str | None:
    if a.columns != b.columns:
        return f"{what} columns differ"
    if a.height != b.height:
        return f"{a.height} against {b.height} {what} rows"
    for c in a.columns:
        x, y = a[c], b[c]
        same = (x == y) | (x.is_null() & y.is_null())
        if x.dtype.is_float():
            same = same | (x.is_nan() & y.is_nan())
        bad = (~same.fill_null(False)).arg_true()
        if len(bad):
            i = int(bad[0])
            return f"{what} row {i}, column {c}: {x[i]!r} against {y[i]!r}"
    return None


def check_same_decisions(runs: list[RunResult], first_number: int = 2) -> None:
    """Raise :class:`RunsDiffer` unless every run made the first run's decisions (all but time); the runs
    after the first are numbered from ``first_number`` in the message."""
    base_s = runs[0].steps.drop(TIME_STEP_COLUMNS)
    drop_r = [c for c in TIME_REQUEST_COLUMNS + DERIVED_REQUEST_COLUMNS if c in runs[0].requests.columns]
    base_r = runs[0].requests.drop(drop_r)
    for k, run in enumerate(runs[1:], start=first_number):
        why = (_first_difference(base_s, run.steps.drop(TIME_STEP_COLUMNS), "step")
               or _first_difference(base_r, run.requests.drop(drop_r), "request"))
        if why:
            raise RunsDiffer(f"real run {k} made other decisions than run 1 ({why}): its schedule depends on step "
                             f"times, so step times of different runs cannot be combined (use a burst, e.g. --rate 1e6, "
                             f"or --real-runs 1)")


def _own_time(start: np.ndarray, end: np.ndarray, arrivals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step: the server's own time before it (observe + plan), measured from the previous step's end or
    from the arrival the server waited for, and that arrival (-inf when it did not wait)."""
    prev_end = np.concatenate([[0.0], end[:-1]])
    k = np.searchsorted(arrivals, start, side="right")  # arrivals <= start
    last = np.where(k > 0, arrivals[np.maximum(k - 1, 0)], -np.inf)
    waited = np.where(last > prev_end, last, -np.inf)
    return start - np.maximum(prev_end, waited), waited


def combined_timeline(runs: list[RunResult]) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of every step of the combined run: median durations and median own time between steps."""
    arrivals = np.sort(runs[0].requests["arrival_s"].to_numpy())
    starts = [r.steps["start_s"].to_numpy() for r in runs]
    ends = [r.steps["end_s"].to_numpy() for r in runs]
    dur = np.median(np.stack([e - s for s, e in zip(starts, ends)]), axis=0)
    own, waited = zip(*(_own_time(s, e, arrivals) for s, e in zip(starts, ends)))
    return _timeline(dur, np.median(np.stack(own), axis=0), waited[0])


def _timeline(dur: np.ndarray, own: np.ndarray, waited: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of steps of durations ``dur``, each after ``own`` server time from the previous step's end
    or from the arrival it waited for (``waited``, -inf when none)."""
    start, end = np.empty_like(dur), np.empty_like(dur)
    t = 0.0
    for j in range(len(dur)):
        start[j] = max(t, waited[j]) + own[j]
        end[j] = t = start[j] + dur[j]
    return start, end


def _warp(t: np.ndarray, s0: np.ndarray, e0: np.ndarray, s1: np.ndarray, e1: np.ndarray) -> np.ndarray:
    """Map times of run 1 (steps [s0, e0]) onto the combined steps [s1, e1]: linear within a step; a time in
    the gap before a step keeps its distance to that step's start (not before the previous step's end)."""
    out = np.full(len(t), np.nan)
    ok = np.isfinite(t)
    tt = t[ok]
    j = np.minimum(np.searchsorted(e0, tt, side="left"), len(e0) - 1)  # the first step ending at or after t
    d0 = e0[j] - s0[j]
    inside = tt >= s0[j]
    frac = np.where(d0 > 0, (tt - s0[j]) / np.where(d0 > 0, d0, 1.0), 1.0)
    mapped = np.where(inside, s1[j] + np.clip(frac, 0.0, 1.0) * (e1[j] - s1[j]), s1[j] - (s0[j] - tt))
    floor = np.where(j > 0, e1[np.maximum(j - 1, 0)], 0.0)
    mapped = np.where(inside, mapped, np.maximum(mapped, np.minimum(floor, s1[j])))
    mapped = np.where(tt > e0[-1], e1[-1] + (tt - e0[-1]), mapped)  # after the last step (none in practice)
    out[ok] = mapped
    return out


def combine_runs(runs: list[RunResult]) -> RunResult:
    """One RunResult with the first run's decisions and every step's median time over the runs."""
    if len(runs) == 1:
        return runs[0]
    check_same_decisions(runs)
    first = runs[0]
    steps = first.steps
    if steps.height == 0:
        return first
    req, steps, summary = _moved(first, *combined_timeline(runs))
    e1 = steps["end_s"].to_numpy()
    summary["runner"] = dict(first.summary.get("runner") or {})
    summary["runner"]["virtual_clock_s"] = float(e1[-1])
    summary["run_wall_s"] = float(sum(r.summary.get("run_wall_s", 0.0) for r in runs))
    summary["real_runs"] = run_spread(runs)
    config = dict(first.config)
    config["real_runs"] = {"n": len(runs), "estimator": "median over the runs of every step's time and of the "
                                                        "server's own time between steps; run 1's decisions"}
    out = RunResult(requests=req, steps=steps, summary=summary, config=config)
    out.executor = getattr(first, "executor", None)
    out.interleaver = getattr(first, "interleaver", None)
    out.own_before = median_own_time(runs)
    return out


def median_own_time(runs: list[RunResult]) -> np.ndarray | None:
    """The server's own time before every step, median over the runs (None when a run did not record it)."""
    owns = [getattr(r, "own_before", None) for r in runs]
    if any(o is None or len(o) != runs[0].steps.height for o in owns):
        return None
    return np.median(np.stack(owns), axis=0)


def retime(run: RunResult, own: np.ndarray) -> RunResult:
    """The run again with ``own`` seconds of the server's own time before each step instead of what its clock
    had: step durations and decisions kept, the timeline rebuilt, request timestamps carried over as in
    :func:`combine_runs`. With a run whose own time was off its clock, ``own`` = its measured own time puts
    it back (the run the server would have made had planning taken its time on the clock); zeros take it off.
    Exact for a burst; with arrivals during the run, what was in view at each decision is the run's own."""
    steps = run.steps
    if steps.height == 0:
        return run
    if len(own) != steps.height:
        raise ValueError(f"{len(own)} own times for {steps.height} steps")
    arrivals = np.sort(run.requests["arrival_s"].to_numpy())
    _, waited = _own_time(steps["start_s"].to_numpy(), steps["end_s"].to_numpy(), arrivals)
    req, steps, summary = _moved(run, *_timeline((steps["end_s"] - steps["start_s"]).to_numpy(),
                                                 np.asarray(own, dtype=float), waited),
                                 what="the run with that own time")
    return RunResult(requests=req, steps=steps, summary=summary, config=run.config)


def _moved(run: RunResult, s1: np.ndarray, e1: np.ndarray, what: str = "the combined run"):
    """(requests, steps, summary) of ``run`` with its steps moved to [s1, e1] and every request timestamp carried
    over by :func:`_warp`; refuses (:class:`RunsDiffer`, naming ``what``) a request admitted before it arrives."""
    steps = run.steps
    s0, e0 = steps["start_s"].to_numpy(), steps["end_s"].to_numpy()
    steps = steps.with_columns(start_s=pl.Series(s1), end_s=pl.Series(e1))
    req = run.requests
    req = req.with_columns([pl.Series(c, _warp(req[c].cast(pl.Float64).to_numpy(), s0, e0, s1, e1))
                            for c in TIME_REQUEST_COLUMNS])
    early = req.filter(pl.col("admitted_s") < pl.col("arrival_s"))
    if early.height:
        r = early.row(0, named=True)
        raise RunsDiffer(f"request {r['request_id']} arrives at {r['arrival_s']:.4f} s but {what} would admit it "
                         f"at {r['admitted_s']:.4f} s: the timelines are too far apart (use a burst, e.g. --rate 1e6, "
                         f"or --real-runs 1)")
    req = with_latency_columns(req)  # NaN stays NaN (a rejected request never finished)
    return req, steps, summarize(req, steps, int(run.config["kv_blocks"]))


SPREAD_KEYS = (("e2e_latency_s", "mean"), ("e2e_latency_s", "p99"), ("ttft_s", "mean"), ("tpot_s", "mean"),
               ("throughput_output_tokens_per_s", None))


def run_spread(runs: list[RunResult]) -> dict:
    """Each gated metric in every run, and its spread (max - min) / median over the runs."""
    out = {"n": len(runs), "virtual_clock_s": [float((r.summary.get("runner") or {}).get("virtual_clock_s") or 0.0)
                                               for r in runs]}
    for key, stat in SPREAD_KEYS:
        vals = [r.summary[key][stat] if stat else r.summary[key] for r in runs]
        name = f"{key}.{stat}" if stat else key
        if any(v is None for v in vals):
            out[name] = {"runs": vals, "spread": None}
            continue
        med = float(np.median(vals))
        out[name] = {"runs": [float(v) for v in vals],
                     "spread": float((max(vals) - min(vals)) / med) if med else None}
    return out
