"""Readers for each trace file format, and format detection.

Each reader turns one file into a :class:`Parsed` record (columns as numpy arrays, plus
where each row sits in the file); :func:`traces.loaders.load_trace` finishes it into a
:class:`~traces.schema.Trace` (skipped rows, sorting, synthetic arrivals). Formats:

``azure``        Azure LLM inference CSV: ``TIMESTAMP`` (``YYYY-MM-DD HH:MM:SS.fffffff``),
                 ``ContextTokens``, ``GeneratedTokens``. Arrival = seconds from the first row,
                 parsed to the nanosecond (no float drift).
``vidur``        Vidur processed trace: ``arrived_at`` (s), ``num_prefill_tokens``, ``num_decode_tokens``.
``length-stats`` Vidur/Sarathi request-length stats: ``num_prefill_tokens``, ``num_decode_tokens``
                 (``num_total_tokens``, ``pd_ratio`` ignored). No arrivals: synthetic ones required.
``mooncake``     Mooncake JSON lines: ``timestamp`` (ms from trace start), ``input_length``,
                 ``output_length``, ``hash_ids`` (prefix-block ids, not kept).
``burstgpt``     BurstGPT CSV: ``Timestamp`` (s), ``Model``, ``Request tokens``, ``Response tokens``,
                 ``Total tokens``, ``Log Type``. ``Response tokens == 0`` marks a failed request.
``alpaca``       JSON list of ``{instruction, input?, output}`` (Alpaca, AlpacaEval model outputs);
                 token counts from a WordPiece tokenizer (see :mod:`traces.tokenize`). No arrivals.
``sharegpt``     ShareGPT conversation JSON (first human -> assistant turn of each; see
                 :mod:`traces.sharegpt`). No arrivals.
``project``      This project's CSV: ``arrival_s``, ``prompt_tokens``, ``output_tokens`` and optional
                 ``request_id``, ``prompt``, ``response``, ``slo_class`` (see :func:`write_trace_csv`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from traces._parse import RowChecker, open_lines, read_csv_strings, require_columns, short_columns, filled, strip_then
from traces.schema import Trace, TraceError

FORMATS = ("azure", "vidur", "length-stats", "mooncake", "burstgpt", "alpaca", "project", "sharegpt")

# Header columns that identify a CSV format, checked in this order (first match wins).
_CSV_SIGNATURES = (
    ("project", ("arrival_s", "prompt_tokens", "output_tokens")),
    ("azure", ("TIMESTAMP", "ContextTokens", "GeneratedTokens")),
    ("vidur", ("arrived_at", "num_prefill_tokens", "num_decode_tokens")),
    ("length-stats", ("num_prefill_tokens", "num_decode_tokens")),
    ("burstgpt", ("Timestamp", "Request tokens", "Response tokens")),
)

# Columns parsed as numbers while a CSV is read (see read_csv_strings' ``typed``).
_TYPED = {
    "project": {"arrival_s": pl.Float64, "prompt_tokens": pl.Int64, "output_tokens": pl.Int64},
    "azure": {"ContextTokens": pl.Int64, "GeneratedTokens": pl.Int64},
    "vidur": {"arrived_at": pl.Float64, "num_prefill_tokens": pl.Int64, "num_decode_tokens": pl.Int64},
}


def _typed_columns(fmt: str | None, path: Path):
    def types(columns: list[str]) -> dict | None:
        try:
            return _TYPED.get(fmt or detect_format(path, columns))
        except TraceError:
            return None  # unknown header: the string read reports it
    return types


@dataclass
class Parsed:
    """One file's columns before they become a Trace.

    ``arrival_ticks`` is in units of ``1 / ticks_per_s`` seconds (integers where the file
    has integer times, so rebasing to the first row is exact); None when the format has
    no arrival times. ``rebase``: subtract the first kept row's time.
    """

    fmt: str
    checker: RowChecker
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_ticks: np.ndarray | None = None
    ticks_per_s: float = 1.0
    rebase: bool = False
    arrival_column: str = "arrival_s"
    request_id: np.ndarray | None = None
    prompt: list | None = None
    response: list | None = None
    slo_class: list | None = None
    notes: dict = field(default_factory=dict)


def detect_format(path: Path, columns: list[str] | None = None) -> str:
    """The format of ``path``: JSON formats by extension, CSV formats by their header."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        return "mooncake"
    if name.endswith(".json"):
        return "alpaca"
    if columns is None:
        raise TraceError(f"{path}: cannot tell the format from the name; pass format= one of {FORMATS}")
    for fmt, needed in _CSV_SIGNATURES:
        if all(c in columns for c in needed):
            return fmt
    known = "; ".join(f"{f}: {','.join(c)}" for f, c in _CSV_SIGNATURES)
    raise TraceError(f"{path}: unknown CSV format, header is {short_columns(columns)}; expected the columns of one of: {known} "
                     f"(or pass format=)")


