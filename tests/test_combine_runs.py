"""Repeated real runs combined into one (gpu_runner/combine.py): closed forms on hand-made runs, the refusals,
and an end-to-end run of the real runner repeated on tiny-llama."""
import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_runner.combine import RunsDiffer, combine_runs, retime
from simulator.metrics import RunResult, summarize


def _run(arrivals, steps, req_times, generated):
    """A hand-made run: steps = [(start, end, num_steps, batch)], req_times = [(admitted, first, last, finish)]."""
    st_ = pl.DataFrame({"start_s": [s[0] for s in steps], "end_s": [s[1] for s in steps],
                        "num_steps": [s[2] for s in steps], "batch_size": [s[3] for s in steps],
                        "padded_rows": [0] * len(steps), "prefill_tokens": [0] * len(steps),
                        "output_tokens": [s[3] * s[2] for s in steps], "kv_blocks_used": [1] * len(steps)})
    n = len(arrivals)
    req = pl.DataFrame({
        "request_id": list(range(n)), "arrival_s": arrivals,
        "admitted_s": [r[0] for r in req_times], "first_token_s": [r[1] for r in req_times],
        "last_token_s": [r[2] for r in req_times], "finish_s": [r[3] for r in req_times],
        "prompt_tokens": [10] * n, "output_tokens": generated, "generated_tokens": generated,
        "output_capped": [False] * n, "preemptions": [0] * n, "predicted_tokens": [float("nan")] * n,
        "target_tokens": [0] * n, "qos": [1.0] * n, "rejected": [False] * n,
    }).with_columns(
        e2e_latency_s=pl.col("finish_s") - pl.col("arrival_s"), ttft_s=pl.col("first_token_s") - pl.col("arrival_s"),
        queue_s=pl.col("admitted_s") - pl.col("arrival_s"),
        tpot_s=(pl.col("last_token_s") - pl.col("first_token_s")) / (pl.col("generated_tokens") - 1),
    ).with_columns(normalized_latency_s=pl.col("e2e_latency_s") / pl.col("generated_tokens"))
    summary = summarize(req, st_, 100)
    summary["runner"] = {"virtual_clock_s": steps[-1][1]}
    return RunResult(requests=req, steps=st_, summary=summary, config={"kv_blocks": 100})


def _burst_run(durations, own=0.001):
    """Two requests at t=0: a prefill step of both, then a 4-step decode segment; request 0 finishes at the
    end of the prefill's next segment, request 1 at the end of a last 2-step segment."""
    t, steps = 0.0, []
    for (k, b), d in zip(((1, 2), (4, 2), (2, 1)), durations):
        t += own
        steps.append((t, t + d, k, b))
        t += d
    s = steps
    req = [(s[0][0], s[0][1], s[1][1], s[1][1]), (s[0][0], s[0][1], s[2][1], s[2][1])]
    return _run([0.0, 0.0], steps, req, [5, 7])


def test_three_identical_decisions_take_every_steps_median_and_carry_the_requests():
    runs = [_burst_run(d) for d in ((0.10, 0.40, 0.20), (0.30, 0.41, 0.10), (0.20, 0.90, 0.15))]
    out = combine_runs(runs)
    dur = (out.steps["end_s"] - out.steps["start_s"]).to_numpy()
    assert dur == pytest.approx([0.20, 0.41, 0.15])
    # own time between steps is 1 ms in every run, so the combined timeline is closed-form
    ends = np.cumsum(np.array([0.20, 0.41, 0.15]) + 0.001)
    assert out.steps["end_s"].to_numpy() == pytest.approx(ends)
    r = out.requests
    assert r["first_token_s"].to_list() == pytest.approx([ends[0], ends[0]])
    assert r["finish_s"].to_list() == pytest.approx([ends[1], ends[2]])
    assert r["e2e_latency_s"].to_list() == pytest.approx([ends[1], ends[2]])
    assert r["tpot_s"].to_list() == pytest.approx([(ends[1] - ends[0]) / 4, (ends[2] - ends[0]) / 6])
    assert out.summary["e2e_latency_s"]["mean"] == pytest.approx((ends[1] + ends[2]) / 2)
    spread = out.summary["real_runs"]
    assert spread["n"] == 3 and spread["e2e_latency_s.mean"]["runs"] == [x.summary["e2e_latency_s"]["mean"] for x in runs]
    # the decisions are those of run 1, untouched
    assert out.steps.drop("start_s", "end_s").equals(runs[0].steps.drop("start_s", "end_s"))


