"""SLOs: attainment and goodput, recomputed here from requests.parquet."""
import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from conftest import small_trace
from policies.schedulers.continuous import ContinuousBatching
from simulator.engine import simulate
from simulator.slo import apply_slo, format_slo, parse_slo
from syncintellects.cli import main
from traces.schema import make_trace


def test_parse_and_format_round_trip():
    slo = parse_slo(["ttft=2,tpot=0.1", "chat:ttft=0.5;batch:e2e=600"])
    assert slo == {"": {"ttft": 2.0, "tpot": 0.1}, "chat": {"ttft": 0.5}, "batch": {"e2e": 600.0}}
    assert parse_slo(format_slo(slo)) == slo


@pytest.mark.parametrize("text,words", [("ttft=0", "positive"), ("ttft=x", "not a number"), ("latency=2", "expected"),
                                        ("ttft=1,ttft=2", "twice"), ("", "no targets"), ("ttft=nan", "positive")])
def test_bad_slo_is_one_line_exit_2(tmp_path, capsys, text, words):
    rc = main(["simulate", "--num-requests", "5", "--slo", text, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "--slo" in err and "Traceback" not in err and err.count("\n") == 1


def test_simulate_slo_attainment_and_goodput_match_the_request_table(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", "--trace", "azure-conv", "--rate", "6", "--num-requests", "400", "--kv-blocks", "600",
                 "--slo", "ttft=1,tpot=0.03,e2e=20", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    df = pl.read_parquet(out / "requests.parquet")
    served = ~df["rejected"] & df["finish_s"].is_not_nan()
    tpot_ok = df["tpot_s"].is_null() | (df["tpot_s"] <= 0.03)
    met = (served & (df["ttft_s"] <= 1) & tpot_ok & (df["e2e_latency_s"] <= 20)).fill_null(False)
    assert df["slo_met"].to_list() == met.to_list()
    assert 0 < met.sum() < df.height  # the targets bite: some requests meet them, some do not
    assert s["slo_attainment"] == pytest.approx(met.sum() / df.height, rel=1e-12)  # share of OFFERED requests
    span = df.filter(served)["finish_s"].max() - df["arrival_s"].min()
    assert s["goodput_requests_per_s"] == pytest.approx(met.sum() / span, rel=1e-12)
    assert s["goodput_requests_per_s"] <= s["throughput_requests_per_s"]


def test_a_rejected_request_misses_and_one_token_answers_have_no_tpot():
    trace = make_trace("t", [0.0, 0.1, 0.2], [5000, 100, 100], [10, 1, 20])  # the first leaves no room: rejected
    res = simulate(trace, ContinuousBatching())
    req = apply_slo(res.requests, res.summary, parse_slo("ttft=5,tpot=1"))
    assert req["slo_met"].to_list() == [False, True, True]
    assert res.summary["slo_attainment"] == pytest.approx(2 / 3)


def test_per_class_targets_use_the_trace_classes():
    n = 60
    trace = small_trace(n=n, rate=4.0, seed=2)
    classes = ["chat" if i % 3 else "batch" for i in range(n)]
    res = simulate(trace, ContinuousBatching())
    req = apply_slo(res.requests, res.summary, parse_slo("chat:ttft=0.05;batch:e2e=1000"), classes)
    chat = np.array([c == "chat" for c in classes])
    ttft, e2e = req["ttft_s"].to_numpy(), req["e2e_latency_s"].to_numpy()
    expected = np.where(chat, ttft <= 0.05, e2e <= 1000)
    assert req["slo_met"].to_list() == expected.tolist()
    per = res.summary["slo_classes"]
    assert per["chat"]["slo_attainment"] == pytest.approx(expected[chat].mean())
    assert per["batch"]["slo_attainment"] == pytest.approx(expected[~chat].mean())
    assert req["slo_class"].to_list() == classes
    with pytest.raises(ValueError, match="no request of the trace"):
        apply_slo(res.requests, dict(res.summary), parse_slo("gold:ttft=1"), classes)


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.01, 5), b=st.floats(0.01, 5), tpot=st.floats(0.005, 0.2))
def test_looser_targets_never_lower_attainment(a, b, tpot):
    res = _RUN
    lo, hi = sorted((a, b))
    s1, s2 = dict(res.summary), dict(res.summary)
    apply_slo(res.requests, s1, {"": {"ttft": lo, "tpot": tpot}})
    apply_slo(res.requests, s2, {"": {"ttft": hi, "tpot": tpot}})
    assert s1["slo_attainment"] <= s2["slo_attainment"]


_RUN = simulate(small_trace(n=80, rate=8.0, seed=5), ContinuousBatching())


def test_per_class_slo_from_the_command_line_on_a_trace_file_with_classes(tmp_path):
    from traces import write_trace_csv

    base = small_trace(n=40, rate=3.0, seed=3)
    classes = ["chat" if i % 2 else "batch" for i in range(40)]
    trace = make_trace("cls", base.arrival_s, base.prompt_tokens, base.output_tokens, slo_class=classes)
    path = write_trace_csv(trace, tmp_path / "cls.csv")
    out = tmp_path / "o"
    assert main(["simulate", "--trace", str(path), "--slo", "ttft=10", "--slo", "chat:ttft=0.06",
                 "--out", str(out), "--quiet"]) == 0
    df = pl.read_parquet(out / "requests.parquet")
    s = json.loads((out / "summary.json").read_text())
    limit = np.where(df["slo_class"].to_numpy() == "chat", 0.06, 10.0)
    assert df["slo_met"].to_list() == (df["ttft_s"].to_numpy() <= limit).tolist()
    assert s["slo"] == "ttft=10;chat:ttft=0.06"
    for c in ("chat", "batch"):
        assert s["slo_classes"][c]["slo_attainment"] == pytest.approx(df.filter(pl.col("slo_class") == c)["slo_met"].mean())
