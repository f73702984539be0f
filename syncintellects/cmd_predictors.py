"""``syncintellects train-predictor`` and ``evaluate-predictor``: the learned length predictors.

Thin shells over :mod:`policies.predictors.train`. Training reads real answers (the bundled
AlpacaEval Llama-2-7b-chat set by default), holds out prompts (split by prompt, seeded),
writes the head (``head.npz``), its metadata and held-out metrics (``model.json``), the
held-out records (``heldout.json``, for ``evaluate-predictor``) and an embedding cache.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train-predictor", help="train the prompt or progressive length predictor on real answers",
                       description="Train a MiniLM + ridge length predictor on real answers and write it to --out "
                                   "(head.npz, model.json with held-out metrics, heldout.json).")
    p.add_argument("--kind", choices=("prompt", "progressive"), required=True)
    p.add_argument("--data", default="alpaca-eval",
                   help="'alpaca-eval' (bundled Llama-2-7b-chat answers) or a JSON(.gz) list of {instruction, output}")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--holdout", type=int, default=200, help="prompts held out for evaluation (0: train on all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split and the cross-validation folds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=train_cmd)

    q = sub.add_parser("evaluate-predictor", help="score a trained length predictor on real answers",
                       description="Predict the answer length of each {instruction, output} record and write "
                                   "METRICS.json (mae_tokens, kendall_tau, bucket_accuracy, n, ...).")
    q.add_argument("--model", required=True, help="directory written by train-predictor")
    q.add_argument("--data", required=True, help="JSON(.gz) list of {instruction, output} records, or 'alpaca-eval'")
    q.add_argument("--out", required=True, help="metrics JSON file to write")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=evaluate_cmd)


def train_cmd(args) -> int:
    from policies.predictors.text import Encoder, load_records, split_by_prompt
    from policies.predictors.train import train, write_model

    records = load_records(args.data)
    if args.holdout < 0:
        raise ValueError(f"--holdout must be >= 0, got {args.holdout}")
    if args.holdout:
        train_recs, test_recs = split_by_prompt(records, args.holdout, args.seed)
    else:
        train_recs, test_recs = records, []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    enc = Encoder(out / "embeddings.npz")
    head = train(args.kind, train_recs, test_recs, seed=args.seed, encoder=enc, progress=not args.quiet,
                 source=str(args.data))
    head.meta["split"] = {"by": "prompt", "seed": args.seed, "n_train": len(train_recs), "n_heldout": len(test_recs)}
    write_model(head, out)
    if test_recs:
        (out / "heldout.json").write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"]}
                                                      for r in test_recs], ensure_ascii=False) + "\n")
    _print_summary(f"{args.kind} predictor -> {out}", head.meta.get("heldout"))
    return 0


def evaluate_cmd(args) -> int:
    from policies.predictors.head import RidgeHead
    from policies.predictors.text import Encoder, load_records
    from policies.predictors.train import evaluate

    head = RidgeHead.load(args.model)
    records = load_records(args.data)
    metrics = evaluate(head, records, encoder=Encoder(Path(args.model) / "embeddings.npz"), progress=not args.quiet)
    metrics.update({"model": str(args.model), "kind": head.meta.get("kind"), "data": str(args.data)})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    _print_summary(f"{head.meta.get('kind')} predictor on {args.data} -> {out}", metrics)
    return 0


def _print_summary(title: str, m: dict | None) -> None:
    print(title)
    if not m:
        return
    print(f"  n={m['n']}  MAE {m['mae_tokens']:.1f} tokens  Kendall tau {m['kendall_tau']:.3f}  "
          f"bucket accuracy {m['bucket_accuracy']:.3f}")
    for f, b in m.get("by_fraction", {}).items():
        print(f"  after {float(f):>4.0%} of the answer: MAE total {b['mae_tokens']:.1f}, remaining "
              f"{b['mae_remaining_tokens']:.1f} tokens; tau {b['kendall_tau']:.3f}; bucket acc {b['bucket_accuracy']:.3f}")
