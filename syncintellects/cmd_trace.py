"""``syncintellects trace``: inspect, synthesize and convert workload traces.

    syncintellects trace list
    syncintellects trace info azure-conv
    syncintellects trace synth --arrivals gamma --cv 2 --rate 4 --num-requests 1000 \\
        --lengths azure-conv --seed 1 --out bursty.csv
    syncintellects trace convert conversation_trace.jsonl.gz --rate 2 --out mooncake_2rps.csv
"""
from __future__ import annotations

import argparse
import json
import math

from syncintellects.errors import UsageError, check_out_file


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """Options for reading a trace file (format, bad rows, synthetic arrivals for formats without them)."""
    g = p.add_argument_group("reading the input trace")
    g.add_argument("--format", default=None, help="force the file format (default: detected from name/header)")
    g.add_argument("--skip-bad-rows", action="store_true", help="drop malformed rows (counted and reported)")
    g.add_argument("--sort", action="store_true", help="sort rows by arrival time instead of rejecting the file")
    g.add_argument("--drop-failed", action="store_true",
                   help="BurstGPT: drop failed requests (Response tokens == 0), counted in the notes")
    g.add_argument("--synthetic-arrivals", choices=("poisson", "gamma"), default=None,
                   help="draw arrival times (required for files without them: length stats, Alpaca JSON)")
    g.add_argument("--synthetic-rate", type=float, default=None, help="rate of the synthetic arrivals, req/s")
    g.add_argument("--synthetic-cv", type=float, default=1.0, help="CV of synthetic gamma inter-arrival gaps")
    g.add_argument("--synthetic-seed", type=int, default=None, help="seed of the synthetic arrivals (default: --seed, "
                   "or 0 where there is no --seed)")


