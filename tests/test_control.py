"""The length controller (QoS guard, when it acts, slo classes) and the fitted response model."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.contract import LengthController, RequestView
from policies.control import LengthResponse, default_length_response, make_controller, weak_model_response


def views(n: int, slo=None) -> list[RequestView]:
    return [RequestView(request_id=100 + i, arrival_s=0.0, prompt_tokens=5, max_output_tokens=4096,
                        slo_class=None if slo is None else slo[i]) for i in range(n)]


def test_controller_is_a_length_controller():
    assert isinstance(make_controller(), LengthController)
    with pytest.raises(ValueError, match="min_fraction"):
        make_controller(min_fraction=0.0)
    with pytest.raises(ValueError, match="unexpected keyword"):
        make_controller(bogus=1)


def test_aligns_long_outlier_to_the_group():
    c = make_controller()
    pred = [100, 110, 120, 130, 150]
    out = c.target_lengths(views(5), pred)
    assert out[:3] == [None] * 3
    # median 120 is the cap; the guard (0.6 x 150 = 90) does not bind; the new max 120 is 20% below 150
    assert [(d.request_id, d.target_tokens) for d in out[3:]] == [(103, 120), (104, 120)]
    # a looser guard binds: 0.9 x 150 = 135 becomes the batch max, so 130 is left alone
    out = make_controller(min_fraction=0.9).target_lengths(views(5), pred)
    assert out[:4] == [None] * 4 and out[4].target_tokens == 135


def test_guard_binds_for_far_outlier():
    c = make_controller(min_fraction=0.6)
    out = c.target_lengths(views(4), [100, 100, 100, 1000])
    assert out[3].target_tokens == 600 and out[:3] == [None] * 3


def test_no_directive_when_control_would_not_help():
    c = make_controller()
    assert c.target_lengths(views(4), [100, 101, 102, 103]) == [None] * 4  # gain < 5%
    assert c.target_lengths(views(1), [1000]) == [None]  # nothing to align with
    # the longest request is protected: cutting the others cannot shorten the batch
    out = c.target_lengths(views(3, ["normal", "normal", "strict"]), [100, 400, 500])
    assert out == [None] * 3


def test_slo_class_respected():
    c = make_controller()
    pred = [100, 100, 100, 800, 900, 1000]
    slo = [None, None, None, "quality", "strict", None]
    out = c.target_lengths(views(6, slo), pred)
    assert out[3] is None and out[4] is None  # protected classes never controlled
    assert out[5] is not None and out[5].target_tokens == 900  # aligned to the protected max
    assert make_controller(protected=()).target_lengths(views(6, slo), pred)[4] is not None


def test_instruction_contains_the_target():
    c = make_controller(tokens_per_word=1.3)
    d = c.target_lengths(views(3), [100, 100, 1000])[2]
    words = int(re.search(r"at most (\d+) words", d.instruction).group(1))
    assert words == round(d.target_tokens / 1.3)
    assert d.instruction == f"Answer in at most {words} words."


def test_rejects_bad_predictions():
    with pytest.raises(ValueError, match="request 101"):
        make_controller().target_lengths(views(2), [10, float("nan")])
    with pytest.raises(ValueError, match="2 requests but 1"):
        make_controller().target_lengths(views(2), [10])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1, 5000), min_size=1, max_size=40), st.floats(0.1, 1.0), st.floats(0, 1),
       st.lists(st.sampled_from([None, "strict", "quality", "batch"]), min_size=40, max_size=40))
def test_controller_invariants(pred, frac, q, slo):
    c = make_controller(min_fraction=frac, align_quantile=q)
    batch = views(len(pred), slo)
    out = c.target_lengths(batch, pred)
    assert len(out) == len(pred)
    directed = [(r, p, d) for r, p, d in zip(batch, pred, out) if d is not None]
    for r, p, d in directed:
        assert d.request_id == r.request_id
        assert d.target_tokens >= frac * p - 1e-9  # QoS guard
        assert d.target_tokens < p  # only ever shortens
        assert r.slo_class not in ("strict", "quality")
    if directed:
        new = [d.target_tokens if d else p for p, d in zip(pred, out)]
        assert max(new) <= (1 - c.min_gain) * max(pred) + 1  # only when it helps the batch (ceil: +1 token)


# -- response model ----------------------------------------------------------------------------

def test_untouched_when_target_not_below_natural():
    m = default_length_response()
    rng = np.random.default_rng(0)
    assert m.apply(200, 200, rng) == (200, 1.0)
    assert m.apply(200, 5000, rng) == (200, 1.0)


@settings(max_examples=100)
@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(0, 2**32 - 1))
def test_response_deterministic_and_bounded(natural, target, seed):
    m = default_length_response()
    a = m.apply(natural, target, np.random.default_rng(seed))
    assert a == m.apply(natural, target, np.random.default_rng(seed))
    achieved, qos = a
    assert 1 <= achieved <= natural
    assert 0 <= qos <= 1
    assert qos == pytest.approx(achieved / natural)


def test_response_statistics_match_fitted_parameters():
    m = default_length_response()
    rng = np.random.default_rng(42)
    n = 20000
    natural, target = 1000, 700  # a loose limit (ratio 0.7 >= loose_ratio): median on target
    res = np.array([m.apply(natural, target, rng) for _ in range(n)])
    ignored = res[:, 0] == natural
    # P(ignored) = p_ignore + P(compliant draw lands at or above natural) = p_ignore + (1-p) P(z >= ln(1/0.7)/sigma)
    from scipy.stats import norm
    p_cap = 1 - norm.cdf(math.log(natural / target) / m.sigma)
    assert ignored.mean() == pytest.approx(m.p_ignore + (1 - m.p_ignore) * p_cap, abs=0.012)
    comp = np.log(res[~ignored, 0] / target)
    # the compliant draws are a normal(mu, sigma) truncated at ln(natural/target): compare the median
    # and the lower half's spread, which the cap does not touch
    assert np.median(comp) == pytest.approx(norm.ppf(0.5 * norm.cdf(math.log(natural / target) / m.sigma)) * m.sigma,
                                            abs=0.02)
    lo = comp[comp < 0]
    assert np.sqrt(np.mean(lo**2)) == pytest.approx(m.sigma, rel=0.05)  # half-normal RMS = sigma


def test_tight_limits_undershoot():
    m = default_length_response()
    rng = np.random.default_rng(1)
    res = np.array([m.apply(72, 15, rng)[0] for _ in range(4000)])
    kept = res[res < 72]
    # Concise Thoughts: limit 15 words -> about 5 words; the model's median is 15 x exp(-1.2) = 4.5
    assert np.median(kept) == pytest.approx(15 * math.exp(m.mu_tight), abs=1.0)
    assert m.mu(0.5) == pytest.approx(m.mu_tight * (0.6 - 0.5) / (0.6 - 0.42))


def test_weak_model_mostly_ignores():
    rng = np.random.default_rng(3)
    res = [weak_model_response().apply(500, 100, rng)[1] for _ in range(4000)]
    assert np.mean(np.array(res) == 1.0) == pytest.approx(0.54, abs=0.03)
    with pytest.raises(ValueError):
        LengthResponse(p_ignore=1.5)
    with pytest.raises(ValueError, match="natural"):
        default_length_response().apply(0, 10, rng)
