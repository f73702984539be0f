"""``syncintellects simulate``: one trace, one policy, one replica, simulated."""
from __future__ import annotations

import argparse
import json
import os
import sys

from syncintellects.cmd_trace import add_load_arguments, load_options
from syncintellects.errors import UsageError, check_out_dir
from syncintellects.spec import PREDICTOR_MODEL_HELP, RunSpec, check_spec, run_simulation


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Trace, policy and predictor flags shared by simulate, run and validate."""
    p.add_argument("--trace", default="azure-conv", help="bundled trace name (azure-conv, azure-code, ...) or a CSV/JSON path")
    p.add_argument("--policy", default="continuous", help="scheduling policy (see `syncintellects policies`)")
    p.add_argument("--rate", type=float, default=None, help="mean arrival rate of the served requests, req/s: their "
                   "arrival times are stretched to it, keeping burstiness (default: the trace's own arrivals)")
    p.add_argument("--num-requests", type=int, default=None, help="serve N consecutive requests: seed k takes "
                   "requests k*N..(k+1)*N-1 of the trace (default: the whole trace)")
    p.add_argument("--seed", type=int, default=0, help="which window of --num-requests requests, and the seed of "
                   "every random draw (predictor noise, length response, synthetic arrivals)")
    p.add_argument("--tile", action="store_true", help="repeat the trace's arrivals back to back when the window "
                   "runs past its end (otherwise that is an error)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of static / length-grouped batching")
    p.add_argument("--predictor", default=None, help="length predictor: oracle, noisy, prompt, progressive")
    p.add_argument("--predictor-model", default=None, help=PREDICTOR_MODEL_HELP)
    p.add_argument("--predictor-param", action="append", default=[], metavar="NAME=VALUE",
                   help="predictor parameter (repeatable), e.g. --predictor-param error_model=in-distribution "
                        "(prompt/progressive without prompt text: which measured errors to apply; default "
                        "unseen-source) or refresh_every=16 (progressive)")
    p.add_argument("--length-control", choices=("off", "on"), default="off",
                   help="length control: prompt instructions that pull a batch's answer lengths together")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="extra policy parameter (repeatable), e.g. --param max_num_seqs=128")
    add_load_arguments(p)


def parse_params(items: list[str], flag: str = "--param") -> tuple:
    out, seen = [], {}
    for it in items:
        if "=" not in it or not it.split("=", 1)[0].strip():
            raise UsageError(f"{flag} {it!r}: expected NAME=VALUE")
        k, v = it.split("=", 1)
        k = k.strip()
        if k in seen:  # never the last one silently
            raise UsageError(f"{flag} {k}: given twice ({seen[k]!r} and {it!r}); give it once")
        seen[k] = it
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
        out.append((k, v))
    return tuple(out)


def spec_from_args(args) -> RunSpec:
    """The RunSpec of simulate / run / validate flags, checked (UsageError naming the flag)."""
    return check_spec(RunSpec(trace=args.trace, policy=args.policy, rate=args.rate, num_requests=args.num_requests,
                   seed=args.seed, profile=getattr(args, "profile", None) or RunSpec.profile,
                   batch_size=args.batch_size, predictor=args.predictor, predictor_model=args.predictor_model,
                   length_control=args.length_control == "on", kv_blocks=getattr(args, "kv_blocks", None),
                   policy_params=parse_params(args.param),
                   predictor_params=parse_params(getattr(args, "predictor_param", []), "--predictor-param"),
                   trace_options=tuple(sorted(load_options(args, default_seed=args.seed).items())),
                   length_scale=getattr(args, "length_scale", 1.0), tile=args.tile, **cluster_fields(args)))


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """--slo, --replicas, --router, --replica-profiles (simulate, sweep and capacity)."""
    from policies.routers import ROUTERS

    p.add_argument("--slo", action="append", default=None, metavar="[CLASS:]ttft=S,tpot=S,e2e=S",
                   help="SLO targets in seconds (repeatable; CLASS: per slo_class of the trace); adds slo_attainment "
                        "and goodput_requests_per_s to summary.json and slo_met to requests.parquet")
    p.add_argument("--replicas", type=int, default=1, help="replicas behind a router (default 1)")
    p.add_argument("--router", default="round-robin", choices=tuple(ROUTERS), help="how requests are sent to replicas")
    p.add_argument("--replica-profiles", default=None, metavar="P1,P2,...",
                   help="one calibration profile per replica (a heterogeneous cluster; sets --replicas)")


def cluster_fields(args) -> dict:
    from simulator.slo import format_slo, parse_slo

    slo = getattr(args, "slo", None)
    profiles = tuple(p.strip() for p in (getattr(args, "replica_profiles", None) or "").split(",") if p.strip())
    replicas = getattr(args, "replicas", 1)
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    if profiles and replicas not in (1, len(profiles)):
        raise ValueError(f"--replicas {replicas} but --replica-profiles lists {len(profiles)} profiles")
    return {"slo": format_slo(parse_slo(slo)) if slo else None, "replicas": len(profiles) or replicas,
            "router": getattr(args, "router", "round-robin"), "replica_profiles": profiles}


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate one replica serving a trace under a policy",
                       description="Simulate one GPU replica serving a trace under a policy; writes summary.json, "
                                   "requests.parquet, steps.parquet and config.json to --out.")
    add_run_arguments(p)
    p.add_argument("--profile", default=None, help="calibration profile: bundled name or a profile .json path "
                   "(default: a100-llama-2-7b)")
    p.add_argument("--kv-blocks", type=int, default=None, help="override the KV-cache size in blocks")
    add_cluster_arguments(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    p.add_argument("--engine", choices=("auto", "fast", "python"), default="auto",
                   help="auto: the fused fast loop for continuous / sarathi / vllm-v0, the Python loop otherwise (same "
                        "output files); fast: refuse other policies; python: always the Python loop")
    p.set_defaults(func=run)

    q = sub.add_parser("policies", help="list the scheduling policies")
    q.set_defaults(func=list_policies)


def run(args) -> int:
    from simulator.metrics import format_summary

    spec = spec_from_args(args)
    check_out_dir(args.out)
    # a long run streams its per-step records to part files here (removed once steps.parquet is written)
    result = run_simulation(spec, progress=not args.quiet, engine=args.engine,
                            steps_dir=os.path.join(args.out, ".steps-parts"))
    out = result.write(args.out)
    print_warnings(result.summary)
    if not args.quiet:
        print(f"{spec.policy} on {spec.trace} ({workload_line(spec, result.summary)}):")
        print(format_summary(result.summary))
        print(f"results in {out}/ (summary.json, requests.parquet, steps.parquet, config.json)")
    return 0


def workload_line(spec: RunSpec, summary: dict) -> str:
    """'2000 requests, window 1, offered 4 req/s' for the run's heading."""
    parts = [f"{summary['num_requests']} requests"]
    if spec.num_requests is not None:
        parts.append(f"window {spec.seed}" + (" of the tiled trace" if spec.tile else ""))
    rate = summary.get("offered_rate_requests_per_s")
    if rate is not None:
        parts.append(f"offered {rate:.4g} req/s")
    return ", ".join(parts)


def print_warnings(summary: dict) -> None:
    for w in summary.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)


def list_policies(args) -> int:
    from policies.predictors import PREDICTORS
    from policies.registry import POLICIES
    from syncintellects.spec import policy_parameters, predictor_parameters

    width = max(map(len, POLICIES)) + 2

    def entry(name, cls, flag: str, params: dict) -> None:
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        print(f"{name:<{width}}{doc.splitlines()[0] if doc else ''}")
        if params:
            print(f"{'':<{width}}{flag} " + ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()))

    for name, cls in sorted(POLICIES.items()):
        entry(name, cls, "--param", policy_parameters(name))
        if getattr(cls, "default_predictor", None):
            print(f"{'':<{width}}--predictor default: {cls.default_predictor}")
    print("\nlength predictors (--predictor NAME, --predictor-param NAME=VALUE):")
    for name, cls in PREDICTORS.items():
        entry(name, cls, "--predictor-param", predictor_parameters(name))
    from policies.predictors.learned import BUNDLED_MODELS

    print(f"\nbundled predictor models (--predictor-model NAME): {', '.join(BUNDLED_MODELS)}")
    return 0
