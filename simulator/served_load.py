"""What a run was offered and what it could not serve: summary figures shared by both engines.

``offered_rate`` is the load the served requests really offered; ``reject_reason_counts``
groups rejections by kind; ``load_warnings`` flags a run whose figures describe only a
minority of its requests. :func:`simulator.metrics.summarize` puts them in ``summary.json``
(``offered_rate_requests_per_s``, ``reject_reasons``, ``warnings``).
"""
from __future__ import annotations

import re

import numpy as np
import polars as pl

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def offered_rate(arrival_s: np.ndarray) -> float | None:
    """The load actually offered: ``(n - 1) / (last - first arrival)`` of the served requests
    (None for fewer than two requests or a single instant)."""
    if len(arrival_s) < 2:
        return None
    span = float(np.max(arrival_s) - np.min(arrival_s))
    return (len(arrival_s) - 1) / span if span > 0 else None


def reject_reason_counts(reasons: pl.Series) -> dict[str, int]:
    """Rejections grouped by kind of reason, most frequent first: a number that varies within a
    kind (a prompt length) becomes ``N``, one that does not (the model context) is kept."""
    groups: dict[tuple, list[list[str]]] = {}  # the text between the numbers -> each reason's numbers
    for r in reasons.fill_null("(no reason given)").to_list():
        groups.setdefault(tuple(_NUMBER.split(r)), []).append(_NUMBER.findall(r))
    named = {}
    for texts, rows in groups.items():
        numbers = [col[0] if len(set(col)) == 1 else "N" for col in zip(*rows)]
        named[texts[0] + "".join(n + t for n, t in zip(numbers, texts[1:]))] = len(rows)
    return dict(sorted(named.items(), key=lambda kv: (-kv[1], kv[0])))


def load_warnings(summary: dict) -> list[str]:
    """Warnings about a run whose figures mostly describe requests that were not served as asked."""
    n = summary["num_requests"]
    rejected, capped = summary.get("num_rejected", 0), summary.get("num_output_capped", 0)
    out = []
    if n and rejected + capped > n / 2:
        out.append(f"{rejected + capped} of {n} requests ({(rejected + capped) / n:.0%}) were not served as the trace "
                   f"asks: {rejected} rejected, {capped} with the output capped at the model context (see reject_reasons)")
    return out
