"""The progressive ``cues`` head: a calibrated survival prior corrected by trees over the answer's structure.

After g generated tokens of a request whose prompt head predicts ln-length m0:

1. **Prior** (closed form, :func:`prior_remaining_log`): if the total T is lognormal around
   the prompt head's prediction, ln T ~ N(m0 + bias, sigma^2), and T > g, the median of T is
   exp(m0 + bias + sigma Phi^-1((1 + Phi(z)) / 2)) with z = (ln g - m0 - bias) / sigma; the prior's
   remaining length is that minus g. ``bias`` and ``sigma`` are *measured*: the mean and SD of
   the prompt head's out-of-fold ln errors on the training answers.
2. **Correction**: gradient-boosted trees (L1 loss in ln space, so a median) on
   [m0, ln(1 + g) - m0, prior, the answer-structure cues of :mod:`.answer_cues`] predict
   ln(remaining) - prior. They are fitted on checkpoints at stratified random fractions of each
   training answer (8 an answer, every answer weighted equally) and the number of trees is
   chosen on a seeded 15% of the training *prompts* held out (all their checkpoints).

Prediction needs numpy and scipy only (the trees are stored as arrays, :mod:`.boost`); the
text so far is all it reads, so it runs wherever the text runs (simulator with a text trace,
the runner with the decoded answer). Training needs scikit-learn (the ``runner`` extra).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHECKPOINTS_PER_ANSWER = 8
TREE_PARAMS = {"loss": "absolute_error", "learning_rate": 0.05, "max_iter": 600, "max_leaf_nodes": 31,
               "min_samples_leaf": 40, "l2_regularization": 1.0, "early_stopping": False}


def prior_remaining_log(m0, generated, sigma: float, bias: float = 0.0) -> np.ndarray:
    """ln of the median remaining length given T > g, for ln T ~ N(m0 + bias, sigma^2) (see the module doc)."""
    from scipy.special import ndtr, ndtri

    m = np.asarray(m0, np.float64) + bias
    g = np.maximum(np.asarray(generated, np.float64), 0.0)
    z = np.where(g > 0, (np.log(np.maximum(g, 1e-9)) - m) / sigma, -np.inf)
    q = np.minimum((1.0 + ndtr(z)) / 2.0, 1 - 1e-12)
    return np.log(np.maximum(np.exp(m + sigma * ndtri(q)) - g, 1.0))


def head_inputs(m0, generated, cues: np.ndarray, sigma: float, bias: float) -> tuple[np.ndarray, np.ndarray]:
    """(tree features, prior) for rows of (m0, g, answer cues)."""
    m0 = np.asarray(m0, np.float64)
    prior = prior_remaining_log(m0, generated, sigma, bias)
    x = np.column_stack([m0, np.log1p(np.asarray(generated, np.float64)) - m0, prior, np.atleast_2d(cues)])
    return x, prior


@dataclass
class CueHead:
    """A progressive model directory with ``head = cues``: ``prompt/`` (stage 0) + the trees in ``head.npz``."""

    arrays: dict
    sigma: float
    bias: float
    stage0: object
    meta: dict = field(default_factory=dict)

    def predict_remaining_log(self, m0, generated, cues: np.ndarray) -> np.ndarray:
        from policies.predictors.boost import predict_trees

        x, prior = head_inputs(m0, generated, cues, self.sigma, self.bias)
        return prior + (predict_trees(self.arrays, x) if self.arrays else 0.0)

    def save(self, d) -> None:
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / "head.npz", **self.arrays)
        meta = dict(self.meta, head="cues", prior_sigma=self.sigma, prior_bias=self.bias)
        (d / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.stage0.save(d / "prompt")

    @staticmethod
    def load(d) -> "CueHead":
        from policies.predictors.head import RidgeHead

        d = Path(d)
        meta = json.loads((d / "model.json").read_text())
        with np.load(d / "head.npz") as z:
            arrays = {k: z[k] for k in z.files}
        return CueHead(arrays, float(meta["prior_sigma"]), float(meta["prior_bias"]), RidgeHead.load(d / "prompt"), meta)


def checkpoint_rows(records: list[dict], fractions=None, seed: int = 0):
    """(record index, g, T, text of the first g tokens) per checkpoint: ``fractions`` of each answer, or
    :data:`CHECKPOINTS_PER_ANSWER` stratified random ones (one in each eighth; seeded)."""
    from policies.predictors.text import tokenizer

    rng = np.random.default_rng(seed)
    encs = tokenizer().encode_batch([r["output"] for r in records], add_special_tokens=False)
    out = []
    for i, (r, e) in enumerate(zip(records, encs)):
        off, total = e.offsets, max(len(e.offsets), 1)
        k = CHECKPOINTS_PER_ANSWER
        fs = fractions if fractions is not None else (np.arange(k) + rng.random(k)) / k
        for f in fs:
            g = int(np.floor(f * total))
            out.append((i, g, total, r["output"][:off[g - 1][1]] if g > 0 and off else ""))
    return out


def _tree_arrays(m, n_iter: int) -> dict:
    """The first ``n_iter`` trees of a fitted HistGradientBoostingRegressor, as :mod:`.boost` arrays."""
    trees = [p[0].nodes for p in m._predictors[:n_iter]]
    offsets = np.cumsum([0] + [len(t) for t in trees])
    nodes = np.concatenate(trees)
    shift = np.repeat(offsets[:-1], [len(t) for t in trees])
    return {"tree_feature": nodes["feature_idx"].astype(np.int32),
            "tree_threshold": nodes["num_threshold"].astype(np.float64),
            "tree_left": (nodes["left"].astype(np.int64) + shift).astype(np.int32),
            "tree_right": (nodes["right"].astype(np.int64) + shift).astype(np.int32),
            "tree_leaf": nodes["is_leaf"].astype(bool), "tree_value": nodes["value"].astype(np.float64),
            "tree_roots": offsets[:-1].astype(np.int32),
            "tree_baseline": np.array(float(np.ravel(m._baseline_prediction)[0]))}


def fit_cue_head(records: list[dict], stage0, m0_of: dict[str, float], *, seed: int, val_share: float = 0.15,
                 log=None, **params) -> CueHead:
    """Fit the trees on checkpoints of ``records``' real answers; ``m0_of``: out-of-fold prompt-head ln predictions."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from policies.predictors.answer_cues import NAMES as CUE_NAMES
    from policies.predictors.answer_cues import answer_features_many

    t0 = time.process_time()
    prompts = [r["instruction"] for r in records]
    totals = np.maximum(np.array([len(e.offsets) for e in _encode(records)]), 1)
    res = np.log(totals) - np.array([m0_of[p] for p in prompts])
    bias, sigma = float(np.median(res)), float(1.4826 * np.median(np.abs(res - np.median(res))))
    rows = checkpoint_rows(records, seed=seed)
    rec = np.array([i for i, *_ in rows])
    g, t = np.array([x[1] for x in rows]), np.array([x[2] for x in rows])
    cues = answer_features_many([prompts[i] for i in rec], [x[3] for x in rows], g)
    x, prior = head_inputs(np.array([m0_of[prompts[i]] for i in rec]), g, cues, sigma, bias)
    y = np.log(np.maximum(t - g, 1)) - prior
    uniq = sorted(set(prompts))
    val_p = set(np.array(uniq)[np.random.default_rng(seed).permutation(len(uniq))[:int(val_share * len(uniq))]])
    val = np.array([prompts[i] in val_p for i in rec])
    m = HistGradientBoostingRegressor(random_state=seed, **{**TREE_PARAMS, **params}).fit(x[~val], y[~val])
    errs = [float(np.abs(p - y[val]).mean()) for p in m.staged_predict(x[val])] if val.any() else [0.0]
    best = int(np.argmin(errs)) + 1 if val.any() else m.n_iter_
    if log:
        log(f"cue trees: {len(y)} checkpoints of {len(records)} answers; validation mean |ln error| "
            f"prior {np.abs(y[val]).mean():.4f} -> {errs[best - 1]:.4f} with {best} trees")
    meta = {"head": "cues", "train_cpu_s": round(time.process_time() - t0, 1), "n_checkpoints": int(len(y)), "n_trees": best,
            "val_abs_ln_error": round(errs[best - 1], 4), "val_abs_ln_error_prior": round(float(np.abs(y[val]).mean()), 4),
            "cues": list(CUE_NAMES)}
    return CueHead(_tree_arrays(m, best), sigma, bias, stage0, meta)


def _encode(records):
    from policies.predictors.text import tokenizer

    return tokenizer().encode_batch([r["output"] for r in records], add_special_tokens=False)


def predict_after(model: CueHead, records: list[dict], fraction: float, *, encoder=None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true totals, predicted totals, generated) after ``fraction`` of each real answer."""
    from policies.predictors.answer_cues import answer_features_many
    from policies.predictors.text import shared_encoder
    from policies.predictors.train import head_features, prompt_features

    enc = encoder or shared_encoder()
    rows = checkpoint_rows(records, (fraction,))
    prompts = [records[i]["instruction"] for i, *_ in rows]
    m0 = model.stage0.predict_log(prompt_features(enc, prompts, progress, head_features(model.stage0)))
    g, t = np.array([x[1] for x in rows]), np.array([x[2] for x in rows])
    if fraction == 0.0:
        return t, np.maximum(np.exp(m0), 1.0), g
    rem = np.exp(model.predict_remaining_log(m0, g, answer_features_many(prompts, [x[3] for x in rows], g)))
    return t, g + np.maximum(rem, 1.0), g