def read_file(path: Path, fmt: str | None, skip_bad_rows: bool, max_rows: int | None = None, **opts) -> Parsed:
    """Parse ``path`` in format ``fmt`` (detected when None); ``max_rows``: only the first that many rows
    (CSV and JSON-lines formats read no further; an Alpaca JSON list is read whole)."""
    if fmt is not None and fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}; expected one of {FORMATS}")
    if fmt is None and path.name.lower().removesuffix(".gz").endswith((".json", ".jsonl")):
        fmt = detect_format(path)
    if fmt == "sharegpt":  # first human -> assistant turns of a (possibly cut) ShareGPT JSON list
        from traces.sharegpt import read_sharegpt

        return read_sharegpt(path, skip_bad_rows, **opts)
    if fmt in ("mooncake", "alpaca"):
        if fmt == "mooncake":
            return read_mooncake(path, skip_bad_rows, max_rows=max_rows, **opts)
        return _read_alpaca(path, skip_bad_rows, **opts)
    df, lines = read_csv_strings(path, max_rows=max_rows, typed=_typed_columns(fmt, path))
    fmt = fmt or detect_format(path, df.columns)
    require_columns(path, df.columns, list(dict(_CSV_SIGNATURES)[fmt]), fmt)
    reader = {"azure": read_azure, "vidur": read_vidur, "length-stats": read_length_stats,
              "burstgpt": read_burstgpt, "project": read_project}[fmt]
    checker = RowChecker(path, lines, skip_bad_rows)
    parsed = reader(path, df, checker, **opts)
    if checker.problems and any(t != pl.String for t in df.dtypes):  # name (or skip) bad rows from their text
        del df, parsed
        df, lines = read_csv_strings(path, max_rows=max_rows)
        checker = RowChecker(path, lines, skip_bad_rows)
        parsed = reader(path, df, checker, **opts)
    return parsed


# the command-line flag of each reader option, so a refusal names what the user typed
OPTION_FLAGS = {"drop_failed": "--drop-failed (BurstGPT only)"}


def no_options(fmt: str, opts: dict, path: Path, only: str = "") -> None:
    """Refuse reader options a format does not take, named as the command-line flag where it has one."""
    if opts:
        named = ", ".join(OPTION_FLAGS.get(k, k) for k in sorted(opts))
        raise TraceError(f"{path.name}: format {fmt!r} takes no option {named}" + (f" ({only})" if only else ""))


def read_azure(path: Path, df: pl.DataFrame, checker: RowChecker, **opts) -> Parsed:
    no_options("azure", opts, path)
    raw = df["TIMESTAMP"]
    ns = strip_then(raw, lambda c: c.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="ns", strict=False)).cast(pl.Int64)
    checker.flag(ns.is_null().to_numpy(), "TIMESTAMP", raw, "a time 'YYYY-MM-DD HH:MM:SS.fffffff'")
    return Parsed(
        "azure", checker,
        prompt_tokens=checker.integers(df["ContextTokens"], "ContextTokens", 1),
        output_tokens=checker.integers(df["GeneratedTokens"], "GeneratedTokens", 1),
        arrival_ticks=filled(ns, 0), ticks_per_s=1e9, rebase=True, arrival_column="TIMESTAMP",
    )


def read_vidur(path: Path, df: pl.DataFrame, checker: RowChecker, **opts) -> Parsed:
    no_options("vidur", opts, path)
    return Parsed(
        "vidur", checker,
        prompt_tokens=checker.integers(df["num_prefill_tokens"], "num_prefill_tokens", 1),
        output_tokens=checker.integers(df["num_decode_tokens"], "num_decode_tokens", 1),
        arrival_ticks=checker.floats(df["arrived_at"], "arrived_at"), arrival_column="arrived_at",
    )


def read_length_stats(path: Path, df: pl.DataFrame, checker: RowChecker, **opts) -> Parsed:
    no_options("length-stats", opts, path)
    return Parsed(
        "length-stats", checker,
        prompt_tokens=checker.integers(df["num_prefill_tokens"], "num_prefill_tokens", 1),
        output_tokens=checker.integers(df["num_decode_tokens"], "num_decode_tokens", 1),
    )


