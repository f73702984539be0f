"""``syncintellects sweep`` / ``dashboard`` / ``demo``: many runs, their table and their plots."""
from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import polars as pl

from syncintellects.cmd_simulate import parse_params
from syncintellects.cmd_trace import add_load_arguments, load_options
from syncintellects.errors import UsageError, check_out_dir
from syncintellects.spec import PREDICTOR_MODEL_HELP, RunSpec, check_spec
from syncintellects.sweep import BACKENDS, SPEC_FIELDS, expand, run_sweep
from syncintellects.workers import Interrupted, interruptible

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


def _kind(annotation) -> type:
    """The JSON type a RunSpec field takes, from its annotation ("int | None" -> int; tuples are objects)."""
    head = str(annotation).split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool, "tuple": dict}.get(head, str)


FIELD_TYPES = {f.name: _kind(f.type) for f in fields(RunSpec)}
NULLABLE = {f.name for f in fields(RunSpec) if "None" in str(f.type)}


def spec_value(where: str, field: str, value):
    """One RunSpec field's value from a JSON spec file, type-checked (a one-line error names it)."""
    if field not in SPEC_FIELDS:
        raise ValueError(f"{where}: unknown field {field!r}; RunSpec fields are {', '.join(SPEC_FIELDS)}")
    kind = FIELD_TYPES.get(field, str)
    if value is None and field in NULLABLE:
        return None
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, kind))
    if not ok:
        name = {int: "a whole number", float: "a number", bool: "true or false", dict: "an object", str: "a string"}[kind]
        raise ValueError(f"{where}: field {field!r} must be {name}, got {json.dumps(value)}")
    if kind is float:
        return float(value)
    if kind is dict:
        return tuple(sorted(value.items()))
    return value


def spec_from_file(path: str) -> tuple[RunSpec, dict]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--spec {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--spec {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--spec {path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict) or set(data) - {"base", "grid"}:
        raise ValueError(f'--spec {path}: expected an object {{"base": {{RunSpec fields}}, "grid": {{field: [values]}}}}')
    base, grid = data.get("base", {}), data.get("grid", {})
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ValueError(f'--spec {path}: "base" and "grid" must be objects')
    base = {k: spec_value(f"--spec {path} base", k, v) for k, v in base.items()}
    out = {}
    for k, vs in grid.items():
        if not isinstance(vs, list) or not vs:
            raise ValueError(f"--spec {path} grid: field {k!r} needs a non-empty list of values")
        out[k] = [spec_value(f"--spec {path} grid", k, v) for v in vs]
    return RunSpec(**base), out


def grid_from_args(args) -> tuple[RunSpec, dict]:
    if args.spec:
        mixed = [f"--{f.replace('_', '-')}" for f in LIST_FLAGS if getattr(args, f) is not None]
        mixed += [flag for flag, given in (("--num-requests", args.num_requests is not None),
                                           ("--profile", args.profile is not None),
                                           ("--predictor-model", args.predictor_model is not None),
                                           ("--kv-blocks", args.kv_blocks is not None), ("--param", bool(args.param)),
                                           ("--predictor-param", bool(args.predictor_param)),
                                           ("--tile", args.tile),
                                           ("the trace-reading flags", bool(load_options(args)))) if given]
        if mixed:
            raise ValueError(f"--spec describes the whole sweep; put {', '.join(mixed)} in its base or grid instead")
        return spec_from_file(args.spec)
    grid = {}
    for flag, (field, parse) in LIST_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            grid[field] = _split(flag, value, parse)
    base = RunSpec(num_requests=2000 if args.num_requests is None else args.num_requests,
                   profile=args.profile or RunSpec.profile, predictor_model=args.predictor_model,
                   kv_blocks=args.kv_blocks, policy_params=parse_params(args.param),
                   predictor_params=parse_params(args.predictor_param, "--predictor-param"),
                   trace_options=tuple(sorted(load_options(args).items())), tile=args.tile,
                   slo=_slo_text(args.slo))
    return base, grid


def _slo_text(parts):
    from simulator.slo import format_slo, parse_slo

    return format_slo(parse_slo(parts)) if parts else None


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of simulations in parallel (local processes or Ray)",
                       description="Run the cartesian product of the comma-separated values, e.g. "
                                   "--policy static,continuous --rate 1,2,4 --seed 0,1; writes each finished run to "
                                   "DIR/runs/<run key>/ and DIR/results.parquet. Rerunning the same command resumes "
                                   "(only missing runs are run); Ctrl-C keeps the finished runs.")
    for flag in LIST_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), default=None, help="comma-separated values")
    p.add_argument("--num-requests", type=int, default=None, help="requests per run (default 2000)")
    p.add_argument("--profile", default=None)
    p.add_argument("--predictor-model", default=None, help=PREDICTOR_MODEL_HELP)
    p.add_argument("--kv-blocks", type=int, default=None, help="override the KV-cache size in blocks")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="extra policy parameter")
    p.add_argument("--predictor-param", action="append", default=[], metavar="NAME=VALUE",
                   help="predictor parameter for every run, e.g. error_model=in-distribution")
    p.add_argument("--slo", action="append", default=None, metavar="[CLASS:]ttft=S,tpot=S,e2e=S",
                   help="SLO targets for every run (adds slo_attainment and goodput to the results)")
    p.add_argument("--tile", action="store_true", help="repeat the trace's arrivals back to back when a seed's "
                   "window of --num-requests runs past the trace's end")
    add_load_arguments(p)
    p.add_argument("--spec", default=None, help='JSON file {"base": {RunSpec fields}, "grid": {field: [values]}}')
    p.add_argument("--backend", choices=BACKENDS, default="local")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address HOST:PORT (default: start a local Ray)")
    p.add_argument("--keep-runs", action="store_true",
                   help="also keep every run's requests.parquet and steps.parquet under DIR/runs/<run key>/")
    p.add_argument("--fresh", action="store_true",
                   help="delete DIR's earlier runs and start again (default: run only what DIR does not hold yet)")
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
    m.add_argument("--fresh", action="store_true", help="delete an earlier demo in --out and start again")
    m.set_defaults(func=demo)


