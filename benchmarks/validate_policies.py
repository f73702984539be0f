"""Validate the simulator against the real runner for every policy, several runs each (default: CPU, tiny-llama).

Runs ``syncintellects validate`` in this process (the model loads once) for each policy and
repeat, writes every run's directory under ``--out`` and prints the markdown table of
docs/validation.md (real, simulated and error per metric; one line per policy and metric).

    python benchmarks/validate_policies.py --profile docs/validation/tiny-llama-cpu.json --out /tmp/val
    python benchmarks/validate_policies.py --profile P.json --out /tmp/val --policies static sjf --runs 1
    python benchmarks/validate_policies.py --profile P.json --out V --model llama-2-7b --device cuda --length-scale 1

Each run's command line is printed before it runs. Runs are interleaved across policies
(policy 1 run 1, policy 2 run 1, ..., policy 1 run 2, ...) so that a change of machine load
falls on every policy alike. Resumable: a run whose directory holds a verdict made by the same
command line (``command.json``) is read back, not run again, so rerunning an interrupted
command only runs what is missing (``--fresh`` runs everything again).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

# The workload of docs/validation.md: the first N requests of azure-conv with lengths x 1/4, all
# arriving at once by default (--rate 1e6: a burst, so that both engines make the same decisions;
# see "Conditioning" in docs/validation.md). Length-aware policies that need a predictor get the
# noisy oracle; the SyncIntellects policies keep their default (progressive) and use length control.
POLICIES = {
    "static": [],
    "continuous": [],
    "vllm-v0": [],
    "sarathi": [],
    "length-grouped": ["--predictor", "noisy"],
    "sjf": ["--predictor", "noisy"],
    "srpt": ["--predictor", "noisy"],
    "syncintellects": ["--length-control", "on"],
    "syncintellects-continuous": ["--length-control", "on"],
}
COMMON = ["--trace", "azure-conv", "--seed", "0", "--quiet"]
ROWS = (("e2e_latency_s.mean", "E2E mean (s)", 1), ("e2e_latency_s.p99", "E2E p99 (s)", 1),
        ("ttft_s.mean", "TTFT mean (s)", 1), ("tpot_s.mean", "TPOT mean (ms)", 1e3),
        ("throughput_output_tokens_per_s", "throughput (tok/s)", 1))


def main(argv=None) -> int:
    from policies.registry import POLICIES as KNOWN
    from syncintellects.cli import main as cli

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-requests", type=int, default=150)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", default="1000000", help="requests/s (default: a burst)")
    ap.add_argument("--extra", nargs="*", action="extend", default=[],
                    help="more validate flags, e.g. --extra=--probe-every=0 (repeatable)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--real-runs", type=int, default=1,
                    help="each verdict's real side: N runs combined, every step's median time (validate --real-runs)")
    ap.add_argument("--policies", nargs="*", default=None, help="default: every policy the registry has")
    ap.add_argument("--fresh", action="store_true", help="run every verdict again, even those already in --out")
    ap.add_argument("--model", default="tiny-llama", help="the runner's model (default tiny-llama)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    ap.add_argument("--dtype", default=None, help="default: the runner's (fp32 on CPU, fp16 on a GPU)")
    ap.add_argument("--length-scale", default="0.25", help="prompt and output lengths x this (default 0.25: "
                    "tiny-llama's 2,048-token context; 1 for a 4,096-token model)")
    args = ap.parse_args(argv)
    common = [*COMMON, "--model", args.model, "--device", args.device, "--length-scale", args.length_scale,
              *(["--dtype", args.dtype] if args.dtype else [])]
    names = args.policies or [p for p in POLICIES if p in KNOWN]
    unknown = [p for p in names if p not in KNOWN or p not in POLICIES]
    if unknown:
        print(f"error: no validation settings or no such policy: {', '.join(unknown)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    docs: dict[str, list[dict]] = {p: [] for p in names}
    for run in range(1, args.runs + 1):
        for p in names:
            d = out / f"{p}-{run}"
            argv_p = ["validate", "--profile", args.profile, "--policy", p, "--num-requests", str(args.num_requests),
                      "--tolerance", str(args.tolerance), *POLICIES[p], "--rate", args.rate, "--real-runs", str(args.real_runs), *args.extra, *common, "--out", str(d)]
            print("syncintellects " + " ".join(argv_p), flush=True)
            done = d / "command.json"
            record = json.loads(done.read_text()) if done.exists() and not args.fresh else {}
            if record.get("argv") == argv_p and (d / "validation.json").exists():
                doc = json.loads((d / "validation.json").read_text())
                doc.update(record["run"])
                print("  done already (its verdict is read back; --fresh to run it again)", flush=True)
            else:
                done.unlink(missing_ok=True)
                (d / "validation.json").unlink(missing_ok=True)  # never a verdict of another command or a torn run
                c0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                status = cli(argv_p)
                c1 = resource.getrusage(resource.RUSAGE_SELF)
                if not (d / "validation.json").exists():  # refused (exit 2, its one line printed above): go on
                    print(f"  exit {status}: no verdict", flush=True)
                    continue
                doc = json.loads((d / "validation.json").read_text())
                took = {"_status": status, "_wall_s": time.perf_counter() - w0,
                        "_cpu_s": (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)}
                doc.update(took)
                done.write_text(json.dumps({"argv": argv_p, "run": took}) + "\n")  # last: the verdict is whole
            docs[p].append(doc)
            m = doc["metrics"]
            f = (doc.get("machine_probe") or {}).get("factor") or 1.0
            load = doc["machine_load_average_1m"]
            print(f"  exit {doc['_status']}, conclusive {doc['conclusive']}, wall {doc['_wall_s']:.0f} s, cpu {doc['_cpu_s']:.0f} s, "
                  f"load {load['before_real_run']}-{load['after_real_run']}, {grid(doc)}, machine factor {f:.3f}, replay drift / factor "
                  f"{doc['replay']['drift'] / f:.3f} ("
                  + ", ".join(f"{k} {v['drift'] / f:.3f}" for k, v in doc["replay"]["by_kind"].items()) + "); "
                  + ", ".join(f"{k} {v['rel_error']:+.1%}" for k, v in m.items() if v["rel_error"] is not None),
                  flush=True)
    print(table(docs))
    print()
    print(verdicts(docs, args.tolerance))
    print(count_line(docs, args.runs * len(names)))
    if args.real_runs > 1:
        print()
        print(spread_table(docs))
    (out / "summary.json").write_text(json.dumps({p: [{k: d[k] for k in ("metrics", "metrics_uncorrected", "failed", "conditioning",
                                                                          "machine_probe", "replay", "_status",
                                                                          "real_runs", "metrics_per_real_run", "one_run_out", "interleaved",
                                                                          "_wall_s", "_cpu_s") if k in d}
                                                      for d in ds] for p, ds in docs.items()}, indent=1) + "\n")
    return 0


def verdicts(docs: dict[str, list[dict]], tolerance: float) -> str:
    """Per policy: which runs passed (every gated metric within the tolerance), the largest |error| of each
    run, and the verdict on the median over runs of each metric's error."""
    import statistics

    lines = ["| policy | runs passing | largest error per run | median error over runs: largest | verdict on the median "
             "| each run, one real run left out | grid now / stored |", "|---|---|---|---|---|---|---|"]
    for p, ds in docs.items():
        if not ds:
            lines.append(f"| {p} | no verdict (refused) | - | - | - | - | - |")
            continue
        worst = [max((d["metrics"][k]["rel_error"] for k, _, _ in ROWS), key=abs) for d in ds]
        med = {k: statistics.median(d["metrics"][k]["rel_error"] for d in ds) for k, _, _ in ROWS}
        mk = max(med, key=lambda k: abs(med[k]))
        passing = sum(abs(w) <= tolerance for w in worst)
        lines.append(f"| {p} | {passing}/{len(ds)} | {' / '.join(f'{w:+.1%}' for w in worst)} | "
                     f"{med[mk]:+.1%} ({mk}) | {'pass' if abs(med[mk]) <= tolerance else 'FAIL'} | "
                     f"{' / '.join(decided(d) for d in ds)} | {' / '.join(grid(d, bare=True) for d in ds)} |")
    return "\n".join(lines)


