"""What a run serves: the offered load, seeds as windows, tiling, lazy reading, run warnings."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncintellects.cli import main
from traces import load_trace, select_requests, tile_trace, write_trace_csv
from traces.schema import TraceError, make_trace


def simulate(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["simulate", "--quiet", "--out", str(out), *map(str, args)]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("n", [150, 2000])
def test_offered_rate_is_the_asked_rate_on_the_served_requests(tmp_path, n):
    out, s = simulate(tmp_path, f"n{n}", "--trace", "azure-conv", "--rate", 4, "--num-requests", n)
    arr = pl.read_parquet(out / "requests.parquet")["arrival_s"].to_numpy()
    realised = (len(arr) - 1) / (arr.max() - arr.min())
    assert abs(realised / 4.0 - 1) < 0.02
    assert s["offered_rate_requests_per_s"] == pytest.approx(realised, rel=1e-12)


def test_rate_keeps_the_window_burstiness():
    full = load_trace("azure-conv")
    got = select_requests(full, num_requests=500, seed=2, rate=3.0)
    gaps = np.diff(full.arrival_s[1000:1500])
    np.testing.assert_allclose(np.diff(got.arrival_s), gaps * 499 / (3.0 * gaps.sum()), rtol=1e-9)
    assert list(got.request_id) == list(full.request_id[1000:1500]) and got.arrival_s[0] == 0.0


def test_seeds_serve_different_windows_and_a_seed_repeats_byte_for_byte(tmp_path):
    a, _ = simulate(tmp_path, "s0", "--num-requests", 200, "--rate", 2, "--seed", 0)
    b, _ = simulate(tmp_path, "s1", "--num-requests", 200, "--rate", 2, "--seed", 1)
    c, _ = simulate(tmp_path, "s1again", "--num-requests", 200, "--rate", 2, "--seed", 1)
    ids = lambda d: set(pl.read_parquet(d / "requests.parquet")["request_id"].to_list())
    assert ids(a).isdisjoint(ids(b)) and len(ids(a)) == len(ids(b)) == 200
    for f in ("requests.parquet", "steps.parquet", "config.json"):
        assert (b / f).read_bytes() == (c / f).read_bytes(), f
    assert (a / "requests.parquet").read_bytes() != (b / "requests.parquet").read_bytes()


def test_seed_without_num_requests_is_flagged_as_the_same_requests(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    write_trace_csv(make_trace("t", np.arange(30) * 0.5, np.full(30, 20), np.full(30, 5)), trace)
    _, s = simulate(tmp_path, "o", "--trace", trace, "--seed", 1)
    assert any("same requests as seed 0" in w for w in s["warnings"])
    assert "warning: seed 1 serves the same requests" in capsys.readouterr().err


def test_tiling_repeats_the_inter_arrival_times_back_to_back():
    base = make_trace("b", [0.0, 1.0, 1.5, 4.0], [5, 6, 7, 8], [1, 2, 3, 4], request_id=[3, 1, 2, 0])
    t = tile_trace(base, 10)
    gap = 1.0 / base.mean_rate  # one mean gap between copies: 4/3 s
    np.testing.assert_allclose(t.arrival_s, [0, 1, 1.5, 4, 4 + gap, 5 + gap, 5.5 + gap, 8 + gap, 8 + 2 * gap,
                                             9 + 2 * gap])
    assert list(t.prompt_tokens) == [5, 6, 7, 8] * 2 + [5, 6] and len(set(t.request_id)) == 10
    assert t.mean_rate == pytest.approx(base.mean_rate, rel=0.1)


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 10.0, allow_subnormal=False), min_size=1, max_size=20), n=st.integers(1, 200), k=st.integers(0, 3))
def test_windows_of_a_tiled_trace_are_disjoint_and_keep_gaps(gaps, n, k):
    arr = np.concatenate([[0.0], np.cumsum(gaps)])
    if arr[-1] <= 0:
        return
    base = make_trace("b", arr, np.arange(1, len(arr) + 1), np.ones(len(arr), dtype=int))
    w = select_requests(base, num_requests=n, seed=k, tile=True)
    assert len(w) == n and w.arrival_s[0] == 0.0 and (np.diff(w.arrival_s) >= 0).all()
    tiled = tile_trace(base, (k + 1) * n)
    np.testing.assert_allclose(np.diff(w.arrival_s), np.diff(tiled.arrival_s[k * n:(k + 1) * n]), atol=1e-9)
    if k:
        before = select_requests(base, num_requests=n, seed=k - 1, tile=True)
        assert set(before.request_id).isdisjoint(w.request_id)


def test_window_past_the_trace_is_an_error_unless_tiled():
    base = make_trace("b", np.arange(10.0), np.ones(10, dtype=int), np.ones(10, dtype=int))
    with pytest.raises(TraceError, match="3 window"):
        select_requests(base, num_requests=3, seed=3)
    assert len(select_requests(base, num_requests=3, seed=3, tile=True)) == 3
    with pytest.raises(TraceError, match="--tile"):
        select_requests(base, num_requests=11)


def test_simulate_tiles_a_short_trace_end_to_end(tmp_path):
    trace = tmp_path / "t.csv"
    write_trace_csv(make_trace("t", np.arange(40) * 0.25, np.full(40, 30), np.full(40, 4)), trace)
    assert main(["simulate", "--trace", str(trace), "--num-requests", "100", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    out, s = simulate(tmp_path, "tiled", "--trace", trace, "--num-requests", 100, "--tile", "--rate", 8)
    assert s["num_requests"] == 100 and s["offered_rate_requests_per_s"] == pytest.approx(8.0)
    cfg = json.loads((out / "config.json").read_text())
    assert any(t.startswith("tile:") for t in cfg["trace_notes"]["transforms"])


def test_lazy_reading_stops_at_the_rows_needed(tmp_path):
    """Rows past those needed are not parsed: a bad row there does not stop a small run."""
    path = tmp_path / "big.csv"
    rows = "".join(f"{i * 0.1:.1f},{10 + i % 7},{3 + i % 5}\n" for i in range(5000))
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + rows + "9999,oops,1\n")
    with pytest.raises(TraceError, match="oops"):
        load_trace(path)
    head = load_trace(path, max_rows=1000)
    assert len(head) == 1000 and head.prompt_tokens[999] == 10 + 999 % 7
    _, s = simulate(tmp_path, "o", "--trace", path, "--num-requests", 500, "--seed", 1)
    assert s["num_requests"] == 500
    jl = tmp_path / "m.jsonl"
    jl.write_text("".join(json.dumps({"timestamp": i, "input_length": 5, "output_length": 2}) + "\n" for i in range(50))
                  + "not json\n")
    assert len(load_trace(jl, max_rows=50)) == 50


def test_mostly_rejected_run_warns_and_groups_reasons(tmp_path, capsys):
    _, s = simulate(tmp_path, "mc", "--trace", "mooncake-conv", "--num-requests", 300)
    assert s["num_rejected"] > 150 and len(s["warnings"]) == 1 and "rejected" in s["warnings"][0]
    assert capsys.readouterr().err.startswith("warning: ")
    assert len(s["reject_reasons"]) == 1 and sum(s["reject_reasons"].values()) == s["num_rejected"]
    (reason,) = s["reject_reasons"]
    assert "prompt of N tokens" in reason and "context of 4096 tokens" in reason
    _, ok = simulate(tmp_path, "az", "--num-requests", 100)
    assert ok["warnings"] == []


def test_loading_a_big_trace_in_full_shows_progress(tmp_path, capsys, monkeypatch):
    import traces._parse
    import traces.loaders

    monkeypatch.setattr(traces.loaders, "BIG_FILE_BYTES", 1000)
    monkeypatch.setattr(traces._parse, "BIG_FILE_BYTES", 1000)
    path = tmp_path / "t.csv"
    write_trace_csv(make_trace("t", np.arange(300) * 0.1, np.full(300, 9), np.full(300, 2)), path)
    assert len(load_trace(path)) == 300
    err = capsys.readouterr().err
    assert "loading all of" in err and "loaded 300 requests" in err and "reading t.csv" in err
    assert len(load_trace(path, max_rows=10)) == 10 and capsys.readouterr().err == ""  # a head: read quietly


def test_seed_warning_only_when_the_requests_are_those_of_seed_0():
    from syncintellects.spec import RunSpec, seed_warnings

    assert seed_warnings(RunSpec(seed=2)) and not seed_warnings(RunSpec(seed=0))
    assert not seed_warnings(RunSpec(seed=2, num_requests=100))
    assert seed_warnings(RunSpec(trace="sharegpt-lengths", seed=2))  # its bundled arrivals use seed 0
    drawn = RunSpec(trace="x.json", seed=2, trace_options=(("arrivals", "poisson"), ("rate", 1.0), ("seed", 2)))
    assert not seed_warnings(drawn)  # arrivals drawn with this seed: different requests in time


def test_reject_reasons_group_by_kind_keeping_constant_numbers():
    from simulator.served_load import load_warnings, offered_rate, reject_reason_counts

    reasons = pl.Series(["prompt of 5000 tokens exceeds 4096", "prompt of 7000 tokens exceeds 4096",
                         "needs 40 blocks; cache has 32", None, "prompt of 5000 tokens exceeds 4096"])
    assert reject_reason_counts(reasons) == {"prompt of N tokens exceeds 4096": 3, "(no reason given)": 1,
                                             "needs 40 blocks; cache has 32": 1}
    assert offered_rate(np.array([0.0, 1.0, 4.0])) == 0.5 and offered_rate(np.array([2.0])) is None
    assert load_warnings({"num_requests": 10, "num_rejected": 3, "num_output_capped": 3})
    assert not load_warnings({"num_requests": 10, "num_rejected": 5, "num_output_capped": 0})
