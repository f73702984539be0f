"""``syncintellects reproduce paper``: the SyncIntellects paper's comparison, simulated."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce published results in the simulator",
                       description="Reproduce published results in the simulator.")
    rsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = rsub.add_parser("paper", help="the SyncIntellects paper's comparison (task batching vs SyncIntellects)",
                        description="Task batching FCFS vs the SyncIntellects policy and its parts, and the same "
                                    "against continuous batching and SRPT, over load levels and seeds, on windows of "
                                    "the Azure conversation trace. Writes reproduction.json/.csv/.md/.html to --out.")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--quick", action="store_true", help="a smoke run's preset: 2 rates, 2 seeds, 150 requests; --rates, --seeds, "
                   "--num-requests given with it replace its values")
    q.add_argument("--rates", type=float, nargs="+", default=None, help="arrival rates in req/s")
    q.add_argument("--seeds", type=int, default=None, help="number of seeds: seed k serves the trace's k-th window of --num-requests requests; "
                        "at most as many as the trace holds")
    q.add_argument("--num-requests", type=int, default=None, help="requests per run")
    q.add_argument("--trace", default=None, help="bundled trace name (default azure-conv)")
    q.add_argument("--workers", type=int, default=None, help="parallel processes (default 2)")
    q.add_argument("--profile", default=None, help="step-time profile for every arm (default a100-llama-2-7b; "
                   "a100-llama-2-7b-hf runs the comparison on an HF-class engine, as the paper did)")
    q.add_argument("--quiet", action="store_true", help="no progress bar or table")
    q.add_argument("--fresh", action="store_true",
                   help="delete the runs already in --out and start again (default: run only what is missing)")
    q.set_defaults(func=run)


def run(args) -> int:
    from syncintellects.reproduce import ReproductionConfig, markdown, run_reproduction, with_overrides, write_outputs
    from syncintellects.workers import Interrupted, interruptible

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = ReproductionConfig.quick() if args.quick else ReproductionConfig()
    cfg = with_overrides(cfg, rates=tuple(args.rates) if args.rates else None,
                         seeds=tuple(range(args.seeds)) if args.seeds is not None else None, num_requests=args.num_requests,
                         trace=args.trace, workers=args.workers, profile=args.profile)
    try:
        with interruptible():
            rows = run_reproduction(cfg, progress=not args.quiet, out=args.out, fresh=args.fresh)
    except Interrupted as e:
        done = len([p for p in (Path(args.out) / "runs").glob("*.json") if p.name != "study.json"])
        print(f"interrupted by {e}: {done} runs done and kept in {args.out}/runs; run the same command again to "
              f"finish the rest", file=sys.stderr)
        return e.exit_status
    out = write_outputs(rows, cfg, args.out)
    if not args.quiet:
        print(markdown(rows, cfg))
        print(f"results in {out}/ (reproduction.json, .csv, .md, .html)")
    return 0
