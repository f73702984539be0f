"""Transforms of a loaded trace: arrival-rate scaling and time-window slicing.

Each returns a new Trace and appends a line describing itself to
``trace.notes["transforms"]``, so a result can always say what was done to its workload.
"""
from __future__ import annotations

import math

import numpy as np

from traces.schema import Trace, TraceError


def rescale_rate(trace: Trace, rate: float) -> Trace:
    """The same requests with arrival times stretched so the mean rate is ``rate`` req/s.

    Arrival times are multiplied by ``trace.mean_rate / rate``: the order of requests and
    the shape of the arrival process (burstiness, idle periods) are kept; only the clock
    runs faster or slower. Mean rate is ``(n - 1) / span`` (see ``Trace.mean_rate``).
    """
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise TraceError(f"rescale_rate: rate must be a finite number > 0 req/s, got {rate!r}")
    if len(trace) < 2 or trace.duration_s <= 0:
        raise TraceError(f"rescale_rate: trace {trace.name!r} has {len(trace)} request(s) spanning "
                         f"{trace.duration_s} s; a rate needs at least two distinct arrival times")
    old = trace.mean_rate
    factor = old / rate
    return trace.with_arrivals(trace.arrival_s * factor,
                               note=f"rescale_rate: mean rate {old:.6g} -> {rate:.6g} req/s (arrival times x{factor:.6g})")


def slice_window(trace: Trace, start_s: float, end_s: float, rebase: bool = True) -> Trace:
    """The requests arriving in ``[start_s, end_s)`` (seconds on the trace's clock).

    With ``rebase`` (default) arrival times are shifted by ``-start_s`` so the window
    starts at 0 and the idle time before its first request is kept. Request ids are kept.
    """
    if not (math.isfinite(start_s) and end_s > start_s):  # end_s may be +inf: "to the end"
        raise TraceError(f"slice_window: need a finite start_s < end_s, got [{start_s!r}, {end_s!r})")
    idx = np.flatnonzero((trace.arrival_s >= start_s) & (trace.arrival_s < end_s))
    if len(idx) == 0:
        span = f"[{trace.arrival_s[0]:.6g}, {trace.arrival_s[-1]:.6g}] s" if len(trace) else "(empty)"
        raise TraceError(f"slice_window: no request of trace {trace.name!r} arrives in [{start_s}, {end_s}) s; "
                         f"its arrivals span {span}")
    part = trace.take(idx)
    shift = start_s if rebase else 0.0
    return part.with_arrivals(part.arrival_s - shift,
                              note=f"slice_window: [{start_s:.6g}, {end_s:.6g}) s, {len(idx)} of {len(trace)} "
                                   f"requests{', rebased to start at 0' if rebase else ''}")
