"""``syncintellects sweep`` / ``dashboard`` / ``demo``: many runs, their table and their plots."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from syncintellects.cmd_simulate import parse_params
from syncintellects.cmd_trace import add_load_arguments, load_options
from syncintellects.spec import RunSpec
from syncintellects.sweep import BACKENDS, SPEC_FIELDS, expand, run_sweep

LIST_FLAGS = {  # flag -> (RunSpec field, parser of one item)
    "trace": ("trace", str),
    "policy": ("policy", str),
    "rate": ("rate", float),
    "seed": ("seed", int),
    "batch_size": ("batch_size", int),
    "predictor": ("predictor", str),
    "length_control": ("length_control", lambda v: {"on": True, "off": False}[v]),
    "replicas": ("replicas", int),
    "router": ("router", str),
}


def _split(flag: str, text: str, parse) -> list:
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            out.append(parse(item))
        except (ValueError, KeyError):
            raise ValueError(f"--{flag.replace('_', '-')}: cannot read {item!r}") from None
    return out


def grid_from_args(args) -> tuple[RunSpec, dict]:
    if args.spec:
        mixed = [f"--{f.replace('_', '-')}" for f in LIST_FLAGS if getattr(args, f) is not None]
        if mixed:
            raise ValueError(f"--spec describes the whole sweep; put {', '.join(mixed)} in its grid instead")
        data = json.loads(Path(args.spec).read_text())
        base = data.get("base", {})
        unknown = set(base) - set(SPEC_FIELDS)
        if unknown:
            raise ValueError(f"{args.spec}: unknown base fields {sorted(unknown)}")
        for k in ("policy_params", "trace_options"):
            base[k] = tuple(sorted(base.get(k, {}).items()))
        return RunSpec(**base), data.get("grid", {})
    grid = {}
    for flag, (field, parse) in LIST_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            grid[field] = _split(flag, value, parse)
    base = RunSpec(num_requests=args.num_requests, profile=args.profile or RunSpec.profile,
                   predictor_model=args.predictor_model, kv_blocks=args.kv_blocks, policy_params=parse_params(args.param),
                   trace_options=tuple(sorted(load_options(args).items())), slo=_slo_text(args.slo))
    return base, grid


def _slo_text(parts):
    from simulator.slo import format_slo, parse_slo

    return format_slo(parse_slo(parts)) if parts else None


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of simulations in parallel (local processes or Ray)",
                       description="Run the cartesian product of the comma-separated values, e.g. "
                                   "--policy static,continuous --rate 1,2,4 --seed 0,1; writes DIR/results.parquet.")
    for flag in LIST_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), default=None, help="comma-separated values")
    p.add_argument("--num-requests", type=int, default=2000)
    p.add_argument("--profile", default=None)
    p.add_argument("--predictor-model", default=None, help="directory written by train-predictor")
    p.add_argument("--kv-blocks", type=int, default=None, help="override the KV-cache size in blocks")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="extra policy parameter")
    p.add_argument("--slo", action="append", default=None, metavar="[CLASS:]ttft=S,tpot=S,e2e=S",
                   help="SLO targets for every run (adds slo_attainment and goodput to the results)")
    add_load_arguments(p)
    p.add_argument("--spec", default=None, help='JSON file {"base": {RunSpec fields}, "grid": {field: [values]}}')
    p.add_argument("--backend", choices=BACKENDS, default="local")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--keep-runs", action="store_true", help="also write every run's own files under DIR/runs/")
    p.add_argument("--dashboard", action="store_true", help="write DIR/dashboard.html when done")
    p.add_argument("--out", required=True)
    p.set_defaults(func=sweep)

    d = sub.add_parser("dashboard", help="plot a sweep's results as a standalone HTML dashboard")
    d.add_argument("results", help="a sweep directory or its results.parquet")
    d.add_argument("--out", default=None, help="HTML path (default: DIR/dashboard.html)")
    d.set_defaults(func=dashboard)

    m = sub.add_parser("demo", help="the default study: task batching, SyncIntellects and continuous batching on "
                                    "the Azure conversation trace at six loads, with a dashboard")
    m.add_argument("--out", default="results/demo")
    m.add_argument("--num-requests", type=int, default=2000)
    m.add_argument("--workers", type=int, default=None)
    m.set_defaults(func=demo)


def print_table(df: pl.DataFrame) -> None:
    varying = [c for c in ("trace", "num_requests", "profile") if c in df.columns and df[c].n_unique() > 1]
    cols = varying + [c for c in ("policy", "predictor", "length_control", "batch_size", "rate", "seed", "e2e_latency_s_mean",
                        "e2e_latency_s_p99", "ttft_s_mean", "throughput_output_tokens_per_s", "qos_mean",
                        "num_rejected", "sim_wall_s") if c in df.columns and df[c].null_count() < df.height]
    with pl.Config(tbl_rows=200, tbl_cols=30, tbl_width_chars=200, float_precision=3, tbl_hide_dataframe_shape=True):
        print(df.select(cols))


def sweep(args) -> int:
    from syncintellects.dashboard import write_dashboard

    base, grid = grid_from_args(args)
    specs = expand(base, grid)
    df = run_sweep(specs, backend=args.backend, workers=args.workers, out=args.out, keep_runs=args.keep_runs,
                   ray_address=args.ray_address)
    print_table(df)
    print(f"{len(specs)} runs -> {args.out}/results.parquet")
    if args.dashboard:
        print(f"dashboard -> {write_dashboard(args.out)}")
    return 0


def dashboard(args) -> int:
    from syncintellects.dashboard import write_dashboard

    print(f"dashboard -> {write_dashboard(args.results, args.out)}")
    return 0


def demo(args) -> int:
    from syncintellects.dashboard import write_dashboard

    rates = {"rate": [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]}
    arms = (RunSpec(trace="azure-conv", num_requests=args.num_requests, policy="static"),
            RunSpec(trace="azure-conv", num_requests=args.num_requests, policy="syncintellects",
                    predictor="progressive", length_control=True),
            RunSpec(trace="azure-conv", num_requests=args.num_requests, policy="continuous"))
    specs = [s for arm in arms for s in expand(arm, rates)]
    print(f"Simulating {len(specs)} runs of {args.num_requests} Azure conversation requests on one A100 "
          f"(Llama-2-7B, fp16 profile): task batching (B=16), the SyncIntellects policy (progressive prediction, "
          f"length grouping, length control) and continuous batching, at six loads.")
    df = run_sweep(specs, workers=args.workers, out=args.out)
    print_table(df)
    html = write_dashboard(args.out, title="Task batching vs SyncIntellects vs continuous batching, "
                                           "Azure conversation trace, A100 / Llama-2-7B")
    print(f"\nresults: {args.out}/results.parquet\ndashboard: {html}")
    return 0