def test_a_time_inside_a_multi_step_segment_moves_in_proportion():
    runs = [_burst_run((0.1, 0.4, 0.2)), _burst_run((0.1, 0.8, 0.2)), _burst_run((0.1, 0.8, 0.2))]
    s0 = runs[0].steps["start_s"][1]
    base = runs[0].requests.with_columns(first_token_s=pl.Series([s0 + 0.1, 0.101]))  # a quarter into segment 1
    runs[0] = RunResult(requests=base, steps=runs[0].steps, summary=runs[0].summary, config=runs[0].config)
    out = combine_runs(runs)
    s1 = out.steps["start_s"][1]
    assert out.requests["first_token_s"][0] == pytest.approx(s1 + 0.25 * 0.8)


def test_runs_that_decided_differently_are_refused():
    a, b = _burst_run((0.1, 0.4, 0.2)), _burst_run((0.1, 0.4, 0.2))
    b.steps = b.steps.with_columns(batch_size=pl.Series([2, 2, 2]))
    with pytest.raises(RunsDiffer, match=r"run 2 made other decisions .*step row 2, column batch_size"):
        combine_runs([a, b])
    c = _burst_run((0.1, 0.4, 0.2))
    c.requests = c.requests.with_columns(generated_tokens=pl.Series([5, 8]))
    with pytest.raises(RunsDiffer, match="request row 1, column generated_tokens"):
        combine_runs([a, c])


def test_an_idle_wait_for_an_arrival_is_kept_and_a_request_admitted_before_it_arrives_is_refused():
    # request 1 arrives at 5 s; the server idles from the end of request 0 until then
    def run(d0, d1):
        steps = [(0.001, 0.001 + d0, 1, 1), (5.001, 5.001 + d1, 1, 1)]
        return _run([0.0, 5.0], steps, [(0.001, 0.001 + d0, 0.001 + d0, 0.001 + d0),
                                        (5.001, 5.001 + d1, 5.001 + d1, 5.001 + d1)], [1, 1])
    out = combine_runs([run(0.1, 0.2), run(0.3, 0.4), run(0.2, 0.3)])
    assert out.steps["start_s"].to_list() == pytest.approx([0.001, 5.001])
    assert out.requests["e2e_latency_s"].to_list() == pytest.approx([0.201, 0.301])
    # request 1 (arriving at 0.5 s) was admitted at 0.511 s and 0.601 s in two runs, but with the medians
    # of step 0's time (0.1 s) and of the server's own time before step 1 (0.01 s) the combined run would
    # admit it at 0.111 s, before it arrived: refused
    def run2(d, own):
        s1 = 0.001 + d + own
        return _run([0.0, 0.5], [(0.001, 0.001 + d, 1, 1), (s1, s1 + 0.1, 1, 1)],
                    [(0.001, 0.001 + d, 0.001 + d, 0.001 + d), (s1, s1 + 0.1, s1 + 0.1, s1 + 0.1)], [1, 1])
    with pytest.raises(RunsDiffer, match="request 1 arrives at 0.5000 s but the combined run would admit it"):
        combine_runs([run2(0.5, 0.01), run2(0.1, 0.5), run2(0.1, 0.01)])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.floats(0.01, 1.0)), min_size=1, max_size=5))
def test_combined_clock_never_goes_back_and_every_request_finishes_once(durations):
    out = combine_runs([_burst_run(d) for d in durations])
    s, e = out.steps["start_s"].to_numpy(), out.steps["end_s"].to_numpy()
    assert (e >= s).all() and (s[1:] >= e[:-1]).all()
    r = out.requests
    assert r["finish_s"].is_not_null().all() and r.height == 2
    assert ((r["admitted_s"] <= r["first_token_s"]) & (r["first_token_s"] <= r["finish_s"])).all()
    med = np.median(np.array(durations), axis=0)
    assert e - s == pytest.approx(med)