def print_table(df: pl.DataFrame) -> None:
    varying = [c for c in ("trace", "num_requests", "profile") if c in df.columns and df[c].n_unique() > 1]
    cols = varying + [c for c in ("policy", "predictor", "length_control", "batch_size", "rate", "seed", "e2e_latency_s_mean",
                        "e2e_latency_s_p99", "ttft_s_mean", "throughput_output_tokens_per_s", "qos_mean",
                        "num_rejected", "sim_wall_s") if c in df.columns and df[c].null_count() < df.height]
    with pl.Config(tbl_rows=200, tbl_cols=30, tbl_width_chars=200, float_precision=3, tbl_hide_dataframe_shape=True):
        print(df.select(cols))


def _stopped(e: Interrupted, out: str, total: int, dashboard: bool = False) -> int:
    """The one line after a Ctrl-C / SIGTERM (called inside the sweep's ``interruptible`` block, so
    no signal falls between the sweep and this). A second signal while the dashboard of the
    finished runs is written stops that write; the line says so, and the exit status stays the
    first signal's."""
    done = len(list((Path(out) / "runs").glob("*/summary.json")))
    line = (f"interrupted by {e}: {done} of {total} runs done and kept in {out}/runs; "
            f"run the same command again to finish the rest")
    if dashboard and (Path(out) / "results.parquet").exists():
        from syncintellects.dashboard import write_dashboard

        try:
            with interruptible():
                write_dashboard(out)  # from the finished runs
        except Interrupted:
            line += "; the dashboard was not written (interrupted again)"
    print(line, file=sys.stderr)
    return e.exit_status


def sweep(args) -> int:
    from syncintellects.dashboard import write_dashboard

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers is not None and getattr(args, "backend", "local") != "local":
        raise UsageError(f"--workers {args.workers} with --backend {args.backend}: only the local backend has "
                         "worker processes (serial runs one at a time; ray uses the cluster's)")
    base, grid = grid_from_args(args)
    specs = expand(base, grid)
    with interruptible():  # after the first signal, later ones are ignored until _stopped's own block
        try:
            df = run_sweep(specs, backend=args.backend, workers=args.workers, out=args.out, keep_runs=args.keep_runs,
                           fresh=args.fresh, ray_address=args.ray_address)
        except Interrupted as e:
            return _stopped(e, args.out, len(specs), args.dashboard)
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
    if args.workers is not None and args.workers < 1:  # refused before the banner: a mistake is one line
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    for spec in specs:
        check_spec(spec)
    check_out_dir(args.out)
    print(f"Simulating {len(specs)} runs of {args.num_requests} Azure conversation requests on one A100 "
          f"(Llama-2-7B, fp16 profile): task batching (B=16), the SyncIntellects policy (progressive prediction, "
          f"length grouping, length control) and continuous batching, at six loads.")
    with interruptible():
        try:
            df = run_sweep(specs, workers=args.workers, out=args.out, fresh=args.fresh)
        except Interrupted as e:
            return _stopped(e, args.out, len(specs))
    print_table(df)
    html = write_dashboard(args.out, title="Task batching vs SyncIntellects vs continuous batching, "
                                           "Azure conversation trace, A100 / Llama-2-7B")
    print(f"\nresults: {args.out}/results.parquet\ndashboard: {html}")
    return 0
