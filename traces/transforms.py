"""Transforms of a loaded trace: arrival-rate scaling, time-window slicing, length scaling.

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


def scale_lengths(trace, scale: float):
    """Multiply prompt and output lengths by ``scale`` (rounded, at least 1): fits a long trace
    to a small model's context while keeping its length distribution's shape."""
    if scale == 1.0:
        return trace
    if not (scale > 0):
        raise TraceError(f"--length-scale must be > 0, got {scale}")
    notes = dict(trace.notes)
    notes.setdefault("transforms", []).append(f"lengths x {scale} ")
    sc = lambda a: np.maximum(np.rint(a * scale), 1).astype(np.int64)
    return Trace(name=trace.name, request_id=trace.request_id, arrival_s=trace.arrival_s,
                 prompt_tokens=sc(trace.prompt_tokens), output_tokens=sc(trace.output_tokens), prompt=trace.prompt,
                 response=trace.response, slo_class=trace.slo_class, source=trace.source, notes=notes)
