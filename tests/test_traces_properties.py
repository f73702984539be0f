"""Property tests of trace transforms, the project CSV round trip and the synthetic generators."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces import (EmpiricalLengths, LognormalLengths, TraceError, arrival_times, load_trace, make_trace,
                    rescale_rate, slice_window, synthesize, write_trace_csv)


@st.composite
def traces(draw, min_size=1, max_size=60, text=False):
    n = draw(st.integers(min_size, max_size))
    gaps = draw(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=n, max_size=n))
    arrivals = np.cumsum(gaps)
    ints = st.integers(1, 200_000)
    prompt = draw(st.lists(ints, min_size=n, max_size=n))
    output = draw(st.lists(ints, min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n, unique=True))
    extra = {}
    if text:
        # Text as a user may have it: commas, quotes, newlines, empty strings, non-ASCII.
        s = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
        extra = {c: draw(st.lists(s, min_size=n, max_size=n)) for c in ("prompt", "response")}
        extra["slo_class"] = draw(st.lists(st.sampled_from(["interactive", "batch", ""]), min_size=n, max_size=n))
    return make_trace("t", arrivals, prompt, output, request_id=ids, **extra)


@settings(max_examples=60, deadline=None)
@given(traces(min_size=2), st.floats(1e-3, 1e3))
def test_rescale_rate_hits_rate_and_keeps_order(trace, rate):
    if trace.duration_s <= 0:
        with pytest.raises(TraceError, match="at least two distinct arrival times"):
            rescale_rate(trace, rate)
        return
    out = rescale_rate(trace, rate)
    assert out.mean_rate == pytest.approx(rate, rel=1e-9)
    assert np.all(np.diff(out.arrival_s) >= 0)
    np.testing.assert_array_equal(out.request_id, trace.request_id)
    np.testing.assert_array_equal(out.prompt_tokens, trace.prompt_tokens)
    # Gaps scale by one factor: the shape of the arrival process is unchanged.
    np.testing.assert_allclose(out.arrival_s, trace.arrival_s / trace.duration_s * ((len(trace) - 1) / rate),
                               rtol=1e-12, atol=1e-300)  # = arrival_s x mean_rate / rate without its overflow
    # on a subnormal span; atol: subnormal arrivals carry only a few significant bits
    assert "rescale_rate" in out.notes["transforms"][-1]


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_rescale_rate_rejects_bad_rate(rate):
    with pytest.raises(TraceError, match="rate must be a finite number > 0"):
        rescale_rate(load_trace("azure-code"), rate)


@settings(max_examples=80, deadline=None)
@given(traces(), st.floats(-10, 3e4), st.floats(0.001, 3e4), st.booleans())
def test_slice_window_keeps_exactly_the_rows_in_the_window(trace, start, length, rebase):
    end = start + length
    inside = (trace.arrival_s >= start) & (trace.arrival_s < end)
    if not inside.any():
        with pytest.raises(TraceError, match="no request"):
            slice_window(trace, start, end, rebase=rebase)
        return
    out = slice_window(trace, start, end, rebase=rebase)
    np.testing.assert_array_equal(out.request_id, trace.request_id[inside])
    np.testing.assert_array_equal(out.output_tokens, trace.output_tokens[inside])
    np.testing.assert_array_equal(out.arrival_s, trace.arrival_s[inside] - (start if rebase else 0.0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(traces(text=True))
def test_project_csv_round_trip_is_identity(tmp_path, trace):
    path = write_trace_csv(trace, tmp_path / "rt.csv")
    back = load_trace(path)
    for col in ("request_id", "arrival_s", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(back, col), getattr(trace, col))
    assert (back.prompt, back.response, back.slo_class) == (trace.prompt, trace.response, trace.slo_class)
    assert back.name == "rt" and back.notes["format"] == "project"


def test_project_csv_round_trip_of_real_trace_without_text(tmp_path):
    t = load_trace("azure-conv")
    back = load_trace(write_trace_csv(t, tmp_path / "azure.csv"))
    assert back.prompt is None
    for col in ("request_id", "arrival_s", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(back, col), getattr(t, col))


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.1, 100), st.sampled_from([None, 0.25, 0.5, 2.0, 4.0]))
def test_generators_hit_rate_and_cv(seed, rate, cv):
    n = 200_000
    process = "poisson" if cv is None else "gamma"
    arr = arrival_times(n, rate, process, 1.0 if cv is None else cv, seed)
    gaps = np.diff(arr)
    target_cv = 1.0 if cv is None else cv
    assert arr[0] == 0.0 and np.all(gaps >= 0)
    # Relative standard error of the mean gap is cv/sqrt(n) (<1% here); allow 5 standard errors.
    assert (n - 1) / arr[-1] == pytest.approx(rate, rel=5 * target_cv / np.sqrt(n))
    assert gaps.std() / gaps.mean() == pytest.approx(target_cv, rel=0.05)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(["poisson", "gamma"]), st.booleans())
def test_same_seed_same_trace(seed, process, lognormal):
    base = load_trace("azure-code")
    lengths = LognormalLengths.fit(base) if lognormal else base
    kw = dict(process=process, cv=1.0 if process == "poisson" else 2.0)
    a = synthesize(500, 3.0, lengths, seed=seed, **kw)
    b = synthesize(500, 3.0, lengths, seed=seed, **kw)
    c = synthesize(500, 3.0, lengths, seed=seed + 1, **kw)
    for col in ("arrival_s", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert a.notes == b.notes and f"seed {seed}" in a.notes["arrivals"]


def test_empirical_lengths_resample_real_pairs_jointly():
    base = load_trace("azure-code")
    t = synthesize(5000, 2.0, EmpiricalLengths.from_trace(base), seed=7)
    real_pairs = set(zip(base.prompt_tokens.tolist(), base.output_tokens.tolist()))
    assert set(zip(t.prompt_tokens.tolist(), t.output_tokens.tolist())) <= real_pairs
    assert np.median(t.prompt_tokens) == pytest.approx(np.median(base.prompt_tokens), rel=0.1)


def test_lognormal_fit_recovers_parameters():
    truth = LognormalLengths(6.0, 0.8, 4.5, 1.1, rho=0.4)
    p, o = truth.sample(100_000, np.random.default_rng(1))
    fit = LognormalLengths.fit(make_trace("x", np.arange(len(p), dtype=float), p, o))
    assert fit.mu_prompt == pytest.approx(6.0, abs=0.02) and fit.sigma_prompt == pytest.approx(0.8, abs=0.02)
    assert fit.mu_output == pytest.approx(4.5, abs=0.02) and fit.sigma_output == pytest.approx(1.1, abs=0.02)
    assert fit.rho == pytest.approx(0.4, abs=0.02)
    assert fit.max_prompt == p.max()


def test_generator_argument_errors():
    with pytest.raises(TraceError, match="Poisson process has cv = 1"):
        arrival_times(10, 1.0, "poisson", cv=2.0, seed=0)
    with pytest.raises(TraceError, match="explicit seed"):
        arrival_times(10, 1.0, "poisson")
    with pytest.raises(TraceError, match="unknown arrival process 'hawkes'"):
        arrival_times(10, 1.0, "hawkes", seed=0)
    with pytest.raises(TraceError, match="rate must be"):
        arrival_times(10, 0.0, seed=0)


def test_rescale_rate_of_a_subnormal_span_is_finite():
    """Found by hypothesis: two arrivals 2.2e-313 s apart made the factor inf and 0 x inf a NaN arrival."""
    tr = make_trace("t", [0.0, 2.2250738585e-313], [1, 1], [1, 1])
    out = rescale_rate(tr, 1.0)
    assert out.arrival_s.tolist() == [0.0, 1.0] and out.mean_rate == 1.0