def read_burstgpt(path: Path, df: pl.DataFrame, checker: RowChecker, drop_failed: bool = False,
                  model: str | None = None, log_type: str | None = None) -> Parsed:
    """BurstGPT rows; ``model`` / ``log_type`` keep only matching rows (reported in notes).

    ``Response tokens == 0`` marks a failed request. Such rows are an error unless
    ``drop_failed=True``, which drops them and records how many in ``notes``.
    """
    notes: dict = {}
    for col, want in (("Model", model), ("Log Type", log_type)):
        if want is not None:
            require_columns(path, df.columns, [col], "burstgpt")
            sel = (df[col].str.strip_chars() == want).fill_null(False).to_numpy()
            notes[f"filter_{col.lower().replace(' ', '_')}"] = f"{want} ({int(sel.sum())} of {df.height} rows kept)"
            checker.active &= sel
    resp = checker.integers(df["Response tokens"], "Response tokens", 0)
    failed = (resp == 0) & checker.active & ~checker.bad
    if drop_failed:
        notes["dropped_failed_requests"] = int(failed.sum())
        checker.active &= ~failed
    else:
        checker.flag(failed, "Response tokens", df["Response tokens"], "an integer >= 1",
                     " (0 marks a failed request; pass drop_failed=True, or --drop-failed, to drop failed requests, "
                     "they are counted)")
    return Parsed(
        "burstgpt", checker,
        prompt_tokens=checker.integers(df["Request tokens"], "Request tokens", 1),
        output_tokens=resp, arrival_ticks=checker.floats(df["Timestamp"], "Timestamp"), rebase=True,
        arrival_column="Timestamp", notes=notes,
    )


def read_project(path: Path, df: pl.DataFrame, checker: RowChecker, **opts) -> Parsed:
    no_options("project", opts, path)
    text = {c: (df[c].fill_null("").to_list() if c in df.columns else None) for c in ("prompt", "response", "slo_class")}
    request_id = None
    if "request_id" in df.columns:
        request_id = checker.integers(df["request_id"], "request_id")
        seen = np.zeros(len(request_id), dtype=bool)
        seen[np.unique(request_id, return_index=True)[1]] = True  # first use of each id
        checker.flag(~seen, "request_id", df["request_id"], "an id not used by an earlier row")
    return Parsed(
        "project", checker,
        prompt_tokens=checker.integers(df["prompt_tokens"], "prompt_tokens", 1),
        output_tokens=checker.integers(df["output_tokens"], "output_tokens", 1),
        arrival_ticks=checker.floats(df["arrival_s"], "arrival_s"), request_id=request_id, **text,
    )


def read_mooncake(path: Path, skip_bad_rows: bool, max_rows: int | None = None, **opts) -> Parsed:
    """Mooncake JSON lines; ``timestamp`` is integer milliseconds from the trace start."""
    no_options("mooncake", opts, path)
    lines = open_lines(path, max_rows)
    where = np.flatnonzero([bool(s.strip()) for s in lines]) + 1
    checker = RowChecker(path, where, skip_bad_rows)
    cols: dict[str, list] = {"timestamp": [], "input_length": [], "output_length": []}
    for k, lineno in enumerate(where):
        try:
            rec = json.loads(lines[lineno - 1])
        except json.JSONDecodeError as e:
            rec = None
            checker.flag(np.arange(len(where)) == k, "(json)", [lines[lineno - 1][:80]] * len(where), f"a JSON object ({e.msg})")
        for c, vals in cols.items():
            v = rec.get(c) if isinstance(rec, dict) else None
            vals.append(str(v) if isinstance(v, int) and not isinstance(v, bool) else (None if v is None else repr(v)))
    as_series = {c: pl.Series(c, v, dtype=pl.String) for c, v in cols.items()}
    return Parsed(
        "mooncake", checker,
        prompt_tokens=checker.integers(as_series["input_length"], "input_length", 1),
        output_tokens=checker.integers(as_series["output_length"], "output_length", 1),
        arrival_ticks=checker.integers(as_series["timestamp"], "timestamp", 0), ticks_per_s=1e3,
        arrival_column="timestamp",
    )


def _read_alpaca(path: Path, skip_bad_rows: bool, **opts) -> Parsed:
    from traces.alpaca import read_alpaca  # imports the tokenizer only when a JSON file is read

    return read_alpaca(path, skip_bad_rows, **opts)


def write_trace_csv(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` in the project CSV format (read back by ``load_trace``, exactly)."""
    path = Path(path)
    cols: dict = {"request_id": trace.request_id, "arrival_s": trace.arrival_s,
                  "prompt_tokens": trace.prompt_tokens, "output_tokens": trace.output_tokens}
    for c in ("prompt", "response", "slo_class"):
        if getattr(trace, c) is not None:
            cols[c] = pl.Series(c, getattr(trace, c), dtype=pl.String)
    path.parent.mkdir(parents=True, exist_ok=True)
    # polars writes the shortest float repr that round-trips, so arrival times come back bit-identical.
    pl.DataFrame(cols).write_csv(path)
    return path
