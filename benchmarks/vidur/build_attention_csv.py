"""Rebuild the A100 Llama-2-7B ``attention.csv`` that Vidur needs, from the real rows we ship (run by hand).

    python benchmarks/vidur/build_attention_csv.py --out VIDUR/data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/attention.csv

Vidur's own file (10.7 MB) is missing from the repository snapshot we can read
(``git show`` of its blob fails); ``simulator/profiles/source/a100_llama-2-7b_attention_rows.csv``
holds 1,620 of its real rows (kind, batch_size, prefill_chunk_size, kv_cache_size and the
per-layer median in ms of the attention kernel; see that folder's README for where they were
read). This script writes them back in the schema Vidur's ``SklearnExecutionTimePredictor``
reads, changing no value:

- model/shape columns that Vidur filters on, constant for Llama-2-7B at TP 1 with 16-token KV
  blocks (the rows were profiled so): ``n_embd`` 4096, ``n_q_head`` 32, ``n_kv_head`` 32,
  ``block_size`` 16, ``num_tensor_parallel_workers`` 1;
- ``batch_size``, ``prefill_chunk_size`` (0 on decode rows), ``kv_cache_size`` as in the rows;
- ``time_stats.attn_prefill.median`` = the row's median on prefill rows (empty on decode rows),
  ``time_stats.attn_decode.median`` = the row's median on decode rows (empty on prefill rows):
  Vidur trains its prefill model on the rows with ``prefill_chunk_size > 0`` only and its decode
  model on the others only, so the empty cells are never read;
- ``time_stats.attn_kv_cache_save.median`` is left out: our rows do not carry it, and Vidur
  itself fills a missing column with 0 (``_load_attention_df``), so Vidur prices the KV-cache
  write at zero here (its small per-token cost is the one difference from the original file).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ROOT / "simulator" / "profiles" / "source" / "a100_llama-2-7b_attention_rows.csv"
SHAPE = {"n_embd": 4096, "n_q_head": 32, "n_kv_head": 32, "block_size": 16, "num_tensor_parallel_workers": 1}
COLUMNS = list(SHAPE) + ["batch_size", "prefill_chunk_size", "kv_cache_size",
                         "time_stats.attn_prefill.median", "time_stats.attn_decode.median"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", default=str(ROWS))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kinds = {"decode": 0, "prefill": 0}
    with open(args.rows, newline="") as f, out.open("w", newline="") as g:
        w = csv.DictWriter(g, fieldnames=COLUMNS)
        w.writeheader()
        for row in csv.DictReader(f):
            kind = row["kind"]
            decode = kind == "decode"
            if decode != (int(row["prefill_chunk_size"]) == 0):
                raise SystemExit(f"{args.rows}: a {kind} row with prefill_chunk_size {row['prefill_chunk_size']}")
            kinds[kind] += 1
            w.writerow({**SHAPE, "batch_size": row["batch_size"], "prefill_chunk_size": row["prefill_chunk_size"],
                        "kv_cache_size": row["kv_cache_size"],
                        "time_stats.attn_prefill.median": "" if decode else row["median_ms"],
                        "time_stats.attn_decode.median": row["median_ms"] if decode else ""})
    print(f"{out}: {kinds['decode']} decode and {kinds['prefill']} prefill rows from {args.rows}")


if __name__ == "__main__":
    main()
