"""The lean source extracts behind the profile zoo, and the hardware / model facts it uses.

``python -m simulator.profiles.sources --vidur DIR --attention CSV --seqsched JSON`` rebuilds
the extracts in ``source/`` from the original files (see ``source/README.md``); the
deriver (:mod:`simulator.profiles.derive_zoo`) reads only the extracts. Extracting keeps rows
and values unmodified and drops columns the derivation does not read (min/max/mean/std).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "source"
MLP_CSV = SOURCE / "vidur_mlp_medians.csv.gz"
ALL_REDUCE_CSV = SOURCE / "vidur_all_reduce_medians.csv.gz"
ATTENTION_CSV = SOURCE / "a100_llama-2-7b_attention_rows.csv"
SEQSCHED_CSV = SOURCE / "seqsched_vicuna7b_val_lengths.csv"
VIDUR_COMMIT = "7d47513363ec447a741ac5e47241580b47724fbf"

GIB = 1 << 30
# Vendor data sheets: memory, HBM/GDDR bandwidth, dense FP16 tensor throughput; the network
# folder of Vidur's profiling data whose all_reduce timings price tensor parallelism.
GPUS = {
    "a100": {"name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 80 * GIB, "hbm_bandwidth_bytes_per_s": 2.039e12,
             "fp16_tflops": 312.0, "network": "a100_dgx"},
    "h100": {"name": "NVIDIA H100-SXM5-80GB", "memory_bytes": 80 * GIB, "hbm_bandwidth_bytes_per_s": 3.35e12,
             "fp16_tflops": 989.0, "network": "h100_dgx"},
    "a40": {"name": "NVIDIA A40-48GB", "memory_bytes": 48 * 10**9, "hbm_bandwidth_bytes_per_s": 6.96e11,
            "fp16_tflops": 149.7, "network": None},  # Vidur has no A40 all_reduce timings: TP 1 only
}
# Model shapes from each model's Hugging Face config.json (layers, context, vocabulary); head
# counts and widths are read from Vidur's CSV rows and checked against these.
MODELS = {
    "llama-2-7b": {"vidur": "meta-llama/Llama-2-7b-hf", "n_layers": 32, "max_context": 4096, "vocab": 32000},
    "llama-2-70b": {"vidur": "meta-llama/Llama-2-70b-hf", "n_layers": 80, "max_context": 4096, "vocab": 32000},
    "llama-3-8b": {"vidur": "meta-llama/Meta-Llama-3-8B", "n_layers": 32, "max_context": 8192, "vocab": 128256},
    "llama-3-70b": {"vidur": "meta-llama/Meta-Llama-3-70B", "n_layers": 80, "max_context": 8192, "vocab": 128256},
    "codellama-34b": {"vidur": "codellama/CodeLlama-34b-Instruct-hf", "n_layers": 48, "max_context": 16384,
                      "vocab": 32000},
    "qwen-72b": {"vidur": "Qwen/Qwen-72B", "n_layers": 80, "max_context": 32768, "vocab": 151936},
    "internlm-20b": {"vidur": "internlm/internlm-20b", "n_layers": 60, "max_context": 4096, "vocab": 103168},
    "phi-2": {"vidur": "microsoft/phi-2", "n_layers": 32, "max_context": 2048, "vocab": 51200},
}
OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
SHAPE = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp",
         "num_tokens", "num_tensor_parallel_workers")


def _write_gz_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(buf.getvalue().encode())


def extract(vidur: Path, attention: Path, seqsched: Path) -> None:
    rows = []
    for gpu in GPUS:
        for m in MODELS.values():
            f = vidur / "compute" / gpu / m["vidur"] / "mlp.csv.gz"
            if not f.exists():
                continue
            with gzip.open(f, "rt", newline="") as fh:
                for r in csv.DictReader(fh):
                    rows.append([gpu, m["vidur"]] + [r.get(f"time_stats.{op}.median", "") for op in OPS]
                                + [r[c] for c in SHAPE])
    _write_gz_csv(MLP_CSV, ["gpu", "model"] + [f"{op}_median_ms" for op in OPS] + list(SHAPE), rows)
    rows = []
    for net in sorted({g["network"] for g in GPUS.values() if g["network"]}):
        with gzip.open(vidur / "network" / net / "all_reduce.csv.gz", "rt", newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append([net, r["num_workers"], r["devices_per_node"], r["size"], r["time_stats.all_reduce.median"]])
    _write_gz_csv(ALL_REDUCE_CSV, ["network", "num_workers", "devices_per_node", "size_bytes", "median_ms"], rows)
    ATTENTION_CSV.write_bytes(attention.read_bytes())
    recs = json.loads(seqsched.read_text())
    with open(SEQSCHED_CSV, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "L_t0.7"])
        w.writerows([r["id"], r["L_t0.7"]] for r in recs[:2048])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vidur", type=Path, required=True, help="Vidur's data/profiling folder (compute/, network/)")
    ap.add_argument("--attention", type=Path, required=True, help="rows of Vidur's A100 Llama-2-7B attention.csv")
    ap.add_argument("--seqsched", type=Path, required=True, help="Sequence Scheduling's alpaca-val-10k-length.json")
    args = ap.parse_args(argv)
    extract(args.vidur, args.attention, args.seqsched)
    print(f"wrote {MLP_CSV.name}, {ALL_REDUCE_CSV.name}, {ATTENTION_CSV.name}, {SEQSCHED_CSV.name} in {SOURCE}")


if __name__ == "__main__":
    main()
