"""Experiment (measured, not shipped): two more inputs for the progressive ``cues`` head.

    OMP_NUM_THREADS=1 python benchmarks/progressive_extras.py --split in --cache C [--windows 0,8,16,32]
        [--outputs DIR --extra none,family,all]

Both keep the shipped head (survival prior + gradient-boosted trees over the answer-structure cues,
``policies/predictors/progress_head.py``) and its training recipe (8 checkpoints an answer at
stratified fractions, seed 0, trees chosen on 15% of the training prompts), and score MAE of the
predicted total after 0 / 25 / 50 / 75% of each held-out answer, as ``evaluate-predictor`` does:

* ``--windows K[,K...]``: MiniLM of the answer's last 64 tokens at each checkpoint, its top K
  principal components (fitted on the training checkpoints) added to the trees' features (0 = the
  shipped head, recomputed here; it must equal ``train-predictor``'s figures).
* ``--outputs DIR --extra none,family,all``: other models' real answers to the *training* prompts
  (AlpacaEval ``model_outputs/<model>.json.gz``, e.g. ``../shared/traces/alpaca-eval/model_outputs``)
  as extra checkpoint rows: ``family`` = Llama-2-13b/70b-chat, Vicuna-7B, Tulu-2-7B; ``all`` = those
  and seven more. The prompt head (stage 0) and its out-of-fold predictions stay Llama-2-7b-chat's;
  no test prompt's answers are ever trained on.

Splits: ``in`` = 605 / 200 AlpacaEval prompts (``--holdout 200 --seed 0``); a sub-set name
(``koala``, ``selfinstruct``, ...) = trained on ``sharegpt:6000`` and the other four AlpacaEval
sub-sets, tested on that one. Needs the ``runner`` extra (scikit-learn, torch for MiniLM) and, for a
sub-set split, the ``data`` extra.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
FAMILY = ("llama-2-13b-chat-hf", "llama-2-70b-chat-hf", "vicuna-7b-v1.5", "tulu-2-dpo-7b")
OTHERS = ("Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1", "alpaca-7b", "claude-2.1", "gpt-3.5-turbo-1106",
          "gpt4_0613", "gpt4_1106_preview")
FRACTIONS = (0.0, 0.25, 0.5, 0.75)


def other_answers(outputs: Path, models, prompts: set[str]) -> list[dict]:
    out = []
    for m in models:
        path = outputs / f"{m}.json.gz"
        with gzip.open(path, "rt") as f:
            for r in json.load(f):
                if r["instruction"] in prompts and r["output"].strip():
                    out.append({"instruction": r["instruction"], "output": r["output"], "source": f"alpaca-eval/{m}"})
    return out


def mae_by_progress(predict, te) -> list[float]:
    return [round(float(np.abs(p - t).mean()), 1) for t, p in (predict(f) for f in FRACTIONS)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="in")
    ap.add_argument("--cache", required=True, help="embedding cache file (.npz), created if missing")
    ap.add_argument("--windows", default="", help="principal components of MiniLM(answer tail) to try, e.g. 0,8,16,32")
    ap.add_argument("--outputs", default=None, help="folder of AlpacaEval model_outputs/*.json.gz")
    ap.add_argument("--extra", default="", help="none,family,all (needs --outputs)")
    a = ap.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingRegressor

    from policies.predictors import progress_head as ph
    from policies.predictors.answer_cues import answer_features_many
    from policies.predictors.sources import load_mix, split_by_source
    from policies.predictors.text import prefix_texts, shared_encoder, split_by_prompt
    from policies.predictors.train import _oof_stage0, head_features, prompt_features, train

    enc = shared_encoder(a.cache)
    if a.split == "in":
        tr, te = split_by_prompt(load_mix("alpaca-eval"), 200, 0)
    else:
        tr, te = split_by_source(load_mix("sharegpt:6000,alpaca-eval"), {f"alpaca-eval/{a.split}"})
    t0 = time.process_time()
    base = train("progressive", tr, None, seed=0, head="cues", encoder=enc)
    enc.save()
    oof = _oof_stage0(enc, tr, 0)
    print(f"split {a.split}: {len(tr)} training / {len(te)} test answers; shipped recipe "
          f"{mae_by_progress(lambda f: ph.predict_after(base, te, f, encoder=enc)[:2], te)} "
          f"(MAE at 0/25/50/75%; {time.process_time() - t0:.0f} s CPU)", flush=True)

    for extra in [e for e in a.extra.split(",") if e]:
        if not a.outputs:
            ap.error("--extra needs --outputs")
        train_prompts = {r["instruction"] for r in tr if r.get("source", "").startswith("alpaca-eval")}
        test_prompts = {r["instruction"] for r in te}
        models = () if extra == "none" else FAMILY if extra == "family" else FAMILY + OTHERS
        rows = other_answers(Path(a.outputs), models, train_prompts - test_prompts)
        t0 = time.process_time()
        m = ph.fit_cue_head(tr + rows, base.stage0, oof, seed=0)
        print(f"  + other models' answers ({extra}, {len(rows)} answers): "
              f"{mae_by_progress(lambda f: ph.predict_after(m, te, f, encoder=enc)[:2], te)}, "
              f"{m.meta['n_trees']} trees, {time.process_time() - t0:.0f} s CPU", flush=True)

    ks = [int(k) for k in a.windows.split(",") if k]
    if ks:
        def tails(records, rows):  # the answer's last 64 tokens at each checkpoint (as MiniLMSource windows it)
            return [prefix_texts(records[i]["output"], [g], 64)[0] or "." for i, g, _, _ in rows]

        def features(records, rows, m0):
            prompts = [records[i]["instruction"] for i, *_ in rows]
            g = np.array([r[1] for r in rows])
            cues = answer_features_many(prompts, [r[3] for r in rows], g)
            x, prior = ph.head_inputs(m0, g, cues, base.sigma, base.bias)
            return x, prior, g, np.array([r[2] for r in rows]), prompts

        rows = ph.checkpoint_rows(tr, seed=0)
        x, prior, g, t, prompts = features(tr, rows, np.array([oof[tr[i]["instruction"]] for i, *_ in rows]))
        y = np.log(np.maximum(t - g, 1)) - prior
        emb = enc.embed(tails(tr, rows))
        mu = emb.mean(0)
        vt = np.linalg.svd(emb - mu, full_matrices=False)[2]
        uniq = sorted(set(prompts))
        val_p = set(np.array(uniq)[np.random.default_rng(0).permutation(len(uniq))[:int(0.15 * len(uniq))]])
        val = np.array([p in val_p for p in prompts])
        m0_te = dict(zip([r["instruction"] for r in te], base.stage0.predict_log(
            prompt_features(enc, [r["instruction"] for r in te], False, head_features(base.stage0)))))
        tests = {}
        for f in FRACTIONS[1:]:
            rr = ph.checkpoint_rows(te, (f,))
            tests[f] = features(te, rr, np.array([m0_te[te[i]["instruction"]] for i, *_ in rr]))[:4] + (enc.embed(tails(te, rr)),)
        enc.save()
        for k in ks:
            xk = np.hstack([x, (emb - mu) @ vt[:k].T])
            m = HistGradientBoostingRegressor(random_state=0, **ph.TREE_PARAMS).fit(xk[~val], y[~val])
            errs = [float(np.abs(p - y[val]).mean()) for p in m.staged_predict(xk[val])]
            best = int(np.argmin(errs)) + 1
            maes = []
            for f, (xt, pt, gt, tt, et) in tests.items():
                pred = list(m.staged_predict(np.hstack([xt, (et - mu) @ vt[:k].T])))[best - 1]
                maes.append(round(float(np.abs(gt + np.maximum(np.exp(pt + pred), 1) - tt).mean()), 1))
            print(f"  + MiniLM(answer tail), {k} components: MAE at 25/50/75% {maes}; validation |ln error| "
                  f"{errs[best - 1]:.4f}, {best} trees", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
