"""Vidur and our simulator on the same 10,000 requests, alternating, each run its own pinned process (by hand).

    python benchmarks/vidur/side_by_side.py --vidur-src /tmp/vidur-src --vidur-python /tmp/vidur-venv/bin/python \
        --trace /tmp/vidur-run/azure_conv_10k.csv --cache /tmp/vidur-run/cache --repeats 3 [--ours vllm-v0 continuous]

Each repeat runs, one after the other: Vidur (``run_vidur.py`` in Vidur's venv, from its source
folder), then ours once per ``--ours`` policy (``run_ours.py``); every run is a fresh process
under ``taskset -c 0`` with one thread for numpy/polars. Per run it records the process's own
CPU time (user + system, from ``os.wait4``), its wall time, its peak RSS, the loop's CPU time as
the script measured it, and the 1-minute load average (``/proc/loadavg``) just before it.
Vidur's predictor cache must be warm (run ``run_vidur.py --train-only`` once first), so its
runs load the trained models instead of training them. Prints a JSON line per run and, at the
end, the markdown tables of docs/benchmarks.md ("Side by side with Vidur").
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", POLARS_MAX_THREADS="1",
           WANDB_MODE="disabled", PYTHONHASHSEED="0")


def run_child(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run ``cmd`` pinned to core 0; its JSON line plus its own rusage (user + system CPU, peak RSS, from wait4)."""
    load = float(Path("/proc/loadavg").read_text().split()[0])
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: stdout to the pipe, stderr to a log; exec the command
        os.close(r)
        os.dup2(w, 1)
        os.chdir(cwd)
        fd = os.open("/tmp/vidur-run/side_by_side.stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        args = pin + cmd
        os.execvpe(args[0], args, env)
    os.close(w)
    chunks = []
    while data := os.read(r, 1 << 16):
        chunks.append(data)
    os.close(r)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see /tmp/vidur-run/side_by_side.stderr")
    row = json.loads(b"".join(chunks).decode().strip().splitlines()[-1])
    row.update(load_1min=load, wall_s=wall, cpu_s=ru.ru_utime + ru.ru_stime, rss_mb=ru.ru_maxrss / 1024)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vidur-src", required=True)
    ap.add_argument("--vidur-python", required=True)
    ap.add_argument("--trace", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ours", nargs="+", default=["vllm-v0", "continuous"],
                    help="policies, each optionally POLICY:ENGINE (auto, fast or python)")
    ap.add_argument("--python", default=sys.executable, help="our venv's python")
    ap.add_argument("--bench-row", action="store_true",
                    help="also run ours (continuous) on bench_simulator.py's own row (before Vidur's prompt shortening)")
    args = ap.parse_args()
    Path("/tmp/vidur-run").mkdir(exist_ok=True)
    vidur_env = dict(ENV, PYTHONPATH=str(Path(args.vidur_src).resolve()))
    rows = []
    for rep in range(args.repeats):
        row = run_child([args.vidur_python, str(HERE / "run_vidur.py"), "--trace", str(Path(args.trace).resolve()),
                         "--cache", str(Path(args.cache).resolve())], Path(args.vidur_src), vidur_env)
        row.update(rep=rep, who="Vidur (vllm)")
        rows.append(row)
        print(json.dumps(row), flush=True)
        for item in args.ours:
            policy, _, engine = item.partition(":")
            row = run_child([args.python, str(HERE / "run_ours.py"), "--trace", str(Path(args.trace).resolve()),
                             "--policy", policy, "--engine", engine or "auto"], ROOT, ENV)
            row.update(rep=rep, who=f"ours ({policy}{', ' + ('fast' if row['fast_engine'] else 'Python') + ' engine' if engine else ''})")
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.bench_row:
            row = run_child([args.python, str(HERE / "run_ours.py"), "--bench-row", "--policy", "continuous"], ROOT, ENV)
            row.update(rep=rep, who="ours (continuous, bench row)")
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    who = list(dict.fromkeys(r["who"] for r in rows))
    med = {w: {k: statistics.median(r[k] for r in rows if r["who"] == w)
               for k in ("cpu_s", "wall_s", "loop_cpu_s", "rss_mb", "load_1min")} for w in who}
    lines = ["| simulator | runs | process CPU (s) | process wall (s) | event loop CPU (s) | peak RSS (MB) | load (1 min) |",
             "| --- | ---: | --- | --- | --- | ---: | --- |"]
    for w in who:
        rs = [r for r in rows if r["who"] == w]

        def each(k, f="{:.2f}"):
            return " / ".join(f.format(r[k]) for r in rs)
        lines.append(f"| {w} | {len(rs)} | {each('cpu_s')} | {each('wall_s')} | {each('loop_cpu_s')} | "
                     f"{med[w]['rss_mb']:.0f} | {each('load_1min', '{:.1f}')} |")
    base = who[0]
    lines += ["", "| ours | Vidur / ours, process CPU (median) | Vidur / ours, event loop CPU (median) |", "| --- | ---: | ---: |"]
    for w in who[1:]:
        lines.append(f"| {w} | {med[base]['cpu_s'] / med[w]['cpu_s']:.1f}x | "
                     f"{med[base]['loop_cpu_s'] / med[w]['loop_cpu_s']:.1f}x |")
    lines += ["", "| simulator | finished | mean E2E (s) | p99 E2E (s) | mean TTFT (s) | p99 TTFT (s) | mean TPOT (ms) | p99 TPOT (ms) | last finish (s) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for w in who:
        r = next(r for r in rows if r["who"] == w)
        lines.append(f"| {w} | {r['finished']:,} | {r['e2e_s']['mean']:.2f} | {r['e2e_s']['p99']:.2f} | "
                     f"{r['ttft_s']['mean']:.3f} | {r['ttft_s']['p99']:.2f} | {1000 * r['tpot_s']['mean']:.1f} | "
                     f"{1000 * r['tpot_s']['p99']:.1f} | {r['end_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
