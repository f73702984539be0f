"""How well-conditioned a validation workload is, from the simulator alone (no real run, seconds).

For each policy and arrival rate: the elasticity of every gated metric to a 2% change of every
step time (gpu_runner.validate.conditioning); 1 (latencies) or -1 (throughput) means the
schedule does not depend on step times, far from it means a 1% timing difference reorders the
schedule. Prints one markdown row per policy and rate.

    python benchmarks/conditioning.py --profile docs/validation/tiny-llama-cpu.json --rates 2 60 130 1000000
"""
from __future__ import annotations

import argparse
import sys


POLICIES = {  # the settings of benchmarks/validate_policies.py
    "static": {}, "continuous": {}, "vllm-v0": {}, "sarathi": {},
    "length-grouped": {"predictor": "noisy"}, "sjf": {"predictor": "noisy"}, "srpt": {"predictor": "noisy"},
    "syncintellects": {"length_control": True}, "syncintellects-continuous": {"length_control": True},
}


def main(argv=None) -> int:
    from gpu_runner.validate import GATED, conditioning, scaled_profile
    from policies.registry import POLICIES as KNOWN
    from simulator.engine import SimConfig, simulate
    from simulator.profile import load_profile
    from syncintellects.spec import RunSpec, build_policy, length_response_model, load_spec_trace

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--rates", type=float, nargs="+", default=[2.0, 60.0, 130.0, 1e6])
    ap.add_argument("--num-requests", type=int, default=150)
    args = ap.parse_args(argv)
    prof = load_profile(args.profile)
    cfg = SimConfig(profile=args.profile, kv_blocks=prof.kv_blocks(16), max_context=2048, seed=0)
    print("| policy | rate (req/s) | " + " | ".join(GATED) + " |")
    print("|---|---|" + "---|" * len(GATED))
    for name, kw in POLICIES.items():
        if name not in KNOWN:
            continue
        for rate in args.rates:
            spec = RunSpec(trace="azure-conv", policy=name, rate=rate, num_requests=args.num_requests, seed=0,
                           length_scale=0.25, **kw)
            trace = load_spec_trace(spec)

            def at(f):
                return simulate(trace, build_policy(spec, trace), cfg, profile=scaled_profile(prof, f),
                                length_response=length_response_model(spec)).summary

            c = conditioning(at, at(1.0), 1.0)
            cells = [("-" if c["elasticity"][k] is None else f"{c['elasticity'][k]:+.2f}")
                     + (" (ill)" if k in c["ill_conditioned"] else "") for k in GATED]
            print(f"| {name} | {rate:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
