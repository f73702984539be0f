"""How many replicas (A100, Llama-2-7B) does a load need under an SLO, per router?

    python benchmarks/cluster_study.py --rate 20 --slo ttft=2,tpot=0.1 --target 0.9 --policy continuous

For each router, simulates 1, 2, ... replicas at the given rate (each seed a run) until the
SLO attainment (mean over seeds) reaches the target; prints one table row per run and the
smallest count per router. Figures in docs/capacity.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.routers import ROUTERS  # noqa: E402
from syncintellects.spec import RunSpec, run_simulation  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--policy", default="continuous")
    ap.add_argument("--predictor", default=None)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--num-requests", type=int, default=4000)
    ap.add_argument("--slo", default="ttft=2,tpot=0.1")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--routers", default=",".join(ROUTERS))
    ap.add_argument("--max-replicas", type=int, default=16)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    print("| router | replicas | SLO attainment (mean, min..max over seeds) | goodput req/s | p99 TTFT s | offered req/s |")
    print("|---|---|---|---|---|---|")
    answer = {}
    for router in a.routers.split(","):
        for n in range(1, a.max_replicas + 1):
            att, good, ttft, offered = [], [], [], []
            for seed in seeds:
                spec = RunSpec(trace=a.trace, policy=a.policy, predictor=a.predictor, rate=a.rate,
                               num_requests=a.num_requests, seed=seed, slo=a.slo, replicas=n, router=router)
                t0 = time.process_time()
                res = run_simulation(spec)
                s, arr = res.summary, res.requests["arrival_s"]
                att.append(s["slo_attainment"])
                good.append(s["goodput_requests_per_s"])
                ttft.append(s["ttft_s"]["p99"])
                offered.append((len(arr) - 1) / (arr.max() - arr.min()))
            mean = sum(att) / len(att)
            print(f"| {router} | {n} | {mean:.3f} ({min(att):.3f}..{max(att):.3f}) | {sum(good) / len(good):.2f} | "
                  f"{max(ttft):.2f} | {sum(offered) / len(offered):.2f} |", flush=True)
            if mean >= a.target:
                answer[router] = n
                break
    print()
    for router, n in answer.items():
        print(f"{router}: {n} replicas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
