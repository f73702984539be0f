"""Simulator speed: wall and CPU time, simulated requests per second and peak memory.

    python benchmarks/bench_simulator.py [--sizes 10000 100000 1000000] [--replicas 1 16] [--rate 4]
                                         [--engine auto|fast|python] [--markdown]

Workload: the Azure LLM inference conversation trace (19,366 requests), tiled end to end
as often as needed, rescaled to --rate requests/s *per replica* (4 req/s keeps one A100 /
Llama-2-7B near saturation under continuous batching: GPU busy > 99%; 16 replicas get
64 req/s). Each (size, replicas) runs in its own process pinned to one core (taskset when
available), so peak RSS is that run's own; CPU time is the process's user + system time
(other processes were using the machine's cores, so wall time can be larger).

With ``--replicas N > 1`` the run is a cluster of N replicas behind a round-robin router
(``simulator.cluster``) when that module exists; otherwise (``--independent``) the N
replicas are simulated one after another in the same process, replica k serving requests
k, k+N, k+2N, ... of the trace (what round-robin routing sends it), and the figures are
their sums (wall, CPU) and the process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tiled_trace(n: int, rate: float):
    """The trace tiled to n requests and rescaled, exactly as ``simulate --num-requests n --tile --rate``."""
    from traces import load_trace, select_requests

    return select_requests(load_trace("azure-conv"), num_requests=n, seed=0, rate=rate, tile=True)


def one(n: int, rate: float, policy: str, replicas: int = 1, independent: bool = False, engine: str = "auto") -> dict:
    from policies.registry import make_policy
    from simulator.engine import SimConfig, simulate, use_fast

    trace = tiled_trace(n, rate * replicas)
    cfg = SimConfig(engine=engine)
    t0, c0 = time.perf_counter(), time.process_time()
    if replicas == 1:
        results = [simulate(trace, make_policy(policy), cfg)]
        mode = "single"
    elif not independent and _has_cluster():
        from policies.routers import make_router
        from simulator.cluster import simulate_cluster

        results = [simulate_cluster(trace, [make_policy(policy) for _ in range(replicas)],
                                    make_router("round-robin", replicas), cfg)]
        mode = "cluster (round-robin)"
    else:
        results = []
        for k in range(replicas):  # one replica at a time: only its result is kept, as a summary
            res = simulate(trace.take(np.arange(k, n, replicas)), make_policy(policy), cfg)
            results.append(_Slim(res))
        mode = "independent replicas"
    mode += ", fast engine" if use_fast(make_policy(policy), cfg) else ", Python engine"
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = sum(r.summary["num_steps"] for r in results)
    segments = sum(r.num_segments for r in results)
    busy = [r.summary["gpu_busy_fraction"] for r in results]
    rows = sum(r.summary["mean_batch_size"] * r.summary["num_steps"] for r in results)
    return {"requests": n, "replicas": replicas, "mode": mode, "policy": policy, "rate_per_replica": rate,
            "wall_s": wall, "cpu_s": cpu, "requests_per_cpu_s": n / cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "segments": segments, "steps": steps, "gpu_busy": sum(busy) / len(busy), "mean_batch": rows / steps,
            "finished": sum(r.summary["num_finished"] for r in results)}


class _Slim:
    """What the benchmark keeps of an independent replica's run (its tables are dropped)."""

    def __init__(self, res):
        self.summary = res.summary
        self.num_segments = res.num_segments


def _has_cluster() -> bool:
    try:
        import simulator.cluster  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1])
    ap.add_argument("--rate", type=float, default=4.0, help="requests/s per replica")
    ap.add_argument("--policy", default="continuous")
    ap.add_argument("--independent", action="store_true", help="N replicas as N separate runs, even if the cluster exists")
    ap.add_argument("--engine", choices=("auto", "fast", "python"), default="auto",
                    help="simulate --engine: the fast loop where it applies (auto), or the Python loop")
    ap.add_argument("--markdown", action="store_true", help="also print the rows for docs/benchmarks.md's table")
    ap.add_argument("--child", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child[0], args.rate, args.policy, args.child[1], args.independent, args.engine)))
        return
    env = dict(os.environ, POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    rows = []
    for reps in args.replicas:
        for n in args.sizes:
            cmd = pin + [sys.executable, __file__, "--child", str(n), str(reps), "--rate", str(args.rate),
                         "--policy", args.policy, "--engine", args.engine] + (["--independent"] if args.independent else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{n:>9,} requests on {reps:>2} replica(s) [{row['mode']}]: {row['wall_s']:.2f} s wall, "
                  f"{row['cpu_s']:.2f} s CPU, {row['requests_per_cpu_s']:,.0f} req/CPU-s, peak RSS "
                  f"{row['peak_rss_mb']:.0f} MB, {row['steps']:,} steps in {row['segments']:,} segments, "
                  f"GPU busy {row['gpu_busy']:.1%}, mean batch {row['mean_batch']:.1f}", flush=True)
    if args.markdown:
        print(markdown_rows(rows))


def markdown_rows(rows) -> str:
    """The rows of the table in docs/benchmarks.md."""
    return "\n".join(
        f"| {r['requests']:,} | {r['replicas']} | {r['mode']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
        f"{r['requests_per_cpu_s']:,.0f} | {r['peak_rss_mb']:.0f} | {r['steps']:,} | {r['segments']:,} | "
        f"{r['gpu_busy']:.1%} | {r['mean_batch']:.1f} |" for r in rows)


if __name__ == "__main__":
    main()
