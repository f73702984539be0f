"""Per-source and cross-source scores of a prompt-predictor recipe (the tables of docs/predictors.md).

    python -m policies.predictors.crosssource --data sharegpt,alpaca-eval --head ridge+boost --clip-tokens 64,1024 --cache /tmp/emb.npz

For one recipe (features, source balancing, data mix) it trains the prompt head on:

- *in-distribution*: every source minus held-out prompts (200 of AlpacaEval, 600 of the
  others, split by prompt, seeded) and scores each source's held-out prompts;
- *unseen source*, for each source family (``alpaca-eval``, ``sharegpt``) and each AlpacaEval
  sub-set: everything else (prompts shared with the test side removed), scored on it.

Scores are against each record's real answer length (Llama-2-7b-chat's for AlpacaEval,
ChatGPT's for ShareGPT), in MiniLM WordPiece tokens.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from policies.predictors.head import shrinkage_fit
from policies.predictors.sources import load_mix, parse_clip, split_by_source
from policies.predictors.text import Encoder, token_counts
from policies.predictors.train import evaluate, train

HOLDOUT = {"alpaca-eval": 200}
DEFAULT_HOLDOUT = 600


def _heldout_by_prompt(records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    test_prompts: set[str] = set()
    for fam in sorted({r["source"].split("/", 1)[0] for r in records}):
        prompts = sorted({r["instruction"] for r in records if r["source"].split("/", 1)[0] == fam})
        n = min(HOLDOUT.get(fam, DEFAULT_HOLDOUT), len(prompts) // 4)
        test_prompts |= {prompts[i] for i in rng.permutation(len(prompts))[:n]}
    return ([r for r in records if r["instruction"] not in test_prompts],
            [r for r in records if r["instruction"] in test_prompts])


def _score(head, recs, enc) -> dict:
    m = evaluate(head, recs, encoder=enc)
    out = {k: m[k] for k in ("n", "mae_tokens", "kendall_tau", "bucket_accuracy", "mean_true_tokens",
                             "mean_pred_tokens", "error_model")}
    # The same shrinkage fit centred on the test workload's mean ln length (what errors.py ships):
    # c + (1 - b)(mu_train - mu_test).
    em = m["error_model"]
    mu_test = float(np.log(np.maximum(token_counts([r["output"] for r in recs]), 1)).mean())
    mu_train = float(head.meta.get("mu_log_tokens", 0.0))
    out["error_model_workload"] = {**em, "c": em["c"] + (1 - em["b"]) * (mu_train - mu_test), "mu_test": mu_test}
    return out


def run(data: str, enc: Encoder, seed: int = 0, **recipe) -> list[dict]:
    records = load_mix(data)
    rows = []
    fams = sorted({r["source"].split("/", 1)[0] for r in records})
    train_recs, test_recs = _heldout_by_prompt(records, seed)
    head = train("prompt", train_recs, None, seed=seed, encoder=enc, **recipe)
    for fam in fams:
        te = [r for r in test_recs if r["source"].split("/", 1)[0] == fam]
        rows.append({"split": "in-distribution", "test": fam, "train": "all sources (other prompts)",
                     **_score(head, te, enc)})
    subsets = sorted({r["source"] for r in records if "/" in r["source"]})
    for test in fams + subsets:
        test_sources = {r["source"] for r in records if r["source"] == test or r["source"].split("/", 1)[0] == test}
        tr, te = split_by_source(records, test_sources)
        if not tr or not te:
            continue
        head = train("prompt", tr, None, seed=seed, encoder=enc, **recipe)
        rows.append({"split": "unseen source", "test": test,
                     "train": ", ".join(sorted({r["source"].split("/", 1)[0] for r in tr})) +
                              (" (other sub-sets)" if "/" in test else ""), **_score(head, te, enc)})
    return rows


def run_cv(data: str, enc: Encoder, seed: int = 0, k: int = 5, **recipe) -> list[dict]:
    """k-fold cross-validation by prompt over the whole mix: every prompt is scored once, by a model
    trained on the other folds (a steadier in-distribution figure than one held-out split)."""
    from policies.predictors.train import predict_records

    records = load_mix(data)
    fold = cv_folds(records, seed, k)
    true, pred = np.zeros(len(records)), np.zeros(len(records))
    for j in range(k):
        head = train("prompt", [r for r, f in zip(records, fold) if f != j], None, seed=seed, encoder=enc, **recipe)
        idx = np.flatnonzero(fold == j)
        t, p, _ = predict_records(head, [records[i] for i in idx], encoder=enc)
        true[idx], pred[idx] = t, p
    return cv_rows(records, true, pred, k)


def cv_folds(records: list[dict], seed: int, k: int) -> np.ndarray:
    """Each record's fold, 0..k-1, by prompt (seeded): every answer of one prompt in one fold."""
    prompts = sorted({r["instruction"] for r in records})
    fold_of = dict(zip(prompts, np.random.default_rng(seed).permutation(len(prompts)) % k))
    return np.array([fold_of[r["instruction"]] for r in records])


def cv_rows(records: list[dict], true: np.ndarray, pred: np.ndarray, k: int) -> list[dict]:
    """The k-fold table's rows, one per source family, from every record's out-of-fold prediction."""
    from policies.predictors.head import length_metrics

    rows = []
    for fam in sorted({r["source"].split("/", 1)[0] for r in records}):
        m = np.array([r["source"].split("/", 1)[0] == fam for r in records])
        met = length_metrics(true[m], pred[m])
        rows.append({"split": f"in-distribution, {k}-fold CV", "test": fam, "train": "all sources (other folds)",
                     **{key: met[key] for key in ("n", "mae_tokens", "kendall_tau", "bucket_accuracy",
                                                  "mean_true_tokens", "mean_pred_tokens")}})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| split | test source | trained on | n | MAE tokens | Kendall τ | bucket acc. |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['test']} | {r['train']} | {r['n']} | {r['mae_tokens']:.1f} | "
                     f"{r['kendall_tau']:.3f} | {r['bucket_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sharegpt,alpaca-eval")
    ap.add_argument("--cache", default=None, help="embedding cache (.npz) to read and extend")
    ap.add_argument("--features", default="minilm+cues", choices=("minilm+cues", "minilm+ln_len"))
    ap.add_argument("--no-balance", action="store_true", help="do not weight source families equally")
    ap.add_argument("--head", default="ridge", choices=("ridge", "ridge+boost"),
                    help="ridge, or the mean of ridge and gradient-boosted trees (policies/predictors/boost.py)")
    ap.add_argument("--clip-tokens", default="none",
                    help="LO,HI: learn ln(clip(tokens, LO, HI)) (the recommended recipe: 64,1024), or none")
    ap.add_argument("--cv", type=int, default=0, metavar="K",
                    help="instead of the splits: K-fold cross-validation by prompt over the whole mix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    t = time.process_time()
    clip = parse_clip(a.clip_tokens)
    recipe = {"features": a.features, "balance": not a.no_balance, "head": a.head, "clip_tokens": clip}
    if a.cv == 1 or a.cv < 0:
        ap.error(f"--cv {a.cv}: expected K >= 2 folds (or 0 for the splits)")
    rows = run_cv(a.data, Encoder(a.cache), a.seed, a.cv, **recipe) if a.cv else run(a.data, Encoder(a.cache), a.seed,
                                                                                      **recipe)
    print(f"data {a.data}, features {a.features}, head {a.head}, balanced {not a.no_balance}, clip {clip}, seed {a.seed} "
          f"(CPU {time.process_time() - t:.0f} s)")
    print(markdown(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