def test_retime_puts_the_servers_own_time_back_and_takes_it_off():
    run = _burst_run((0.1, 0.4, 0.2), own=0.0)  # a run whose own time was off its clock: no gaps
    own = np.array([0.01, 0.02, 0.03])
    out = retime(run, own)
    ends = np.cumsum(np.array([0.1, 0.4, 0.2]) + own)
    assert out.steps["end_s"].to_numpy() == pytest.approx(ends)
    assert (out.steps["end_s"] - out.steps["start_s"]).to_numpy() == pytest.approx([0.1, 0.4, 0.2])
    assert out.requests["ttft_s"].to_list() == pytest.approx([ends[0], ends[0]])
    assert out.requests["finish_s"].to_list() == pytest.approx([ends[1], ends[2]])
    assert out.summary["ttft_s"]["mean"] == pytest.approx(ends[0])
    assert out.steps.drop("start_s", "end_s").equals(run.steps.drop("start_s", "end_s"))
    # zeros take a run's own time off again: back to the run without it
    back = retime(out, np.zeros(3))
    assert back.steps["end_s"].to_numpy() == pytest.approx(run.steps["end_s"].to_numpy())
    assert back.requests["e2e_latency_s"].to_list() == pytest.approx(run.requests["e2e_latency_s"].to_list())
    # an idle wait for an arrival stays a wait: own time counts from the arrival the server waited for
    idle = _run([0.0, 5.0], [(0.0, 0.1, 1, 1), (5.0, 5.2, 1, 1)], [(0.0, 0.1, 0.1, 0.1), (5.0, 5.2, 5.2, 5.2)], [1, 1])
    moved = retime(idle, np.array([0.001, 0.002]))
    assert moved.steps["start_s"].to_list() == pytest.approx([0.001, 5.002])
    assert moved.requests["e2e_latency_s"].to_list() == pytest.approx([0.101, 0.202])
    with pytest.raises(ValueError, match="2 own times for 3 steps"):
        retime(run, np.zeros(2))


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.floats(0.01, 1.0)),
       st.lists(st.floats(0.0, 0.1), min_size=3, max_size=3))
def test_retime_keeps_durations_and_order_and_undoes_itself(durations, own):
    run = _burst_run(durations, own=0.0)
    out = retime(run, np.array(own))
    s, e = out.steps["start_s"].to_numpy(), out.steps["end_s"].to_numpy()
    assert (e >= s).all() and (s[1:] >= e[:-1]).all()
    assert e - s == pytest.approx(np.array(durations))
    assert (out.requests["ttft_s"] >= run.requests["ttft_s"] - 1e-12).all()
    back = retime(out, np.zeros(3))
    assert back.steps["start_s"].to_numpy() == pytest.approx(run.steps["start_s"].to_numpy())


def test_runner_with_server_time_off_makes_the_same_decisions_without_gaps():
    pytest.importorskip("torch")
    from gpu_runner.engine import RunnerConfig, serve
    from gpu_runner.models import load_model
    from policies.predictors import OraclePredictor
    from policies.registry import make_policy
    from traces.schema import make_trace

    lm = load_model("tiny-llama", device="cpu", dtype="fp32", seed=0)
    rng = np.random.default_rng(3)
    tr = make_trace("burst", np.zeros(12), rng.integers(5, 120, 12), rng.integers(2, 30, 12))
    cfg = dict(kv_tokens=4096, max_context=256, clock="cpu", threads=1)
    on = serve(tr, make_policy("sjf", predictor=OraclePredictor()), lm, RunnerConfig(**cfg))
    off = serve(tr, make_policy("sjf", predictor=OraclePredictor()), lm, RunnerConfig(server_time="off", **cfg))
    assert off.steps.drop("start_s", "end_s").equals(on.steps.drop("start_s", "end_s"))
    s, e = off.steps["start_s"].to_numpy(), off.steps["end_s"].to_numpy()
    assert s[0] == 0.0 and (s[1:] == e[:-1]).all()  # a burst: no time between steps off the clock
    gaps = on.steps["start_s"].to_numpy() - np.concatenate([[0.0], on.steps["end_s"].to_numpy()[:-1]])
    assert (gaps > 0).all() and len(on.own_before) == len(gaps) == len(off.own_before)
    assert on.own_before == pytest.approx(gaps, abs=1e-12)  # on the clock, the recorded own time is the gap
    assert (off.own_before > 0).all() and off.summary["runner"]["server_time"] == "off"
    with_own = retime(off, off.own_before)  # put back: the gaps are the measured own time
    g2 = with_own.steps["start_s"].to_numpy() - np.concatenate([[0.0], with_own.steps["end_s"].to_numpy()[:-1]])
    assert g2 == pytest.approx(off.own_before)
    with pytest.raises(ValueError, match="server time must be one of clock, off"):
        serve(tr, make_policy("sjf", predictor=OraclePredictor()), lm, RunnerConfig(server_time="wall", **cfg))


