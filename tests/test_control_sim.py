"""Length control end to end in the simulator: directives, the response model and the QoS column."""
from __future__ import annotations

import numpy as np
import pytest

from policies.control import default_length_response, make_controller
from policies.predictors import make_predictor
from policies.registry import POLICIES, make_policy
from simulator.engine import SimConfig, simulate
from traces.schema import make_trace

pytestmark = pytest.mark.skipif("length-grouped" not in POLICIES, reason="length-grouped policy not registered")


def run(seed: int, control: bool):
    rng = np.random.default_rng(5)
    n = 120
    out = np.exp(rng.normal(5.0, 0.9, n)).astype(int) + 1  # a wide spread: batches worth aligning
    trace = make_trace("t", np.sort(rng.uniform(0, 30, n)), rng.integers(20, 200, n), out,
                       slo_class=["strict" if i % 5 == 0 else "batch" for i in range(n)])
    policy = make_policy("length-grouped", predictor=make_predictor("oracle"), batch_size=8,
                         controller=make_controller() if control else None)
    res = simulate(trace, policy, SimConfig(seed=seed), length_response=default_length_response() if control else None)
    return trace, res.requests


def test_qos_recorded_from_the_response_model():
    trace, req = run(0, control=True)
    qos = req["qos"].to_numpy()
    target = req["target_tokens"].to_numpy()
    natural = req["trace_output_tokens"].to_numpy()
    got = req["output_tokens"].to_numpy()
    controlled = target > 0
    assert controlled.any()
    assert (qos[~controlled] == 1.0).all()  # untouched requests keep everything
    assert ((qos >= 0) & (qos <= 1)).all()
    np.testing.assert_allclose(qos[controlled], got[controlled] / natural[controlled])
    # the guard: an oracle predicts the natural length, so targets are never below 0.6 of it
    assert (target[controlled] >= 0.6 * natural[controlled] - 1).all()
    strict = np.array([s == "strict" for s in trace.slo_class])
    assert not (controlled & strict).any()


def test_control_is_deterministic_and_off_means_untouched():
    a = run(1, control=True)[1]
    b = run(1, control=True)[1]
    assert a["output_tokens"].to_list() == b["output_tokens"].to_list()
    off = run(1, control=False)[1]
    assert (off["qos"].to_numpy() == 1.0).all() and (off["target_tokens"].to_numpy() == 0).all()
