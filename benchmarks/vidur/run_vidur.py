"""One Vidur run on a trace file, timed; prints one JSON line (run by hand, in Vidur's own venv).

    cd VIDUR_SRC && VIDUR_VENV/bin/python /path/to/benchmarks/vidur/run_vidur.py --trace T.csv --cache DIR [--train-only]

Runs microsoft/vidur (commit 7d47513) as its ``vidur.main`` does, configured from its command
line: one A100 replica, Llama-2-7B, TP 1, its ``vllm`` replica scheduler with its defaults
(batch cap 128, 4,096 tokens a batch, 16-token blocks, KV blocks from its memory model), trace
replay of --trace (max 4,096 tokens a request), its default random-forest execution-time
predictor with one point of its hyper-parameter grid (250 trees, depth 32, split 2; models and
prediction tables cached in --cache: the first run trains them, later runs load them), and every metric and trace output off (``--no-metrics_config_write_metrics``,
no chrome trace, no plots, no request/batch/utilization series). Vidur's ``atexit`` writer is
unregistered, so nothing is written at exit.

Timed with ``time.process_time`` (user + system CPU) and ``perf_counter`` (wall), separately:
``setup`` (reading the trace, building the cluster, loading or training the predictor) and
``loop`` (``Simulator.run()``, Vidur's event loop). Then, outside the timing, TTFT, TPOT and E2E
of every request are read from Vidur's request objects (first token at prefill completion, as
Vidur's ``prefill_completed_at``; TPOT over the tokens after the first, as our metrics do).
This file imports Vidur; it is not part of our package or tests.
"""
from __future__ import annotations

import argparse
import atexit
import json
import resource
import sys
import time


def vidur_args(trace: str, cache: str, out_dir: str) -> list[str]:
    return [
        "vidur.main",
        "--replica_config_device", "a100",
        "--replica_config_model_name", "meta-llama/Llama-2-7b-hf",
        "--replica_config_tensor_parallel_size", "1",
        "--replica_config_num_pipeline_stages", "1",
        "--cluster_config_num_replicas", "1",
        "--replica_scheduler_config_type", "vllm",
        "--request_generator_config_type", "trace_replay",
        "--trace_request_generator_config_trace_file", trace,
        "--trace_request_generator_config_max_tokens", "4096",
        "--execution_time_predictor_config_type", "random_forrest",
        "--random_forrest_execution_time_predictor_config_num_training_job_threads", "1",
        # one point of Vidur's default grid (250/500/750 trees x depth 8/16/32 x split 2/5/10, 10-fold CV):
        # the whole grid takes hours of CPU on this shared 2-core machine; the loop's speed does not
        # depend on it (Vidur looks every prediction up in a table made before the run)
        "--random_forrest_execution_time_predictor_config_num_estimators", "250",
        "--random_forrest_execution_time_predictor_config_max_depth", "32",
        "--random_forrest_execution_time_predictor_config_min_samples_split", "2",
        "--metrics_config_output_dir", out_dir,
        "--metrics_config_cache_dir", cache,
        "--no-metrics_config_write_metrics",
        "--no-metrics_config_enable_chrome_trace",
        "--no-metrics_config_store_plots",
        "--no-metrics_config_store_request_metrics",
        "--no-metrics_config_store_batch_metrics",
        "--no-metrics_config_store_utilization_metrics",
        "--log_level", "warning",
    ]


def stats(x: list[float]) -> dict:
    import numpy as np

    a = np.asarray(x, dtype=float)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out-dir", default="/tmp/vidur-run/output")
    ap.add_argument("--train-only", action="store_true", help="build the predictor cache and stop")
    args = ap.parse_args()
    c0, w0 = time.process_time(), time.perf_counter()
    sys.argv = vidur_args(args.trace, args.cache, args.out_dir)
    from vidur.config import SimulationConfig
    from vidur.simulator import Simulator
    from vidur.utils.random import set_seeds

    config = SimulationConfig.create_from_cli_args()
    set_seeds(config.seed)
    c1, w1 = time.process_time(), time.perf_counter()
    sim = Simulator(config)
    atexit.unregister(sim._write_output)
    c2, w2 = time.process_time(), time.perf_counter()
    if args.train_only:
        print(json.dumps({"setup_cpu_s": c2 - c1, "setup_wall_s": w2 - w1}))
        return
    requests = [ev._request for _, ev in sim._event_queue]  # kept only to read their times afterwards
    c3, w3 = time.process_time(), time.perf_counter()
    sim.run()
    c4, w4 = time.process_time(), time.perf_counter()
    done = [r for r in requests if r.completed]
    ttft = [r.prefill_completed_at - r.arrived_at for r in done]
    e2e = [r.completed_at - r.arrived_at for r in done]
    tpot = [(r.completed_at - r.prefill_completed_at) / (r.num_decode_tokens - 1) for r in done if r.num_decode_tokens > 1]
    print(json.dumps({
        "engine": "vidur", "requests": len(requests), "finished": len(done),
        "restarts": sum(r.num_restarts for r in requests),
        "import_cpu_s": c1 - c0, "setup_cpu_s": c2 - c1, "setup_wall_s": w2 - w1,
        "loop_cpu_s": c4 - c3, "loop_wall_s": w4 - w3,
        "process_cpu_s": c4, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "end_s": max(r.completed_at for r in done),
        "e2e_s": stats(e2e), "ttft_s": stats(ttft), "tpot_s": stats(tpot),
    }))


if __name__ == "__main__":
    main()
