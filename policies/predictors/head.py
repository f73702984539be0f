"""The regression head on top of MiniLM features, its metrics and its on-disk form.

A ridge regression on log output tokens (closed form, numpy only), its penalty chosen by
k-fold cross-validation on the training rows. Predicting exp(log-prediction) gives the
conditional *median* length, which is what minimises absolute error in tokens.
Weights are written to ``MODEL_DIR/head.npz`` and everything else (kind, features,
penalty, training split, measured held-out errors) to ``MODEL_DIR/model.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Log-spaced length buckets (tokens): <64, 64-128, 128-256, 256-512, >=512.
BUCKET_EDGES = (64, 128, 256, 512)
ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 19))


@dataclass
class RidgeHead:
    """y = ((x - x_mean) / x_std) @ w + b, with y = ln(tokens) (or ln(remaining tokens))."""

    w: np.ndarray
    b: float
    x_mean: np.ndarray
    x_std: np.ndarray
    alpha: float
    meta: dict = field(default_factory=dict)
    # A progressive model's prediction before the first token: a prompt head, saved in prompt/.
    stage0: "RidgeHead | None" = None
    # Fixed feature transforms fitted with the head (e.g. a PCA basis), saved in head.npz.
    arrays: dict = field(default_factory=dict)

    def predict_log(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != len(self.w):
            raise ValueError(f"predictor head expects {len(self.w)} features, got {x.shape[1]}")
        lin = ((x - self.x_mean) / self.x_std) @ self.w + self.b
        if "tree_roots" in self.arrays:  # a ridge+boost prompt head: the mean of ridge and trees
            from policies.predictors.boost import predict_trees

            return 0.5 * lin + 0.5 * predict_trees(self.arrays, x)
        return lin

    def save(self, model_dir: str | Path) -> None:
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "head.npz", w=self.w, b=np.array(self.b), x_mean=self.x_mean, x_std=self.x_std,
                 **{f"extra_{k}": v for k, v in self.arrays.items()})
        meta = dict(self.meta, alpha=self.alpha, n_features=len(self.w))
        (d / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if self.stage0 is not None:
            self.stage0.save(d / "prompt")

    @staticmethod
    def load(model_dir: str | Path) -> "RidgeHead":
        d = Path(model_dir)
        for name in ("head.npz", "model.json"):
            if not (d / name).exists():
                raise FileNotFoundError(f"predictor model {d}: missing {name} (write one with `syncintellects "
                                        f"train-predictor --out {d}`)")
        meta = json.loads((d / "model.json").read_text())
        with np.load(d / "head.npz") as z:
            head = RidgeHead(w=z["w"], b=float(z["b"]), x_mean=z["x_mean"], x_std=z["x_std"],
                             alpha=float(meta["alpha"]), meta=meta,
                             arrays={k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")})
        if (d / "prompt" / "head.npz").exists():
            head.stage0 = RidgeHead.load(d / "prompt")
        return head


def _ridge_path(xs: np.ndarray, yc: np.ndarray, alphas) -> list[np.ndarray]:
    """Ridge weights for each penalty from one SVD of the design matrix."""
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    uty = u.T @ yc
    return [vt.T @ ((s / (s**2 + a)) * uty) for a in alphas]


def fit_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, folds: int = 5,
              alphas: tuple[float, ...] = ALPHAS, weights: np.ndarray | None = None) -> RidgeHead:
    """Ridge on standardised features; the penalty minimising k-fold (by group) absolute error of y.

    ``weights`` (per row, optional) weight the squared error of each row and the CV error, e.g.
    so that each training source counts equally however many rows it has.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    wts = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(x) < 2 * folds:
        folds = max(2, len(x) // 2)
    uniq, gi = np.unique(groups, return_inverse=True)
    fold_of_group = np.random.default_rng(seed).permutation(len(uniq)) % folds
    fold = fold_of_group[gi]
    err = np.zeros(len(alphas))

    def solve(rows, alphas):
        mu, sd = x[rows].mean(0), x[rows].std(0) + 1e-8
        ww = wts[rows] / wts[rows].mean()
        ym = float(np.average(y[rows], weights=ww))
        xs = (x[rows] - mu) / sd
        xm = np.average(xs, axis=0, weights=ww)
        r = np.sqrt(ww)[:, None]
        paths = _ridge_path((xs - xm) * r, (y[rows] - ym) * r[:, 0], alphas)
        return mu, sd, [(w, ym - xm @ w) for w in paths]

    for k in range(folds):
        tr, te = fold != k, fold == k
        if not te.any() or tr.sum() < 2:
            continue
        mu, sd, paths = solve(tr, alphas)
        for j, (w, b) in enumerate(paths):
            err[j] += (wts[te] * np.abs(((x[te] - mu) / sd) @ w + b - y[te])).sum()
    alpha = float(alphas[int(np.argmin(err))])
    mu, sd, [(w, b)] = solve(np.ones(len(y), bool), [alpha])
    return RidgeHead(w=w, b=float(b), x_mean=mu, x_std=sd, alpha=alpha)


def bucket_of(tokens: np.ndarray, edges=BUCKET_EDGES) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), np.asarray(tokens), side="right")


def length_metrics(true: np.ndarray, pred: np.ndarray, edges=BUCKET_EDGES) -> dict:
    """MAE in tokens, Kendall's tau, Spearman's rho, bucket accuracy and log-error spread."""
    from scipy.stats import kendalltau, spearmanr

    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if len(true) != len(pred) or len(true) < 2:
        raise ValueError(f"need >= 2 paired lengths, got {len(true)} true and {len(pred)} predicted")
    ae = np.abs(pred - true)
    lerr = np.log(pred) - np.log(np.maximum(true, 1))
    return {
        "n": int(len(true)),
        "mae_tokens": float(ae.mean()),
        "median_ae_tokens": float(np.median(ae)),
        "kendall_tau": float(kendalltau(true, pred).statistic),
        "spearman_rho": float(spearmanr(true, pred).statistic),
        "bucket_accuracy": float((bucket_of(true, edges) == bucket_of(pred, edges)).mean()),
        "bucket_edges_tokens": list(edges),
        "log_error_mean": float(lerr.mean()),
        "log_error_sd": float(lerr.std()),
        "mean_true_tokens": float(true.mean()),
        "mean_pred_tokens": float(pred.mean()),
        "mae_predict_mean_tokens": float(np.abs(true.mean() - true).mean()),
    }


def shrinkage_fit(true: np.ndarray, pred: np.ndarray, mu: float) -> dict:
    """Fit ln(pred) - mu = c + b (ln(true) - mu) + N(0, sigma): the error model of a learned predictor.

    A regression predictor shrinks towards the training mean ``mu`` (b < 1) and leaves a
    residual spread sigma; both come from held-out predictions.
    """
    lt = np.log(np.maximum(np.asarray(true, float), 1)) - mu
    lp = np.log(np.asarray(pred, float)) - mu
    b, c = np.polyfit(lt, lp, 1)
    resid = lp - (c + b * lt)
    return {"b": float(b), "c": float(c), "sigma": float(resid.std(ddof=2)), "n": int(len(lt))}
