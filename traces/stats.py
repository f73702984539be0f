"""Summary statistics of a trace (what ``syncintellects trace info`` prints)."""
from __future__ import annotations

import numpy as np

from traces.schema import Trace

PERCENTILES = (50, 90, 99)


def trace_summary(trace: Trace) -> dict:
    """Rows, span, mean rate, inter-arrival CV and length percentiles of ``trace``.

    ``interarrival_cv`` is the coefficient of variation of the gaps between consecutive
    arrivals (1 for a Poisson process, > 1 for bursty traffic).
    """
    gaps = np.diff(trace.arrival_s)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else float("nan")
    out = {
        "name": trace.name, "source": trace.source, "rows": len(trace), "span_s": trace.duration_s,
        "mean_rate": trace.mean_rate if len(trace) > 1 else float("nan"), "interarrival_cv": cv,
        "has_text": trace.prompt is not None,
    }
    for col in ("prompt_tokens", "output_tokens"):
        v = getattr(trace, col)
        out[col] = {"mean": float(v.mean()), "min": int(v.min()), "max": int(v.max()),
                    **{f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES}}
    out["notes"] = trace.notes
    return out


def format_summary(s: dict) -> str:
    lines = [f"{s['name']}  ({s['source']})",
             f"  rows {s['rows']:,}   span {s['span_s']:.1f} s   mean rate {s['mean_rate']:.4g} req/s   "
             f"inter-arrival CV {s['interarrival_cv']:.3g}"]
    head = "".join(f"{k:>10}" for k in ("mean", "min", *(f"p{q}" for q in PERCENTILES), "max"))
    lines.append(f"  {'':<14}{head}")
    for col in ("prompt_tokens", "output_tokens"):
        d = s[col]
        vals = "".join(f"{d[k]:>10.1f}" if isinstance(d[k], float) else f"{d[k]:>10}"
                       for k in ("mean", "min", *(f"p{q}" for q in PERCENTILES), "max"))
        lines.append(f"  {col:<14}{vals}")
    for k, v in s["notes"].items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)
