"""Measure the noisy oracle's spread from real same-prompt answers (run by hand).

    python -m policies.predictors.calibrate --seqsched /work/shared/traces/seqsched-alpaca-lengths

For each prompt, Vicuna-7B's four answer lengths (temperatures 0.7/0.5/0.3/0.0); prints the
pooled within-prompt SD of ln(tokens) (n - 1 per prompt), the number behind
``errors.NOISY_SIGMA``. The data is not bundled (only this one number is used).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLUMNS = ("L_t0.7", "L_t0.5", "L_t0.3", "L_t0.0")


def within_prompt_log_sd(records: list[dict], source: str = "") -> dict:
    try:
        lengths = np.array([[float(r[c]) for c in COLUMNS] for r in records])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: expected records with numeric {', '.join(COLUMNS)} ({e})") from None
    lengths = lengths[(lengths > 0).all(axis=1)]
    lg = np.log(lengths)
    dev = lg - lg.mean(axis=1, keepdims=True)
    sd = float(np.sqrt((dev**2).sum() / (dev.size - len(lg))))
    return {"n_prompts": int(len(lg)), "within_prompt_log_sd": round(sd, 4),
            "median_abs_pair_diff_tokens": float(np.median(np.abs(lengths[:, 0] - lengths[:, 1])))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqsched", required=True, help="folder with alpaca-{train,val}-10k-length.json")
    args = ap.parse_args(argv)
    for name in ("alpaca-train-10k-length.json", "alpaca-val-10k-length.json"):
        path = Path(args.seqsched) / name
        print(name, json.dumps(within_prompt_log_sd(json.loads(path.read_text()), str(path))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