def test_validate_repeats_the_real_run_and_combines_it(tmp_path):
    pytest.importorskip("torch")
    from syncintellects.cli import main

    prof = tmp_path / "tiny.json"
    assert main(["profile", "--model", "tiny-llama", "--device", "cpu", "--quick", "--kv-tokens", "8192",
                 "--out", str(prof), "--quiet"]) == 0
    out = tmp_path / "val"
    base = ["validate", "--model", "tiny-llama", "--device", "cpu", "--profile", str(prof), "--trace", "azure-conv",
            "--policy", "continuous", "--rate", "1000000", "--num-requests", "10", "--seed", "0",
            "--length-scale", "0.1", "--interleave", "1", "--tolerance", "1e9", "--quiet"]
    assert main(base + ["--real-runs", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "validation.json").read_text())
    assert doc["real_runs"]["n"] == 2 and len(doc["metrics_per_real_run"]) == 2
    assert doc["one_run_out"] is None and doc["conclusive"] == (not doc["conditioning"]["ill_conditioned"])  # 2 runs
    assert doc["interleaved"]["runs"] == 2 and doc["interleaved"]["sweeps"] == 2
    runs = [pl.read_parquet(out / "real-runs" / k / "steps.parquet") for k in ("1", "2")]
    comb = pl.read_parquet(out / "real" / "steps.parquet")
    assert comb.drop("start_s", "end_s").equals(runs[0].drop("start_s", "end_s"))
    dur = lambda f: (f["end_s"] - f["start_s"]).to_numpy()
    assert dur(comb) == pytest.approx((dur(runs[0]) + dur(runs[1])) / 2)  # the median of two is their mean
    real = json.loads((out / "real" / "summary.json").read_text())
    assert real["num_finished"] == 10 and doc["metrics"]["e2e_latency_s.mean"]["real"] == real["e2e_latency_s"]["mean"]
    # validate keeps the server's own time off the real clock by default and reports it, with the metrics it
    # would have given on the clock (never better for latency than without it)
    st_ = doc["server_time"]
    assert st_["mode"] == "off" and st_["total_s"] > 0 and st_["steps"] == comb.height
    assert (comb["start_s"].to_numpy()[1:] == comb["end_s"].to_numpy()[:-1]).all()
    w = st_["metrics_with_server_time"]
    assert w["ttft_s.mean"]["real"] > doc["metrics"]["ttft_s.mean"]["real"] and w["ttft_s.mean"]["sim"] == doc["metrics"]["ttft_s.mean"]["sim"]
    assert main(base + ["--server-time", "clock", "--out", str(tmp_path / "clock")]) == 0
    doc = json.loads((tmp_path / "clock" / "validation.json").read_text())
    st_ = doc["server_time"]
    assert st_["mode"] == "clock" and st_["total_s"] > 0
    assert st_["metrics_without_server_time"]["ttft_s.mean"]["real"] < doc["metrics"]["ttft_s.mean"]["real"]
    # three runs or more: the verdict again with each run left out (a tolerance nothing exceeds: all decided)
    assert main(base + ["--real-runs", "3", "--out", str(tmp_path / "three")]) == 0
    doc = json.loads((tmp_path / "three" / "validation.json").read_text())
    loo = doc["one_run_out"]
    assert loo["runs"] == 3 and loo["undecided"] == [] and set(loo["by_metric"]) == set(doc["gated"])
    assert loo["verdict"] == "pass" and doc["conclusive"] == (not doc["conditioning"]["ill_conditioned"])
    assert all(v["decided"] == "pass" and v["range"][0] <= v["range"][1] for v in loo["by_metric"].values())
    # a count below 1 is a user mistake: one line, exit 2
    assert main(base + ["--real-runs", "0", "--out", str(tmp_path / "bad")]) == 2