def load_options(args, default_seed: int | None = None) -> dict:
    """load_trace keyword arguments from the flags of :func:`add_load_arguments` (defaults left out)."""
    if args.synthetic_arrivals is None:
        given = [f for f, v in (("--synthetic-rate", args.synthetic_rate), ("--synthetic-seed", args.synthetic_seed),
                                ("--synthetic-cv", None if args.synthetic_cv == 1.0 else args.synthetic_cv)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} without --synthetic-arrivals poisson|gamma: nothing would use it")
    if args.synthetic_arrivals == "poisson" and args.synthetic_cv != 1.0:
        raise UsageError(f"--synthetic-cv {args.synthetic_cv} with --synthetic-arrivals poisson: a Poisson process "
                         "has CV 1; use --synthetic-arrivals gamma")
    if args.synthetic_arrivals is not None and args.synthetic_rate is None:
        raise UsageError(f"--synthetic-arrivals {args.synthetic_arrivals} needs --synthetic-rate (req/s)")
    if args.synthetic_rate is not None:
        check_rate("--synthetic-rate", args.synthetic_rate)
    opts = {"format": args.format, "skip_bad_rows": args.skip_bad_rows, "sort": args.sort,
            "arrivals": args.synthetic_arrivals, "rate": args.synthetic_rate, "cv": args.synthetic_cv,
            "seed": args.synthetic_seed if args.synthetic_seed is not None else default_seed}
    if args.drop_failed:
        opts["drop_failed"] = True
    if args.synthetic_arrivals is None:
        opts.pop("seed")
    defaults = {"format": None, "skip_bad_rows": False, "sort": False, "arrivals": None, "rate": None, "cv": 1.0}
    return {k: v for k, v in opts.items() if defaults.get(k, object()) != v}


def check_rate(flag: str, rate: float) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise UsageError(f"{flag}: got {rate!r}, expected a finite number > 0 req/s")


def _load(source: str, args):
    from traces import load_trace

    return load_trace(source, **load_options(args, default_seed=0))  # as simulate, whose --seed defaults to 0


def register(sub) -> None:
    p = sub.add_parser("trace", help="inspect, synthesize and convert workload traces",
                       description="Inspect, synthesize and convert workload traces (see traces/).")
    tsub = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")

    q = tsub.add_parser("list", help="list the bundled traces")
    q.set_defaults(func=cmd_list)

    q = tsub.add_parser("info", help="rows, span, mean rate and length percentiles of a trace")
    q.add_argument("trace", help="bundled trace name or a trace file path")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_load_arguments(q)
    q.set_defaults(func=cmd_info)

    q = tsub.add_parser("synth", help="generate a synthetic trace (project CSV format)")
    q.add_argument("--arrivals", choices=("poisson", "gamma"), default="poisson")
    q.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of inter-arrival gaps (gamma)")
    q.add_argument("--rate", type=float, required=True, help="mean arrival rate, requests/s")
    q.add_argument("--num-requests", type=int, required=True)
    q.add_argument("--lengths", default="azure-conv",
                   help="trace name/path to resample (prompt, output) pairs from, or 'lognormal'")
    q.add_argument("--fit-to", default=None, help="with --lengths lognormal: the trace to fit it to "
                   "(default: azure-conv)")
    q.add_argument("--seed", type=int, required=True)
    q.add_argument("--out", required=True, help="output CSV path")
    q.set_defaults(func=cmd_synth)

    q = tsub.add_parser("convert", help="convert any supported trace to the project CSV format")
    q.add_argument("input", help="bundled trace name or a trace file path")
    q.add_argument("--out", required=True, help="output CSV path")
    q.add_argument("--rate", type=float, default=None, help="rescale arrivals to this mean rate, req/s")
    q.add_argument("--start", type=float, default=None, help="keep requests arriving at or after this time (s)")
    q.add_argument("--end", type=float, default=None, help="keep requests arriving before this time (s)")
    add_load_arguments(q)
    q.set_defaults(func=cmd_convert)


def cmd_list(args) -> int:
    from traces.loaders import BUNDLED

    for name, (_, fmt, _, desc) in sorted(BUNDLED.items()):
        print(f"{name:<18} [{fmt}] {desc}")
    return 0


def cmd_info(args) -> int:
    from traces.stats import format_summary, trace_summary

    s = trace_summary(_load(args.trace, args))
    print(json.dumps(s, indent=2, default=str) if args.json else format_summary(s))
    return 0


def cmd_synth(args) -> int:
    from traces import LognormalLengths, load_trace, synthesize, write_trace_csv

    if args.arrivals == "poisson" and args.cv != 1.0:
        raise UsageError(f"--cv {args.cv} with --arrivals poisson: a Poisson process has CV 1; use --arrivals gamma")
    if args.fit_to is not None and args.lengths != "lognormal":
        raise UsageError(f"--fit-to {args.fit_to} needs --lengths lognormal (--lengths {args.lengths} resamples "
                         f"that trace's own lengths)")
    if args.num_requests < 1:
        raise UsageError(f"--num-requests must be >= 1, got {args.num_requests}")
    check_rate("--rate", args.rate)
    if args.seed < 0:
        raise UsageError(f"--seed: got {args.seed}, expected an integer >= 0")
    check_out_file(args.out)
    if args.lengths == "lognormal":
        lengths = LognormalLengths.fit(load_trace(args.fit_to or "azure-conv"))
    else:
        lengths = load_trace(args.lengths)
    trace = synthesize(args.num_requests, args.rate, lengths, process=args.arrivals, cv=args.cv, seed=args.seed)
    out = write_trace_csv(trace, args.out)
    print(f"wrote {len(trace)} requests to {out} ({trace.notes['arrivals']}; lengths: {trace.notes['lengths']})")
    return 0


def cmd_convert(args) -> int:
    from traces import rescale_rate, slice_window, write_trace_csv

    start, end = (args.start if args.start is not None else 0.0), (args.end if args.end is not None else float("inf"))
    if args.start is not None or args.end is not None:
        if not (math.isfinite(start) and start < end):
            raise UsageError(f"--start {args.start} / --end {args.end}: need a finite --start before --end")
    if args.rate is not None:
        check_rate("--rate", args.rate)
    check_out_file(args.out)
    trace = _load(args.input, args)
    if args.start is not None or args.end is not None:
        try:
            trace = slice_window(trace, start, end)
        except ValueError as e:  # no request in the window
            raise UsageError(f"--start/--end: {str(e).removeprefix('slice_window: ')}") from None
    if args.rate is not None:
        try:
            trace = rescale_rate(trace, args.rate)
        except ValueError as e:
            raise UsageError(f"--rate {args.rate}: {str(e).removeprefix('rescale_rate: ')}") from None
    out = write_trace_csv(trace, args.out)
    print(f"wrote {len(trace)} requests to {out} (mean rate {trace.mean_rate:.4g} req/s)")
    for k, v in trace.notes.items():
        print(f"  {k}: {v}")
    return 0
