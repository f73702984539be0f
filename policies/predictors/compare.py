"""Score the simulator's text-free predictor models on the held-out lengths of a trained model.

    python -m policies.predictors.compare --model results/pred-prog [--seeds 20]

For the held-out answers a model was evaluated on (``MODEL/heldout.json``), prints the same
metrics for (a) the noisy oracle at the calibrated same-prompt spread, the floor for any
predictor on a single sample, and (b) the text-free error models of the prompt and
progressive predictors (what an Azure-trace simulation uses), averaged over seeds, so they
can be set beside the real predictor's measured metrics in ``MODEL/model.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from policies.contract import RequestView
from policies.predictors import errors, make_predictor
from policies.predictors.head import length_metrics
from policies.predictors.text import load_records, token_counts

KEYS = ("mae_tokens", "kendall_tau", "bucket_accuracy", "log_error_sd")


def _score(name: str, truth: np.ndarray, fraction: float, seeds: int, **params) -> dict:
    rows = []
    for seed in range(seeds):
        p = make_predictor(name, seed=seed, **params)
        p.bind_truth(lambda i: int(truth[i]))
        gen = np.floor(fraction * truth).astype(int)
        pred = np.array([p.predict(RequestView(i, 0.0, 1, 10**6), int(g)) for i, g in enumerate(gen)])
        rows.append(length_metrics(truth, pred))
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in KEYS}


def compare(model_dir: str | Path, seeds: int = 20) -> dict:
    truth = np.maximum(token_counts([r["output"] for r in load_records(Path(model_dir) / "heldout.json")]), 1)
    out = {"n": int(len(truth)), "seeds": seeds,
           "noisy_oracle": _score("noisy", truth, 0.0, seeds, sigma=errors.NOISY_SIGMA),
           "prompt_model": _score("prompt", truth, 0.0, seeds, error=errors.PROMPT_ERROR)}
    for f in sorted(errors.PROGRESSIVE_ERROR):
        out[f"progressive_model_{f:.2f}"] = _score("progressive", truth, f, seeds, error=errors.PROGRESSIVE_ERROR)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a directory written by train-predictor (with heldout.json)")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args(argv)
    print(json.dumps(compare(args.model, args.seeds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
