"""Simulator speed: wall time, simulated requests per wall-second and peak memory.

    python benchmarks/bench_simulator.py [--sizes 10000 100000] [--rate 4] [--write-docs]

Workload: the Azure LLM inference conversation trace (19,366 requests), tiled end to end
as often as needed, rescaled to --rate requests/s (4 req/s keeps one A100 / Llama-2-7B
near saturation under continuous batching: GPU busy > 99%). Each size runs in its own
process pinned to one core (taskset when available), so peak RSS is that run's own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiled_trace(n: int, rate: float):
    """The trace tiled to n requests and rescaled, exactly as ``simulate --num-requests n --tile --rate``."""
    from traces import load_trace, select_requests

    return select_requests(load_trace("azure-conv"), num_requests=n, seed=0, rate=rate, tile=True)


def one(n: int, rate: float, policy: str) -> dict:
    from policies.registry import make_policy
    from simulator.engine import simulate

    trace = tiled_trace(n, rate)
    t0 = time.perf_counter()
    res = simulate(trace, make_policy(policy))
    wall = time.perf_counter() - t0
    s = res.summary
    return {"requests": n, "policy": policy, "rate": rate, "wall_s": wall, "sim_wall_s": s["sim_wall_s"],
            "requests_per_wall_s": n / wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "segments": res.steps.height, "steps": s["num_steps"], "gpu_busy": s["gpu_busy_fraction"],
            "mean_batch": s["mean_batch_size"], "simulated_s": s["makespan_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--policy", default="continuous")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child, args.rate, args.policy)))
        return
    env = dict(os.environ, POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    rows = []
    for n in args.sizes:
        cmd = pin + [sys.executable, __file__, "--child", str(n), "--rate", str(args.rate), "--policy", args.policy]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n:>7} requests: {row['wall_s']:.2f} s wall, {row['requests_per_wall_s']:,.0f} req/wall-s, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['steps']:,} steps in {row['segments']:,} segments, "
              f"GPU busy {row['gpu_busy']:.1%}, mean batch {row['mean_batch']:.1f}")
    if args.write_docs:
        write_docs(rows, args)


def write_docs(rows, args) -> None:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = cpu
    lines = [
        "# Benchmarks", "",
        "## Simulator speed (`make bench`, i.e. `python benchmarks/bench_simulator.py --write-docs`)", "",
        f"Azure conversation trace tiled to size and rescaled (as `simulate --num-requests N --tile --rate R`) to {args.rate} req/s, `{args.policy}` policy, default "
        "A100 / Llama-2-7B profile; each size in its own process pinned to one core "
        f"({model}, Python {platform.python_version()}).", "",
        "| requests | wall time (s) | simulated requests / wall-s | peak RSS (MB) | engine steps | segments | GPU busy | mean batch |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['requests']:,} | {r['wall_s']:.2f} | {r['requests_per_wall_s']:,.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['steps']:,} | {r['segments']:,} | {r['gpu_busy']:.1%} | {r['mean_batch']:.1f} |")
    lines += ["", "Targets (issue 2): 10,000 requests in under 1.5 s, 100,000 in under 15 s, memory under 1 GB. "
              "For comparison, a well-known calibrated simulator took about 35 s for 10,000 such requests on this machine.",
              "", "Why it is fast: a decode-only plan repeats until a request finishes, a request arrives or the KV "
              "cache fills, and the simulator advances such a run of steps in closed form (attention time is an "
              "arithmetic series in the growing context), so the engine does work per *segment* (a few per request), "
              "not per token. `tests/test_engine.py::test_multi_step_segments_equal_one_step_at_a_time` checks that "
              "this gives the same per-request times as stepping one token at a time.", ""]
    path = ROOT / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
