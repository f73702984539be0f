"""One trace schema for every workload: columnar, validated, immutable by convention.

A trace is a set of requests with ``request_id``, ``arrival_s`` (seconds from the start
of the trace, non-decreasing), ``prompt_tokens`` (>= 1) and ``output_tokens`` (>= 1),
and optionally ``prompt`` / ``response`` text and an ``slo_class`` per request.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class TraceError(ValueError):
    """A trace file or value is malformed; the message names the file, row and column."""


@dataclass(frozen=True)
class Trace:
    name: str
    request_id: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prompt: list[str] | None = None
    response: list[str] | None = None
    slo_class: list[str] | None = None
    source: str = ""
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.request_id)
        for col in ("arrival_s", "prompt_tokens", "output_tokens"):
            if len(getattr(self, col)) != n:
                raise TraceError(f"trace {self.name!r}: column {col!r} has {len(getattr(self, col))} rows, expected {n}")
        for col in ("prompt", "response", "slo_class"):
            v = getattr(self, col)
            if v is not None and len(v) != n:
                raise TraceError(f"trace {self.name!r}: column {col!r} has {len(v)} rows, expected {n}")
        validate_columns(self.name, self.arrival_s, self.prompt_tokens, self.output_tokens)
        rid = self.request_id  # (increasing ids, the usual case, are unique without sorting a copy)
        if not (rid[1:] > rid[:-1]).all() and len(np.unique(rid)) != n:
            raise TraceError(f"trace {self.name!r}: request_id values are not unique")

    def __len__(self) -> int:
        return len(self.request_id)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate in requests/s ((n-1) gaps over the span)."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("inf")

    def take(self, idx) -> "Trace":
        """A new trace holding the rows ``idx`` (an index array or slice), in that order."""
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        pick = (lambda col: None if col is None else [col[i] for i in idx])
        return Trace(
            name=self.name,
            request_id=self.request_id[idx],
            arrival_s=self.arrival_s[idx],
            prompt_tokens=self.prompt_tokens[idx],
            output_tokens=self.output_tokens[idx],
            prompt=pick(self.prompt),
            response=pick(self.response),
            slo_class=pick(self.slo_class),
            source=self.source,
            notes=dict(self.notes),
        )

    def head(self, n: int) -> "Trace":
        return self.take(slice(0, n))

    def with_arrivals(self, arrival_s: np.ndarray, note: str | None = None) -> "Trace":
        notes = dict(self.notes)
        if note:
            notes.setdefault("transforms", []).append(note)
        return Trace(
            name=self.name, request_id=self.request_id, arrival_s=np.asarray(arrival_s, dtype=np.float64),
            prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens, prompt=self.prompt,
            response=self.response, slo_class=self.slo_class, source=self.source, notes=notes,
        )


def validate_columns(name: str, arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
    """Raise TraceError naming the first bad row (0-based data row) and column."""
    checks = (
        ("arrival_s", arrival_s, ~np.isfinite(arrival_s) | (arrival_s < 0), "a finite number >= 0"),
        ("prompt_tokens", prompt_tokens, prompt_tokens < 1, "an integer >= 1"),
        ("output_tokens", output_tokens, output_tokens < 1, "an integer >= 1"),
    )
    for col, values, bad, expected in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise TraceError(f"trace {name!r}: row {i}, column {col!r}: got {values[i]!r}, expected {expected}")
    if len(arrival_s) > 1:
        back = arrival_s[1:] < arrival_s[:-1]
        if back.any():
            i = int(np.argmax(back)) + 1
            raise TraceError(
                f"trace {name!r}: row {i}, column 'arrival_s': {arrival_s[i]} is earlier than the previous row's "
                f"{arrival_s[i - 1]}; arrivals must be non-decreasing"
            )


def make_trace(name: str, arrival_s, prompt_tokens, output_tokens, *, request_id=None, prompt=None,
               response=None, slo_class=None, source: str = "", notes: dict | None = None) -> Trace:
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    n = len(arrival_s)
    return Trace(
        name=name,
        request_id=np.arange(n, dtype=np.int64) if request_id is None else np.asarray(request_id, dtype=np.int64),
        arrival_s=arrival_s,
        prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64),
        output_tokens=np.asarray(output_tokens, dtype=np.int64),
        prompt=None if prompt is None else list(prompt),
        response=None if response is None else list(response),
        slo_class=None if slo_class is None else list(slo_class),
        source=source,
        notes=dict(notes or {}),
    )