def grid(doc: dict, bare: bool = False) -> str:
    """How the machine moved since profiling: the interleaved grid's time over the stored profile's (median
    over points); '-' for a verdict without an interleaved grid."""
    r = (doc.get("interleaved") or {}).get("median_ms_vs_stored")
    if r is None:
        return "-" if bare else "no interleaved grid"
    return f"{r:.2f}" if bare else f"grid x{r:.2f} its stored time"


def count_line(docs: dict[str, list[dict]], expected: int) -> str:
    """The round in one line: verdicts passed, refused runs, and what the leave-one-out check decided."""
    ds = [d for v in docs.values() for d in v]
    passed = sum(not d["failed"] for d in ds)
    line = f"{passed} of {len(ds)} verdicts passed" + (f" ({expected - len(ds)} refused: no verdict)"
                                                        if expected > len(ds) else "")
    loo = [d for d in ds if d.get("one_run_out")]
    if loo:
        firm = [d for d in loo if decided(d) in ("pass", "FAIL")]
        line += (f"; one real run left out decided {len(firm)} of {len(loo)} ({sum(not d['failed'] for d in firm)} "
                 f"pass, {sum(bool(d['failed']) for d in firm)} fail), {len(loo) - len(firm)} undecided")
    return line


def decided(doc: dict) -> str:
    """A verdict as its leave-one-out check has it: pass, FAIL, or undecided (naming what one run flips)."""
    from gpu_runner.validate import short_name

    loo = doc.get("one_run_out")
    if not loo:
        return "-"
    # the whole verdict's decision; a verdict written before it was recorded: a failure no one run flips on
    # its own metric is decided, else any undecided metric leaves the verdict undecided
    v = loo.get("verdict") or ("fail" if any(m["decided"] == "fail" for m in loo["by_metric"].values())
                               else "undecided" if loo["undecided"] else "pass")
    if v == "undecided":
        return "undecided (" + ", ".join(map(short_name, loo["undecided"])) + ")"
    return "FAIL" if v == "fail" else "pass"


