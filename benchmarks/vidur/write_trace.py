"""Write the 10,000-request row of ``bench_simulator.py`` as a Vidur trace file (run by hand).

    python benchmarks/vidur/write_trace.py --out /tmp/vidur-run/azure_conv_10k.csv [--requests 10000] [--rate 4]

The requests are those of ``bench_simulator.py``'s row: the Azure conversation trace tiled and
rescaled to --rate req/s (``select_requests(..., seed=0, rate=4, tile=True)``), the same arrival
times (written with ``repr``, so they read back bit for bit) and token counts.

Vidur's trace replay (``TraceReplayRequestGenerator``, ``max_tokens`` 4096) shortens the prompt of
any request whose prompt + output exceeds 4,096 tokens, where our simulator turns a prompt of
4,096+ tokens away and caps the output of the rest. So that both simulators serve the *same*
requests, this file applies Vidur's rule itself (prompt -= prompt + output - 4096, output and
prompt at least 1) and says how many rows it changed; our side of the comparison then reads
this same file (``load_trace(path, format="vidur")``), so both see identical token counts.
Columns: ``arrived_at`` (s), ``num_prefill_tokens``, ``num_decode_tokens``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MAX_TOKENS = 4096  # Vidur's TraceRequestGeneratorConfig.max_tokens default, Llama-2's context


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=4.0)
    args = ap.parse_args()
    from traces import load_trace, select_requests

    trace = select_requests(load_trace("azure-conv"), num_requests=args.requests, seed=0, rate=args.rate, tile=True)
    prompt = np.maximum(trace.prompt_tokens.astype(np.int64), 1)
    output = np.maximum(trace.output_tokens.astype(np.int64), 1)
    over = np.maximum(prompt + output - MAX_TOKENS, 0)
    prompt = prompt - over
    assert (prompt >= 1).all(), "a request's output alone exceeds the context"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        f.write("arrived_at,num_prefill_tokens,num_decode_tokens\n")
        for a, p, o in zip(trace.arrival_s.tolist(), prompt.tolist(), output.tolist()):
            f.write(f"{a!r},{p},{o}\n")
    print(f"{out}: {len(trace):,} requests over {trace.arrival_s[-1]:.1f} s; "
          f"{int((over > 0).sum())} prompts shortened to fit {MAX_TOKENS} tokens (Vidur's rule); "
          f"{int(prompt.sum()):,} prompt and {int(output.sum()):,} output tokens")


if __name__ == "__main__":
    main()
