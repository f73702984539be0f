"""Build ``alpaca_eval/lengths_by_model.csv.gz``: every model's answer length to each AlpacaEval prompt.

Run from the repository root with the AlpacaEval ``model_outputs`` folder (see SOURCES.md)::

    python -m policies.data.build_alpaca_lengths /work/shared/traces/alpaca-eval/model_outputs

Columns: ``prompt_index`` (position of the instruction in the bundled
``llama-2-7b-chat-hf.json.gz``), ``model`` (file stem; ``_concise`` / ``_verbose`` variants are
left out: they answer a different prompt), ``output_tokens`` (MiniLM WordPiece tokens of the
answer, no special tokens). Only lengths are kept, not the answers' text (the repo stays lean).
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "alpaca_eval"


def main(folder: str) -> int:
    from traces.tokenize import count_tokens

    base = json.loads(gzip.decompress((HERE / "llama-2-7b-chat-hf.json.gz").read_bytes()))
    index = {r["instruction"]: i for i, r in enumerate(base)}
    rows = []
    for f in sorted(Path(folder).glob("*.json.gz")):
        model = f.name.removesuffix(".json.gz")
        if model.endswith(("_concise", "_verbose")):
            continue
        recs = [r for r in json.loads(gzip.decompress(f.read_bytes())) if r.get("instruction") in index
                and isinstance(r.get("output"), str) and r["output"].strip()]
        for r, n in zip(recs, count_tokens([r["output"] for r in recs]).tolist()):
            rows.append((index[r["instruction"]], model, max(int(n), 1)))
    rows.sort()
    text = "prompt_index,model,output_tokens\n" + "".join(f"{i},{m},{n}\n" for i, m, n in rows)
    (HERE / "lengths_by_model.csv.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
    print(f"{len(rows)} lengths, {len({m for _, m, _ in rows})} models")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
