"""Measure prompt-based length control on AlpacaEval (run by hand; the numbers go into response.py).

    python -m policies.control.calibrate --alpaca-eval /work/shared/traces/alpaca-eval

Per model (plain, ``_concise``, ``_verbose`` answers to the same prompts, joined by
instruction): mean lengths in MiniLM tokens, the concise/plain ratio quantiles, the share of
requests whose concise answer is still >= 0.9 x plain (instruction effectively ignored), and
the SD of ln(ratio). For the two annotated models: the judged win rate (100 x mean(preference
- 1), as AlpacaEval computes it) of each variant, and the share of the plain win rate kept by
concise answers, by concise/plain word ratio.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from policies.predictors.text import token_counts

MODELS = ("alpaca-7b", "claude-2.1", "gpt-3.5-turbo-1106", "gpt4_0613", "gpt4_1106_preview",
          "Mixtral-8x7B-Instruct-v0.1")
ANNOTATED = ("alpaca-7b", "gpt-3.5-turbo-1106")
RATIO_BINS = ((0, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.1), (1.1, np.inf))


def _read(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def compliance(root: Path, model: str) -> dict:
    variants = [{r["instruction"]: r["output"] for r in _read(root / "model_outputs" / f"{model}{v}.json.gz")}
                for v in ("", "_concise", "_verbose")]
    keys = [k for k in variants[0] if all(k in v for v in variants[1:])]
    plain, concise, verbose = (token_counts([v[k] for k in keys]) for v in variants)
    ok = (plain > 0) & (concise > 0)
    r = concise[ok] / plain[ok]
    return {"model": model, "n": len(keys), "mean_tokens": [round(float(x.mean()), 1) for x in (plain, concise, verbose)],
            "ratio_p10_p50_p90": [round(float(q), 2) for q in np.percentile(r, [10, 50, 90])],
            "share_ratio_ge_0.9": round(float((r >= 0.9).mean()), 3), "sd_ln_ratio": round(float(np.log(r).std()), 3)}


def quality(root: Path, model: str) -> dict:
    def load(v):
        rows = _read(root / "annotations" / f"{model}{v}.weighted_alpaca_eval_gpt4_turbo.json.gz")
        return {r["instruction"]: (float(r["preference"]) - 1, len(r["output_2"].split()))
                for r in rows if r.get("preference") is not None}
    plain, concise, verbose = load(""), load("_concise"), load("_verbose")
    out = {"model": model, "win_rate_plain_concise_verbose": [round(100 * float(np.mean([v[0] for v in d.values()])), 2)
                                                             for d in (plain, concise, verbose)], "by_ratio": []}
    keys = [k for k in plain if k in concise and plain[k][1] > 0]
    ratio = np.array([concise[k][1] / plain[k][1] for k in keys])
    wp, wc = np.array([plain[k][0] for k in keys]), np.array([concise[k][0] for k in keys])
    for lo, hi in RATIO_BINS:
        s = (ratio >= lo) & (ratio < hi)
        out["by_ratio"].append({"ratio": [lo, hi if np.isfinite(hi) else None], "n": int(s.sum()),
                                "win_plain": round(100 * float(wp[s].mean()), 1),
                                "win_concise": round(100 * float(wc[s].mean()), 1),
                                "kept": round(float(wc[s].mean() / wp[s].mean()), 2) if wp[s].mean() > 0 else None})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpaca-eval", required=True, help="folder with model_outputs/ and annotations/")
    args = ap.parse_args(argv)
    root = Path(args.alpaca_eval)
    for m in MODELS:
        print(json.dumps(compliance(root, m)))
    for m in ANNOTATED:
        print(json.dumps(quality(root, m)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
