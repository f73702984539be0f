"""One run of our simulator on a trace file, timed; prints one JSON line (run by hand).

    python benchmarks/vidur/run_ours.py --trace T.csv [--policy vllm-v0|continuous] [--bench-row]

The counterpart of ``run_vidur.py``: the same trace file (Vidur's format, read with
``load_trace(path, format="vidur")``), the default A100 / Llama-2-7B profile, one replica.
``--bench-row`` runs instead ``bench_simulator.py``'s own 10,000-request workload (the tiled
Azure trace at 4 req/s, before Vidur's prompt shortening: 235 prompts are turned away for
context and some outputs capped, as ``simulate`` does).

Timed with ``time.process_time`` (user + system CPU) and ``perf_counter`` (wall): ``setup``
(reading the trace, building the policy) and ``loop`` (``simulate()``: the engine run and its
per-request / per-step tables and summary). TTFT, TPOT (over the tokens after the first) and
E2E of the finished requests are read from ``requests`` outside the timing.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def stats(a) -> dict:
    import numpy as np

    a = np.asarray(a, dtype=float)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=None)
    ap.add_argument("--policy", default="vllm-v0")
    ap.add_argument("--bench-row", action="store_true")
    ap.add_argument("--engine", default="auto", choices=("auto", "fast", "python"),
                    help="simulate --engine (where main has the fast engine)")
    args = ap.parse_args()
    c0, w0 = time.process_time(), time.perf_counter()
    import polars as pl

    from policies.registry import make_policy
    from simulator.engine import simulate
    from traces import load_trace, select_requests

    c1, w1 = time.process_time(), time.perf_counter()
    if args.bench_row:
        trace = select_requests(load_trace("azure-conv"), num_requests=10_000, seed=0, rate=4.0, tile=True)
    else:
        trace = load_trace(args.trace, format="vidur")
    policy = make_policy(args.policy)
    try:
        from simulator.engine import SimConfig, use_fast

        config, fast = SimConfig(engine=args.engine), use_fast(policy, SimConfig(engine=args.engine))
    except ImportError:  # before the fast engine
        if args.engine != "auto":
            raise SystemExit("--engine: this checkout has one engine")
        config, fast = None, False
    c2, w2 = time.process_time(), time.perf_counter()
    res = simulate(trace, policy) if config is None else simulate(trace, policy, config)
    c3, w3 = time.process_time(), time.perf_counter()
    done = res.requests.filter(~pl.col("rejected") & pl.col("finish_s").is_not_null())
    tpot = done["tpot_s"].drop_nulls().to_numpy()
    print(json.dumps({
        "engine": "ours", "policy": args.policy, "fast_engine": fast, "requests": len(trace), "finished": done.height,
        "rejected": int(res.requests["rejected"].sum()), "preemptions": int(res.requests["preemptions"].sum()),
        "import_cpu_s": c1 - c0, "setup_cpu_s": c2 - c1, "setup_wall_s": w2 - w1,
        "loop_cpu_s": c3 - c2, "loop_wall_s": w3 - w2,
        "process_cpu_s": c3, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": res.summary["num_steps"], "segments": res.num_segments,
        "end_s": float(done["finish_s"].max()),
        "e2e_s": stats(done["e2e_latency_s"].to_numpy()), "ttft_s": stats(done["ttft_s"].to_numpy()),
        "tpot_s": stats(tpot),
    }))


if __name__ == "__main__":
    main()