def spread_table(docs: dict[str, list[dict]]) -> str:
    """Per policy and gated metric: the error of the combined real side, of each real run alone (against the
    same simulation), and the real runs' own spread (max - min) / median."""
    lines = ["| policy | metric | error, combined | error, each real run alone | real runs' spread |", "|---|---|---|---|---|"]
    for p, ds in docs.items():
        for d in ds:
            per = d.get("metrics_per_real_run") or []
            for key, label, _ in ROWS:
                each = " / ".join(f"{r[key]['rel_error']:+.1%}" for r in per if r[key]["rel_error"] is not None)
                sp = (d.get("real_runs") or {}).get(key, {}).get("spread")
                lines.append(f"| {p} | {label} | {d['metrics'][key]['rel_error']:+.1%} | {each} | "
                             f"{'-' if sp is None else f'{sp:.1%}'} |")
    return "\n".join(lines)


def table(docs: dict[str, list[dict]]) -> str:
    def num(v, scale):
        return "-" if v is None else f"{v * scale:.4g}"

    def err(v):
        return "-" if v is None else f"{v:+.1%}"

    lines = ["| policy | metric | real (runs) | simulated (runs) | error (runs) |", "|---|---|---|---|---|"]
    for p, ds in docs.items():
        for key, label, scale in ROWS:
            cells = [d["metrics"][key] for d in ds]
            lines.append(f"| {p} | {label} | {' / '.join(num(c['real'], scale) for c in cells)} | "
                         f"{' / '.join(num(c['sim'], scale) for c in cells)} | "
                         f"{' / '.join(err(c['rel_error']) for c in cells)} |")
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())
