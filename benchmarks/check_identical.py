"""Same seed, same bytes across an engine change: hash the outputs of a set of runs.

    python benchmarks/check_identical.py --save before.json      # on the old code
    python benchmarks/check_identical.py --check before.json     # on the new code: exit 1 on any difference
    python benchmarks/check_identical.py --engines               # fast engine vs Python engine, same code

Each case is one `RunSpec` (several policies, predictors, length control, a small KV cache
that forces preemptions) on a few thousand Azure conversation requests; the sha256 of its
``requests.parquet`` and ``steps.parquet`` is recorded. Speed work on the engine must leave
every hash unchanged.

``--engines`` runs every case the fast engine takes (``simulator/fast_engine.py``), plus sarathi and
clusters of replicas under each router, once with ``--engine python`` and once with ``--engine
fast``, and compares the files directly (``summary.json`` too, without its wall time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N = 3000
CASES = {
    "static": dict(policy="static", rate=1.0),
    "continuous": dict(policy="continuous", rate=4.0),
    "continuous-small-kv": dict(policy="continuous", rate=4.0, kv_blocks=1200),
    "length-grouped-oracle": dict(policy="length-grouped", predictor="oracle", rate=2.0),
    "syncintellects-control": dict(policy="syncintellects", length_control=True, rate=2.0),
    "srpt-progressive": dict(policy="srpt", predictor="progressive", rate=4.0),
    "srpt-small-kv": dict(policy="srpt", predictor="noisy", rate=4.0, kv_blocks=1200),
    "sjf-noisy": dict(policy="sjf", predictor="noisy", rate=4.0),
    "syncintellects-continuous": dict(policy="syncintellects-continuous", length_control=True, rate=4.0),
}


ENGINE_CASES = {
    "sarathi-small-kv": dict(policy="sarathi", rate=4.0, kv_blocks=600),
    "vllm-v0-small-kv": dict(policy="vllm-v0", rate=4.0, kv_blocks=600),
    "cluster-round-robin": dict(policy="continuous", rate=16.0, replicas=4, router="round-robin"),
    "cluster-least-loaded-small-kv": dict(policy="continuous", rate=12.0, replicas=3, router="least-loaded",
                                          kv_blocks=500),
    "cluster-jsq": dict(policy="sarathi", rate=16.0, replicas=4, router="jsq"),
    "cluster-length-aware": dict(policy="continuous", rate=8.0, replicas=2, router="length-aware"),
}
FILES = ("requests.parquet", "steps.parquet", "config.json")


def digests(n: int = N, cases: dict = CASES, engine: str = "auto", summary: bool = False) -> dict[str, dict[str, str]]:
    from syncintellects.spec import RunSpec, run_simulation

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in cases.items():
            res = run_simulation(RunSpec(num_requests=n, seed=1, **kw), engine=engine)
            res.summary.pop("sim_wall_s", None)
            d = res.write(Path(tmp) / name)
            out[name] = {f: hashlib.sha256((d / f).read_bytes()).hexdigest()
                         for f in FILES + (("summary.json",) if summary else ())}
            print(f"{name:<28} {out[name]['requests.parquet'][:12]} {out[name]['steps.parquet'][:12]} "
                  f"({res.num_segments} segments)", flush=True)
    return out


def engines(n: int) -> int:
    """Fast engine against Python engine on every case the fast engine takes; exit status 1 on a difference."""
    from policies.registry import POLICIES
    from simulator.fast_engine import FAST_POLICIES

    cases = {c: kw for c, kw in CASES.items() if POLICIES[kw["policy"]] in FAST_POLICIES} | ENGINE_CASES
    print("python engine:")
    want = digests(n, cases, "python", summary=True)
    print("fast engine:")
    got = digests(n, cases, "fast", summary=True)
    bad = [(c, f) for c in want for f in want[c] if got[c][f] != want[c][f]]
    for c, f in bad:
        print(f"DIFFERENT: {c} {f}")
    print(f"identical ({len(cases)} cases)" if not bad else f"{len(bad)} files differ")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", help="write the hashes to this JSON file")
    g.add_argument("--check", help="compare with the hashes in this JSON file")
    g.add_argument("--engines", action="store_true", help="compare the fast engine with the Python engine")
    ap.add_argument("--num-requests", type=int, default=N)
    args = ap.parse_args()
    if args.engines:
        return engines(args.num_requests)
    got = digests(args.num_requests)
    if args.save:
        Path(args.save).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return 0
    want = json.loads(Path(args.check).read_text())
    bad = [(c, f) for c in want for f in want[c] if got.get(c, {}).get(f) != want[c][f]]
    for c, f in bad:
        print(f"DIFFERENT: {c} {f}")
    print("identical" if not bad else f"{len(bad)} files differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
