"""A gradient-boosted tree head for the prompt predictor, stored as plain numpy arrays.

Trained with scikit-learn's ``HistGradientBoostingRegressor`` (the ``runner`` extra) on
ln(tokens), each row weighted as the ridge head weights it (source families equally), with
early stopping on a seeded 15% of the rows. The fitted trees are flattened into arrays
(``tree_*``, saved in ``head.npz`` beside the ridge weights) and evaluated here with numpy,
so loading and predicting need neither scikit-learn nor pickle.

The ``ridge+boost`` prompt head predicts the mean of the ridge head's and the trees'
ln-length predictions (docs/predictors.md has the measurements that chose it).
"""
from __future__ import annotations

import numpy as np

BOOST_PARAMS = {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15, "min_samples_leaf": 40,
                "l2_regularization": 1.0, "early_stopping": True, "validation_fraction": 0.15}


def fit_trees(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, seed: int, **params) -> dict:
    """Fit boosted regression trees on (x, y); return them as arrays (see :func:`predict_trees`)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    m = HistGradientBoostingRegressor(random_state=seed, **{**BOOST_PARAMS, **params})
    m.fit(np.asarray(x, np.float64), np.asarray(y, np.float64), sample_weight=weights)
    trees = [p[0].nodes for p in m._predictors]
    offsets = np.cumsum([0] + [len(t) for t in trees])
    nodes = np.concatenate(trees)
    shift = np.repeat(offsets[:-1], [len(t) for t in trees])
    return {
        "tree_feature": nodes["feature_idx"].astype(np.int32),
        "tree_threshold": nodes["num_threshold"].astype(np.float64),
        "tree_left": (nodes["left"].astype(np.int64) + shift).astype(np.int32),
        "tree_right": (nodes["right"].astype(np.int64) + shift).astype(np.int32),
        "tree_leaf": nodes["is_leaf"].astype(bool),
        "tree_value": nodes["value"].astype(np.float64),
        "tree_roots": offsets[:-1].astype(np.int32),
        "tree_baseline": np.array(float(np.ravel(m._baseline_prediction)[0])),
    }


def predict_trees(arrays: dict, x: np.ndarray) -> np.ndarray:
    """Sum of the trees' leaf values (plus the baseline) for each row of x."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    feat, thr = arrays["tree_feature"], arrays["tree_threshold"]
    left, right, leaf, value = arrays["tree_left"], arrays["tree_right"], arrays["tree_leaf"], arrays["tree_value"]
    rows = np.arange(len(x))
    out = np.full(len(x), float(arrays["tree_baseline"]))
    for root in arrays["tree_roots"]:
        node = np.full(len(x), root, dtype=np.int64)
        while not leaf[node].all():
            inner = ~leaf[node]
            go_left = x[rows[inner], feat[node[inner]]] <= thr[node[inner]]
            node[inner] = np.where(go_left, left[node[inner]], right[node[inner]])
        out += value[node]
    return out


def has_trees(arrays: dict) -> bool:
    return "tree_roots" in arrays
