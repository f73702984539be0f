"""Length-aware schedulers end to end in the simulator: closed forms, equivalences, invariants."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.contract import LengthDirective
from policies.registry import make_policy
from simulator.engine import SimConfig, simulate
from traces.schema import make_trace

NEW_POLICIES = ["length-grouped", "sjf", "srpt", "syncintellects", "syncintellects-continuous"]


class TruthPredictor:
    """Oracle (``scale`` = 1) or a fixed relative error, from the truth the engine binds."""

    name = "truth"

    def __init__(self, scale=1.0, refresh_every=None, seed=None):
        self.scale, self.refresh_every = scale, refresh_every
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.truth = None

    def bind_truth(self, fn):
        self.truth = fn

    def predict(self, request, generated=0, embedding=None):
        t = self.truth(request.request_id)
        s = self.scale if self.rng is None else float(self.rng.lognormal(0.0, 0.6))
        if generated and self.refresh_every:  # progressive: exact once the request has started
            s = 1.0
        return float(max(generated + 1, round(t * s)))


class ThreeQuarterController:
    name = "three-quarters"

    def target_lengths(self, batch, predicted):
        return [LengthDirective(v.request_id, max(1, int(0.75 * p)), "Be brief.") for v, p in zip(batch, predicted)]


class MinResponse:
    """Toy length response: the answer stops at the target; quality is the kept fraction."""

    def apply(self, natural, target, rng):
        achieved = min(natural, target)
        return achieved, achieved / natural


class Recording:
    def __init__(self, inner):
        self.inner, self.name, self.plans = inner, inner.name, []
        self.predictor = inner.predictor
        self.initial_predictions = inner.initial_predictions

    def plan(self, view):
        p = self.inner.plan(view)
        self.plans.append((view.now_s, p))
        return p

    def observe(self, result):
        self.inner.observe(result)


def _check_every_request_done_once(result, n):
    # the engine itself turns away prompts longer than the model context; policies reject nothing
    everyone = result.requests
    r = everyone.filter(~everyone["rejected"])
    assert everyone.filter(everyone["rejected"])["reject_reason"].str.contains("model context").all()
    assert result.summary["num_finished"] == r.height >= n - 2
    assert (r["generated_tokens"] == r["output_tokens"]).all()
    assert r["finish_s"].is_not_nan().all() and (r["finish_s"] >= r["last_token_s"]).all()


def test_sjf_with_an_oracle_gives_the_spt_mean_completion_time():
    # one request at a time, all at t=0, equal prompts: service time grows with output length,
    # so the optimal order is shortest first and completion times are prefix sums of service times
    outputs = [300, 17, 120, 64, 5, 210]
    cfg = SimConfig(kv_blocks=2000)
    service = []
    for o in outputs:
        alone = simulate(make_trace("one", [0.0], [100], [o]), make_policy("continuous", max_num_seqs=1), cfg)
        service.append(float(alone.requests["e2e_latency_s"][0]))
    trace = make_trace("spt", [0.0] * len(outputs), [100] * len(outputs), outputs)
    sjf = simulate(trace, make_policy("sjf", predictor=TruthPredictor(), max_num_seqs=1), cfg)
    spt = np.cumsum(sorted(service))
    assert sjf.summary["e2e_latency_s"]["mean"] == pytest.approx(spt.mean(), rel=1e-9)
    fcfs = simulate(trace, make_policy("continuous", max_num_seqs=1), cfg)
    assert fcfs.summary["e2e_latency_s"]["mean"] == pytest.approx(np.cumsum(service).mean(), rel=1e-9)
    assert sjf.summary["e2e_latency_s"]["mean"] < fcfs.summary["e2e_latency_s"]["mean"]
    np.testing.assert_allclose(sjf.requests["predicted_tokens"].to_numpy(), outputs)


@pytest.mark.parametrize("oracle", ["test-double", "policies.predictors"])
def test_syncintellects_with_exact_predictions_and_no_control_makes_the_plans_of_length_grouped(small_azure, oracle):
    def exact():
        from policies.predictors import make_predictor

        return TruthPredictor() if oracle == "test-double" else make_predictor("oracle")

    runs = []
    for name in ("length-grouped", "syncintellects"):
        pol = Recording(make_policy(name, predictor=exact()))
        res = simulate(small_azure, pol, SimConfig(kv_blocks=3000))
        runs.append((pol.plans, res))
    (plans_a, res_a), (plans_b, res_b) = runs
    assert len(plans_a) > 50 and plans_a == plans_b
    assert res_a.summary["e2e_latency_s"] == res_b.summary["e2e_latency_s"]
    assert res_a.summary["preemptions"] == 0  # exact predictions never overrun their bucket


def test_qos_is_one_without_control_and_follows_the_response_model_with_it(small_azure):
    off = simulate(small_azure, make_policy("syncintellects", predictor=TruthPredictor()), SimConfig(kv_blocks=3000))
    assert (off.requests["qos"] == 1.0).all() and (off.requests["target_tokens"] == 0).all()
    assert off.summary["qos_mean"] == 1.0
    on = simulate(small_azure, make_policy("syncintellects", predictor=TruthPredictor(), controller=ThreeQuarterController()),
                  SimConfig(kv_blocks=3000), length_response=MinResponse())
    r = on.requests.filter(~on.requests["rejected"])
    assert (r["target_tokens"] > 0).all() and (r["output_tokens"] <= r["trace_output_tokens"]).all()
    assert 0.7 < on.summary["qos_mean"] < 0.8
    _check_every_request_done_once(on, len(small_azure))


@pytest.mark.parametrize("name", NEW_POLICIES)
@pytest.mark.parametrize("predictor", ["exact", "noisy", "progressive"])
def test_every_request_finishes_exactly_once_on_azure_conv(small_azure, name, predictor):
    pred = {"exact": TruthPredictor(), "noisy": TruthPredictor(seed=3),
            "progressive": TruthPredictor(scale=0.4, refresh_every=32)}[predictor]
    # a small cache forces preemption and failure recompute paths
    res = simulate(small_azure, make_policy(name, predictor=pred), SimConfig(kv_blocks=900))
    _check_every_request_done_once(res, len(small_azure))
    if predictor == "progressive" and name in ("length-grouped", "syncintellects"):
        assert res.summary["preemptions"] > 0  # 0.4x first guesses overrun their buckets


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), blocks=st.integers(80, 400),
       name=st.sampled_from(NEW_POLICIES), scale=st.sampled_from([0.3, 1.0, 2.5]),
       refresh=st.sampled_from([None, 8]))
def test_property_all_finish_and_tokens_match(n, seed, blocks, name, scale, refresh):
    rng = np.random.default_rng(seed)
    trace = make_trace("prop", np.sort(rng.uniform(0, 5, n)), rng.integers(1, 300, n), rng.integers(1, 400, n))
    res = simulate(trace, make_policy(name, predictor=TruthPredictor(scale, refresh), max_num_seqs=8)
                   if "continuous" in name or name in ("sjf", "srpt")
                   else make_policy(name, predictor=TruthPredictor(scale, refresh), batch_size=4),
                   SimConfig(kv_blocks=blocks, max_context=blocks * 16 // 2))
    r = res.requests.filter(~res.requests["rejected"])
    assert res.summary["num_finished"] == r.height
    assert (r["generated_tokens"] == r["output_tokens"]).all()


@pytest.fixture(scope="module")
def small_azure():
    from traces import load_trace, rescale_rate

    trace = rescale_rate(load_trace("azure-conv"), 4.0).head(300)
    return dataclasses.replace(trace, name="azure-conv-300")


@pytest.mark.parametrize("name", ["syncintellects", "syncintellects-continuous"])
def test_with_the_real_progressive_predictor_controller_and_response_model(small_azure, name):
    from policies.control import default_length_response, make_controller
    from policies.predictors import make_predictor

    pol = make_policy(name, predictor=make_predictor("progressive", trace=small_azure, seed=1),
                      controller=make_controller())
    res = simulate(small_azure, pol, SimConfig(seed=1), length_response=default_length_response())
    _check_every_request_done_once(res, len(small_azure))
    r = res.requests.filter(~res.requests["rejected"])
    assert (r["target_tokens"] > 0).any() and (r["qos"] < 1).any() and (r["qos"] > 0).all()
    assert (r["output_tokens"] <= r["trace_output_tokens"]).all()  # a length cap never lengthens an answer
    assert r["predicted_tokens"].is_not_nan().all()


def test_cli_defaults_and_errors_for_the_predictor_flag(tmp_path, capsys):
    from syncintellects.cli import main

    args = ["simulate", "--num-requests", "40", "--rate", "2", "--quiet"]
    assert main(args + ["--policy", "syncintellects", "--out", str(tmp_path / "si")]) == 0  # defaults to progressive
    assert main(args + ["--policy", "sjf", "--out", str(tmp_path / "sjf")]) == 2
    assert "--predictor" in capsys.readouterr().err
    assert main(args + ["--policy", "sjf", "--predictor", "oracle", "--out", str(tmp_path / "sjf")]) == 0
