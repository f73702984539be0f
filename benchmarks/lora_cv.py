"""5-fold cross-validation of the LoRA prompt head (``train-predictor --head lora``), fold by fold.

    OMP_NUM_THREADS=1 python benchmarks/lora_cv.py --out DIR --folds 0,2,4 &   # one process per core
    OMP_NUM_THREADS=1 python benchmarks/lora_cv.py --out DIR --folds 1,3
    python benchmarks/lora_cv.py --out DIR --head ridge+boost               # the shipped recipe, same folds
    python benchmarks/lora_cv.py --out DIR --merge                          # the tables, once every fold is in

The folds are ``policies.predictors.crosssource``'s (by prompt, seed 0, over the
``sharegpt,alpaca-eval`` mix), so the table compares with that module's ``--cv 5`` rows of the
ridge+boost recipe prompt for prompt. Each fold trains the product's own code (``train("prompt",
head="lora", clip_tokens=(64, 1024))``, default settings unless --steps/--layers/--rank) on the
other four and writes ``fold{j}.npz`` (record index, true and predicted tokens, training CPU
seconds, peak RSS); ``--head ridge+boost`` (the shipped recipe) writes ``ridge+boost-fold{j}.npz``.
A fold already written is skipped, so an interrupted run resumes. ``--merge`` prints each head's
table, its in-distribution error model on AlpacaEval (the shrinkage fit of errors.py, c re-centred on
the AlpacaEval mean as the shipped defaults are) and the per-fold Kendall tau of both heads side by
side (a paired comparison). With ``--error-models MODEL_DIR --unseen RUN_DIR`` it also writes the
LoRA model's two text-free error models into MODEL_DIR/model.json (``error_models``): in-distribution
from these folds, unseen-source from RUN_DIR, a ``train-predictor --head lora --holdout-source
alpaca-eval`` run (trained on ShareGPT only, scored on AlpacaEval)::

    python benchmarks/lora_cv.py --out DIR --merge --error-models policies/data/models/prompt-lora \
        --unseen RUN_DIR
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", default="0,1,2,3,4", help="which folds this process runs")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--data", default="sharegpt,alpaca-eval")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", default="lora", choices=("lora", "ridge+boost"))
    ap.add_argument("--merge", action="store_true", help="print the tables from the folds written")
    ap.add_argument("--error-models", default=None, help="with --merge: write error_models into this model's model.json")
    ap.add_argument("--unseen", default=None, help="with --error-models: the --holdout-source alpaca-eval run")
    a = ap.parse_args(argv)
    if (a.error_models is None) != (a.unseen is None) or (a.error_models and not a.merge):
        ap.error("--error-models and --unseen go together, with --merge")
    import torch

    torch.set_num_threads(1)
    from policies.predictors.crosssource import cv_folds
    from policies.predictors.sources import load_mix
    from policies.predictors.train import predict_records, train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_mix(a.data)
    fold = cv_folds(records, a.seed, a.k)
    fams = np.array([r["source"].split("/", 1)[0] for r in records])
    if a.merge:
        return merge(out, records, fams, a.k, a.error_models, a.unseen)
    settings = {k: v for k, v in (("steps", a.steps), ("layers", a.layers), ("rank", a.rank)) if v is not None}
    for j in (int(f) for f in a.folds.split(",")):
        path = out / (f"fold{j}.npz" if a.head == "lora" else f"{a.head}-fold{j}.npz")
        if path.exists():
            print(f"fold {j}: done already", flush=True)
            continue
        t0 = time.process_time()
        head = train("prompt", [r for r, f in zip(records, fold) if f != j], None, seed=a.seed, head=a.head,
                     clip_tokens=(64, 1024), progress=True, **(settings if a.head == "lora" else {}))
        idx = np.flatnonzero(fold == j)
        t, p, _ = predict_records(head, [records[i] for i in idx])
        np.savez(path, idx=idx, true=t, pred=p, train_cpu_s=head.meta.get("lora_train_cpu_s", np.nan),
                 cpu_s=time.process_time() - t0, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"fold {j}: {len(idx)} records, {time.process_time() - t0:.0f} s CPU", flush=True)
    return 0


def recentred(em: dict, mu_train: float, mu_test: float, measured: str) -> dict:
    """errors.py's convention: c against the measuring workload's mean ln length (crosssource's
    ``error_model_workload``)."""
    return {"b": round(em["b"], 4), "c": round(em["c"] + (1 - em["b"]) * (mu_train - mu_test), 4),
            "sigma": round(em["sigma"], 4), "n": em["n"], "measured": measured}


def merge(out: Path, records: list[dict], fams: np.ndarray, k: int, model_dir=None, unseen=None) -> int:
    from policies.predictors.crosssource import cv_rows, markdown
    from policies.predictors.head import length_metrics, shrinkage_fit
    from policies.predictors.train import load_model

    fitted, per_fold = {}, {}
    for head, prefix in (("lora", ""), ("ridge+boost", "ridge+boost-")):
        if not all((out / f"{prefix}fold{j}.npz").exists() for j in range(k)):
            print(f"{head}: not every fold is written; skipped")
            continue
        true, pred, cpu = np.full(len(records), np.nan), np.full(len(records), np.nan), []
        for j in range(k):
            with np.load(out / f"{prefix}fold{j}.npz") as z:
                true[z["idx"]], pred[z["idx"]] = z["true"], z["pred"]
                cpu.append(float(z["cpu_s"] if np.isnan(z["train_cpu_s"]) else z["train_cpu_s"]))
                for fam in sorted(set(fams)):
                    m = fams[z["idx"]] == fam
                    per_fold.setdefault((fam, j), {})[head] = length_metrics(z["true"][m], z["pred"][m])["kendall_tau"]
        if np.isnan(pred).any():
            raise SystemExit(f"{head}: {int(np.isnan(pred).sum())} records have no prediction")
        rows = cv_rows(records, true, pred, k)
        print(f"{head}: {'training' if head == 'lora' else 'fold (fit + predict)'} CPU per fold {', '.join(f'{c:.0f}' for c in cpu)} s")
        print(markdown(rows))
        (out / f"{prefix}cv.json").write_text(json.dumps(rows, indent=1) + "\n")
        ae = fams == "alpaca-eval"
        mu = float(np.log(np.maximum(true[ae], 1)).mean())  # fitted about the workload mean: c needs no re-centring
        fitted[head] = recentred(shrinkage_fit(true[ae], pred[ae], mu), mu, mu,
                                 f"{k}-fold CV by prompt over sharegpt,alpaca-eval, its {int(ae.sum())} AlpacaEval prompts")
        print(f"{head}: in-distribution error model (AlpacaEval, re-centred): {fitted[head]}")
    print("| source | fold | " + " | ".join(f"τ {h}" for h in ("lora", "ridge+boost")) + " |\n|---|---|---|---|")
    for (fam, j), taus in sorted(per_fold.items()):
        print(f"| {fam} | {j} | " + " | ".join(f"{taus[h]:.3f}" if h in taus else "-" for h in ("lora", "ridge+boost")) + " |")
    if model_dir:
        if "lora" not in fitted:
            raise SystemExit("--error-models: the lora folds are not all written")
        run = load_model(unseen)
        if run.meta.get("head") != "lora" or (run.meta.get("split") or {}).get("by") != "source":
            raise SystemExit(f"--unseen {unseen}: not a train-predictor --head lora --holdout-source run")
        from policies.predictors.text import load_records, token_counts

        held = load_records(Path(unseen) / "heldout.json")
        mu_test = float(np.log(np.maximum(token_counts([r["output"] for r in held]), 1)).mean())
        em = run.meta["heldout"]["error_model"]
        held_src = ",".join(sorted({t.split("/", 1)[0] for t in run.meta["split"]["test_sources"]}))
        models = {"in-distribution": fitted["lora"],
                  "unseen-source": recentred(em, float(run.meta["mu_log_tokens"]), mu_test,
                                             f"trained on {run.meta['source']} less {held_src}, scored on {len(held)} "
                                             f"prompts of {held_src} (--holdout-source)")}
        path = Path(model_dir) / "model.json"
        meta = json.loads(path.read_text())
        meta["error_models"] = models
        path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        print(f"error_models -> {path}: {json.dumps(models)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
