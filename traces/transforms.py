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
    if math.isfinite(factor):
        arrivals = trace.arrival_s * factor
    else:  # a span near the smallest float: divide by it first (its factor, and 0 x it, would be inf / NaN)
        arrivals = trace.arrival_s / trace.duration_s * ((len(trace) - 1) / rate)
    return trace.with_arrivals(arrivals, note=f"rescale_rate: mean rate {old:.6g} -> {rate:.6g} req/s (arrival "
                                              f"times x{factor:.6g})")


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


def tile_trace(trace: Trace, n: int) -> Trace:
    """The trace repeated back to back until it holds ``n`` requests (cut to exactly ``n``).

    Each copy keeps the trace's own inter-arrival times; copy ``k + 1`` starts one mean
    inter-arrival gap (``1 / trace.mean_rate``) after copy ``k``'s last arrival, so the
    tiled trace has the original's mean rate and burstiness. Request ids of copy ``k`` are
    offset by ``k * (max id + 1)`` so they stay unique.
    """
    if n <= len(trace):
        return trace.head(n)
    if len(trace) < 2 or trace.duration_s <= 0:
        raise TraceError(f"cannot tile trace {trace.name!r}: it has {len(trace)} request(s) spanning "
                         f"{trace.duration_s} s; tiling needs at least two distinct arrival times")
    copies = -(-n // len(trace))
    base = trace.arrival_s - trace.arrival_s[0]
    period = trace.duration_s + 1.0 / trace.mean_rate
    arrival = np.concatenate([base + k * period for k in range(copies)])[:n]
    id_step = int(trace.request_id.max()) + 1
    ids = np.concatenate([trace.request_id + k * id_step for k in range(copies)])[:n]
    rep = lambda a: np.tile(a, copies)[:n]
    rep_text = lambda col: None if col is None else (col * copies)[:n]
    notes = dict(trace.notes)
    notes.setdefault("transforms", []).append(
        f"tile: {len(trace)} requests repeated {copies} times back to back (gap between copies "
        f"{1.0 / trace.mean_rate:.6g} s), cut to {n}")
    return Trace(name=trace.name, request_id=ids, arrival_s=arrival, prompt_tokens=rep(trace.prompt_tokens),
                 output_tokens=rep(trace.output_tokens), prompt=rep_text(trace.prompt),
                 response=rep_text(trace.response), slo_class=rep_text(trace.slo_class), source=trace.source,
                 notes=notes)


def select_requests(trace: Trace, num_requests: int | None = None, seed: int = 0, rate: float | None = None,
                    tile: bool = False) -> Trace:
    """The requests a run serves, and when they arrive: the one selection every command shares.

    - With ``num_requests`` N, seed k serves the k-th window of N consecutive requests of the
      trace (requests ``k*N .. (k+1)*N - 1``), its arrivals shifted to start at 0. Different
      seeds serve disjoint windows; a window that would run past the end of the trace is an
      error naming how many windows there are, unless ``tile`` repeats the trace back to back
      (:func:`tile_trace`), which makes every window exist.
    - Without ``num_requests`` the whole trace is served, whatever the seed.
    - ``rate``: the selected requests' arrival times are then stretched so that their own mean
      rate, ``(n - 1) / (last - first arrival)``, is exactly ``rate`` req/s; order, gaps'
      proportions and idle periods (the burstiness) are kept.

    ``trace`` may be the first rows of a longer file (``load_trace(max_rows=...)``): it must
    hold at least ``(seed + 1) * num_requests`` rows unless it is the whole trace.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise TraceError(f"--seed must be an integer >= 0, got {seed!r}")
    if num_requests is None:
        if tile:
            raise TraceError("--tile needs --num-requests (how many requests to tile the trace to)")
        picked = trace
    else:
        if not isinstance(num_requests, (int, np.integer)) or isinstance(num_requests, bool) or num_requests < 1:
            raise TraceError(f"--num-requests must be an integer >= 1, got {num_requests!r}")
        n, k = int(num_requests), int(seed)
        need = (k + 1) * n
        if need > len(trace):
            if not tile:
                raise TraceError(_too_short(trace, n, k))
            trace = tile_trace(trace, need)
        picked = trace.take(slice(k * n, need))
        if k > 0 or picked.arrival_s[0] != 0.0:
            picked = picked.with_arrivals(picked.arrival_s - picked.arrival_s[0],
                                          note=f"window {k} of {n} requests (rows {k * n}..{need - 1}), "
                                               f"arrivals shifted to start at 0")
    return picked if rate is None else rescale_rate(picked, rate)


def _too_short(trace: Trace, n: int, seed: int) -> str:
    total = len(trace)
    if n > total:
        return (f"--num-requests {n} is more than the {total:,} requests of trace {trace.name!r}; pass --tile to "
                f"repeat the trace's arrivals back to back, or ask for at most {total:,}")
    windows = total // n
    return (f"--seed {seed} with --num-requests {n}: trace {trace.name!r} has {total:,} requests, i.e. {windows} "
            f"window(s) of {n} (seeds 0..{windows - 1}); pass --tile to repeat the trace, or use a seed below {windows}")
