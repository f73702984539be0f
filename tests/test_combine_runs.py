"""Repeated real runs combined into one (gpu_runner/combine.py): closed forms on hand-made runs, the refusals,
and an end-to-end run of the real runner repeated on tiny-llama."""
import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_runner.combine import RunsDiffer, combine_runs
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
    assert doc["interleaved"]["runs"] == 2 and doc["interleaved"]["sweeps"] == 2
    runs = [pl.read_parquet(out / "real-runs" / k / "steps.parquet") for k in ("1", "2")]
    comb = pl.read_parquet(out / "real" / "steps.parquet")
    assert comb.drop("start_s", "end_s").equals(runs[0].drop("start_s", "end_s"))
    dur = lambda f: (f["end_s"] - f["start_s"]).to_numpy()
    assert dur(comb) == pytest.approx((dur(runs[0]) + dur(runs[1])) / 2)  # the median of two is their mean
    real = json.loads((out / "real" / "summary.json").read_text())
    assert real["num_finished"] == 10 and doc["metrics"]["e2e_latency_s.mean"]["real"] == real["e2e_latency_s"]["mean"]
    # a count below 1 is a user mistake: one line, exit 2
    assert main(base + ["--real-runs", "0", "--out", str(tmp_path / "bad")]) == 2
