"""Service-level objectives: per-request targets, attainment and goodput.

An SLO is a set of per-request targets in seconds on TTFT (time to first token), TPOT
(mean time per output token over the request, i.e. (last token - first token) /
(tokens - 1)) and E2E (arrival to release). A request *meets* its SLO when it was served
(not rejected, finished) and every given target holds; a rejected or unfinished request
misses. A request with a single output token has no TPOT and passes that target.

Targets are given for all requests (``ttft=2,tpot=0.1``) and/or per ``slo_class`` of the
trace (``interactive:ttft=0.5``); a class without its own targets uses the class-less
ones. Written as text, several parts are separated by ``;`` (the command line repeats
``--slo``):

    ttft=2,tpot=0.1;interactive:ttft=0.5,tpot=0.05;batch:e2e=600

Results: ``requests.parquet`` gains ``slo_met``; ``summary.json`` gains ``slo_attainment``
(requests that met their SLO / requests OFFERED), ``goodput_requests_per_s`` (requests that
met their SLO / the run's makespan, the span used for throughput) and, with classes,
``slo_classes`` (the same per class).
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

METRICS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_latency_s"}
ALL = ""  # the key of the class-less targets


def parse_slo(text: str | list[str] | tuple[str, ...] | None) -> dict[str, dict[str, float]]:
    """``"ttft=2,tpot=0.1;cls:e2e=9"`` -> ``{"": {"ttft": 2.0, "tpot": 0.1}, "cls": {"e2e": 9.0}}``.

    Raises ValueError naming ``--slo`` and the bad part."""
    parts = [text] if isinstance(text, str) else list(text or [])
    out: dict[str, dict[str, float]] = {}
    for part in (p.strip() for chunk in parts for p in chunk.split(";")):
        if not part:
            continue
        cls, _, body = part.rpartition(":")
        cls = cls.strip()
        if cls in out:
            raise ValueError(f"--slo {part!r}: targets for {'class ' + repr(cls) if cls else 'all requests'} given twice")
        targets: dict[str, float] = {}
        for item in body.split(","):
            name, eq, value = item.partition("=")
            name = name.strip().lower()
            if not eq or name not in METRICS:
                raise ValueError(f"--slo {part!r}: expected [CLASS:]ttft=S,tpot=S,e2e=S (seconds), got {item.strip()!r}")
            if name in targets:
                raise ValueError(f"--slo {part!r}: {name} given twice")
            try:
                v = float(value)
            except ValueError:
                raise ValueError(f"--slo {part!r}: {name}={value.strip()!r} is not a number of seconds") from None
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"--slo {part!r}: {name} must be a positive number of seconds, got {value.strip()}")
            targets[name] = v
        out[cls] = targets
    if not out:
        raise ValueError("--slo: no targets given (expected e.g. ttft=2,tpot=0.1)")
    return out


def format_slo(slo: dict[str, dict[str, float]]) -> str:
    """The canonical text of a parsed SLO (stable: same targets, same text)."""
    parts = []
    for cls in sorted(slo):
        body = ",".join(f"{k}={_num(slo[cls][k])}" for k in METRICS if k in slo[cls])
        parts.append(f"{cls}:{body}" if cls else body)
    return ";".join(parts)


def _num(v: float) -> str:
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def slo_met(requests: pl.DataFrame, slo: dict[str, dict[str, float]], slo_class: list | None = None) -> np.ndarray:
    """Per request: True when it was served and met every target of its class."""
    n = requests.height
    classes = {c for c in slo if c}
    if classes and slo_class is None:
        raise ValueError(f"--slo names classes {sorted(classes)} but the trace has no slo_class column")
    if classes:
        known = set(slo_class)
        missing = sorted(c for c in classes if c not in known)
        if missing:
            raise ValueError(f"--slo names classes {missing} that no request of the trace has "
                             f"(its classes: {sorted(str(c) for c in known)})")
    served = (~requests["rejected"].to_numpy()) & np.isfinite(requests["finish_s"].cast(pl.Float64).fill_null(np.nan)
                                                              .to_numpy())
    cols = {m: requests[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for m, c in METRICS.items()}
    met = served.copy()
    cls_arr = np.asarray([ALL if c is None else str(c) for c in slo_class], dtype=object) if slo_class else None
    groups = [(ALL, np.ones(n, dtype=bool))] if not classes else []
    if classes:
        in_named = np.isin(cls_arr, list(classes))
        groups = [(c, cls_arr == c) for c in sorted(classes)] + [(ALL, ~in_named)]
    for cls, mask in groups:
        for metric, limit in slo.get(cls, slo.get(ALL, {})).items():
            v = cols[metric][mask]
            ok = np.isnan(v) if metric == "tpot" else np.zeros(len(v), dtype=bool)  # one token: no TPOT
            ok |= v <= limit
            met[mask] &= ok
    return met


def _figures(met: np.ndarray, span: float | None) -> dict:
    n, good = len(met), int(met.sum())
    return {"num_requests": n, "num_slo_met": good, "slo_attainment": good / n if n else 0.0,
            "goodput_requests_per_s": good / span if span and math.isfinite(span) and span > 0 else 0.0}


def apply_slo(requests: pl.DataFrame, summary: dict, slo: dict[str, dict[str, float]],
              slo_class: list | None = None) -> pl.DataFrame:
    """Add ``slo_met`` to the request table and the SLO figures to ``summary`` (in place); returns the table."""
    met = slo_met(requests, slo, slo_class)
    span = summary.get("makespan_s")
    fig = _figures(met, span)
    summary["slo"] = format_slo(slo)
    summary["slo_attainment"] = fig["slo_attainment"]
    summary["goodput_requests_per_s"] = fig["goodput_requests_per_s"]
    summary["num_slo_met"] = fig["num_slo_met"]
    if slo_class is not None:
        cls_arr = np.asarray([ALL if c is None else str(c) for c in slo_class], dtype=object)
        summary["slo_classes"] = {c or "(none)": _figures(met[cls_arr == c], span) for c in sorted(set(cls_arr))}
    if "replicas" in summary and "replica" in requests.columns:  # a cluster: the figures per replica too
        rep = requests["replica"].fill_null(-1).to_numpy()
        for k, r in enumerate(summary["replicas"]):
            r.update({key: v for key, v in _figures(met[rep == k], r.get("makespan_s")).items() if key != "num_requests"})
    out = requests.with_columns(slo_met=pl.Series(met, dtype=pl.Boolean))
    if slo_class is not None and "slo_class" not in out.columns:
        out = out.with_columns(slo_class=pl.Series([None if c is None else str(c) for c in slo_class], dtype=pl.Utf8))
    return out
