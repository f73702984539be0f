"""``syncintellects train-predictor`` and ``evaluate-predictor``: the learned length predictors.

Thin shells over :mod:`policies.predictors.train`. Training reads real answers (the bundled
AlpacaEval Llama-2-7b-chat set by default), holds out prompts (split by prompt, seeded),
writes the head (``head.npz``; ``lora.npz`` for ``--head lora``), its metadata and held-out metrics (``model.json``), the
held-out records (``heldout.json``, for ``evaluate-predictor``) and an embedding cache.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train-predictor", help="train the prompt or progressive length predictor on real answers",
                       description="Train a MiniLM-based length predictor on real answers and write it to --out "
                                   "(head.npz or lora.npz, model.json with held-out metrics, heldout.json).")
    p.add_argument("--kind", choices=("prompt", "progressive"), required=True)
    p.add_argument("--data", default=None,
                   help="comma-separated sources: alpaca-eval (bundled Llama-2-7b-chat answers), alpaca-eval-multi "
                        "(same prompts, 12 models' verbosity as the target), sharegpt (needs the 'data' extra), or "
                        "JSON(.gz) files of {instruction, output}; default: the recommended mix "
                        "(sharegpt,alpaca-eval; docs/predictors.md)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--holdout", type=int, default=None, help="prompts held out for evaluation (default 200; 0: "
                   "train on all; not with --holdout-source)")
    p.add_argument("--holdout-source", default=None,
                   help="hold out whole sources instead (comma-separated, e.g. sharegpt or alpaca-eval/koala; "
                        "'alpaca-eval' = all its sub-sets): train on the others, evaluate on these; a prompt "
                        "seen in training is never evaluated")
    p.add_argument("--head", choices=("ridge", "ridge+boost", "lora", "transformer", "cues"), default=None,
                   help="prompt: ridge (default), ridge+boost (mean of ridge and gradient-boosted trees) or lora "
                        "(MiniLM's top layers fine-tuned with a ranking loss; ~30 CPU-minutes on the full mix, resumable "
                        "after a Ctrl-C; docs/predictors.md); "
                        "progressive: cues (default; a calibrated survival prior corrected by trees over the answer's "
                        "structure so far; measured best, docs/predictors.md), ridge on the latest text embedding, "
                        "or a transformer over the states every 32 tokens (the default with --record-hidden)")
    p.add_argument("--clip-tokens", default="none", metavar="LO,HI",
                   help="prompt: learn ln(clip(answer tokens, LO, HI)) instead of ln(tokens) (the recommended "
                        "recipe: 64,1024; docs/predictors.md); none (default) for no clipping")
    p.add_argument("--lora-steps", type=int, default=None, metavar="N",
                   help="--head lora: training steps of 32 prompts (default 1000)")
    p.add_argument("--lora-layers", type=int, default=None, metavar="K",
                   help="--head lora: how many of MiniLM's six layers, from the top, get adapters (default 3)")
    p.add_argument("--lora-rank", type=int, default=None, metavar="R", help="--head lora: adapter rank (default 16)")
    p.add_argument("--fresh", action="store_true",
                   help="--head lora: discard a training state left in --out by an interrupted run (by default the "
                        "same command resumes from it)")
    p.add_argument("--max-answers", type=int, default=None,
                   help="progressive: train the sequence head on at most this many answers (seeded subsample; "
                        "embedding every 32 tokens is the cost)")
    p.add_argument("--record-hidden", default=None, metavar="MODEL",
                   help="progressive transformer: states = this served model's last-layer hidden states "
                        "(a local checkpoint directory or a named shape such as tiny-llama) instead of MiniLM")
    p.add_argument("--device", default="cpu", help="device for --record-hidden")
    p.add_argument("--seed", type=int, default=0, help="seeds the split and the cross-validation folds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=train_cmd)

    q = sub.add_parser("evaluate-predictor", help="score a trained length predictor on real answers",
                       description="Predict the answer length of each {instruction, output} record and write "
                                   "METRICS.json (mae_tokens, kendall_tau, bucket_accuracy, n, ...).")
    q.add_argument("--model", required=True, help="directory written by train-predictor, or a bundled model's "
                   "name (prompt-lora)")
    q.add_argument("--data", required=True, help="JSON(.gz) list of {instruction, output} records, or a named source")
    q.add_argument("--record-hidden", default=None, metavar="MODEL",
                   help="for a hidden-state progressive model: the served model to replay the answers through")
    q.add_argument("--device", default="cpu", help="device for --record-hidden")
    q.add_argument("--out", required=True, help="metrics JSON file to write")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=evaluate_cmd)


def _states(args, enc):
    if not args.record_hidden:
        return None
    from gpu_runner.hidden import HiddenStateSource
    from gpu_runner.models import load_model

    return HiddenStateSource(load_model(args.record_hidden, device=args.device))


def train_cmd(args) -> int:
    import numpy as np

    from policies.predictors.sources import load_mix, parse_clip, split_by_source
    from policies.predictors.text import Encoder, split_by_prompt
    from policies.predictors.train import train, write_model

    clip = parse_clip(args.clip_tokens)
    if clip is not None and args.kind != "prompt":
        raise ValueError("--clip-tokens is for --kind prompt")
    records = load_mix(args.data)
    head_type = args.head or ("transformer" if args.record_hidden else "cues" if args.kind == "progressive" else "ridge")
    if args.kind == "prompt" and args.head not in (None, "ridge", "ridge+boost", "lora"):
        raise ValueError(f"--head {args.head} is for --kind progressive")
    if args.kind == "progressive" and args.head in ("ridge+boost", "lora"):
        raise ValueError(f"--head {args.head} is for --kind prompt")
    lora = {k: v for k, v in (("steps", args.lora_steps), ("layers", args.lora_layers), ("rank", args.lora_rank))
            if v is not None}
    if lora and head_type != "lora":
        raise ValueError(f"--lora-{next(iter(lora))} is for --head lora")
    for key, lo, hi in (("steps", 0, None), ("layers", 1, 6), ("rank", 1, None)):
        if key in lora and (lora[key] < lo or (hi is not None and lora[key] > hi)):
            raise ValueError(f"--lora-{key} must be " + (f"{lo}-{hi}" if hi else f">= {lo}") + f", got {lora[key]}")
    if args.fresh and head_type != "lora":
        raise ValueError("--fresh is for --head lora (the only resumable training)")
    if args.record_hidden and head_type != "transformer":
        raise ValueError("--record-hidden needs --kind progressive --head transformer")
    if args.holdout_source and args.holdout is not None:
        raise ValueError(f"--holdout {args.holdout} with --holdout-source {args.holdout_source}: the source is "
                         "held out whole; give one")
    if args.holdout is None:
        args.holdout = 200
    if args.holdout < 0:
        raise ValueError(f"--holdout must be >= 0, got {args.holdout}")
    if args.max_answers is not None and args.kind != "progressive":
        raise ValueError(f"--max-answers {args.max_answers} is for --kind progressive (it caps the answers replayed "
                         "token by token); a prompt model trains on every record")
    if args.max_answers is not None and args.max_answers < 1:
        raise ValueError(f"--max-answers must be >= 1, got {args.max_answers}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: is a file, expected a model directory")
    if args.holdout_source:
        wanted = {s.strip() for s in args.holdout_source.split(",") if s.strip()}
        present = {r["source"] for r in records}
        test_sources = {s for s in present if s in wanted or s.split("/", 1)[0] in wanted}
        if not test_sources:
            raise ValueError(f"--holdout-source {args.holdout_source}: no such source in --data (sources: "
                             f"{', '.join(sorted(present))})")
        train_recs, test_recs = split_by_source(records, test_sources)
        if not train_recs:
            raise ValueError(f"--holdout-source {args.holdout_source}: every record of --data is from it; nothing "
                             "is left to train on")
        split = {"by": "source", "test_sources": sorted(test_sources)}
    elif args.holdout:
        try:
            train_recs, test_recs = split_by_prompt(records, args.holdout, args.seed)
        except ValueError as e:
            raise ValueError(f"--holdout {args.holdout}: {e}") from None
        split = {"by": "prompt", "seed": args.seed}
    else:
        train_recs, test_recs, split = records, [], {"by": "none"}
    fit_recs = train_recs
    if args.max_answers is not None and args.kind == "progressive" and len(train_recs) > args.max_answers:
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(train_recs))[:args.max_answers])
        fit_recs = [train_recs[i] for i in keep]
    if args.kind == "progressive" and args.max_answers is not None and len(test_recs) > args.max_answers:
        keep = np.sort(np.random.default_rng(args.seed + 1).permutation(len(test_recs))[:args.max_answers])
        test_recs = [test_recs[i] for i in keep]
    out.mkdir(parents=True, exist_ok=True)
    if head_type == "lora":  # resumable: an interrupted run leaves its state here (lora.py)
        lora["state"] = out / "lora-state.pt"
        if args.fresh:
            lora["state"].unlink(missing_ok=True)
    enc = Encoder(out / "embeddings.npz")
    model = train(args.kind, fit_recs, test_recs, seed=args.seed, encoder=enc, progress=not args.quiet,
                  source=args.data or "recommended", head=head_type, states=_states(args, enc),
                  log=None if args.quiet else _say, **({"clip_tokens": clip} if clip else {}), **lora)
    model.meta["split"] = {**split, "n_train": len(fit_recs), "n_heldout": len(test_recs)}
    write_model(model, out, fit_recs)  # with its training prompts, hashed: runs count the prompts it has seen
    if head_type == "lora":
        lora["state"].unlink(missing_ok=True)  # the model is written: nothing left to resume
    if test_recs:
        (out / "heldout.json").write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"],
                                                       "source": r["source"]} for r in test_recs],
                                                     ensure_ascii=False) + "\n")
    _print_summary(f"{args.kind} predictor ({head_type}) -> {out}", model.meta.get("heldout"))
    return 0


def evaluate_cmd(args) -> int:
    from policies.predictors.sources import load_source
    from policies.predictors.learned import model_path
    from policies.predictors.text import Encoder
    from policies.predictors.train import evaluate, load_model

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {args.out}: is a directory, expected the metrics file (.json)")
    model = load_model(args.model)
    records = load_source(args.data)
    # the embedding cache lives beside a user's model, never inside the installed package's bundled one
    enc = Encoder(None if model_path(args.model) != args.model else Path(args.model) / "embeddings.npz")
    metrics = evaluate(model, records, encoder=enc, progress=not args.quiet, states=_states(args, enc))
    metrics.update({"model": str(args.model), "kind": model.meta.get("kind"), "data": str(args.data)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    _print_summary(f"{model.meta.get('kind')} predictor on {args.data} -> {out}", metrics)
    return 0


def _say(*a) -> None:
    """Progress lines of long training, flushed so that a redirected log shows them as they come."""
    print(*a, flush=True)


def _print_summary(title: str, m: dict | None) -> None:
    print(title)
    if not m:
        return
    print(f"  n={m['n']}  MAE {m['mae_tokens']:.1f} tokens  Kendall tau {m['kendall_tau']:.3f}  "
          f"bucket accuracy {m['bucket_accuracy']:.3f}")
    for f, b in m.get("by_fraction", {}).items():
        print(f"  after {float(f):>4.0%} of the answer: MAE total {b['mae_tokens']:.1f}, remaining "
              f"{b['mae_remaining_tokens']:.1f} tokens; tau {b['kendall_tau']:.3f}; bucket acc {b['bucket_accuracy']:.3f}")
