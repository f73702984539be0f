"""The ``syncintellects trace`` commands, end to end on bundled data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from syncintellects.cli import main
from traces import load_trace

FIX = Path(__file__).parent / "fixtures" / "traces"


def test_trace_list(capsys):
    assert main(["trace", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("azure-conv", "azure-code", "mooncake-conv", "sharegpt-lengths"):
        assert name in out


def test_trace_info_json_matches_the_trace(capsys):
    assert main(["trace", "info", "azure-code", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    t = load_trace("azure-code")
    assert s["rows"] == 8819 and s["span_s"] == t.duration_s and s["mean_rate"] == t.mean_rate
    assert s["prompt_tokens"]["p50"] == float(np.median(t.prompt_tokens))
    assert s["output_tokens"]["max"] == int(t.output_tokens.max())


def test_trace_info_text_and_errors(capsys):
    assert main(["trace", "info", "azure-conv"]) == 0
    out = capsys.readouterr().out
    assert "rows 19,366" in out and "mean rate 5.53 req/s" in out and "p99" in out
    assert main(["trace", "info", str(FIX / "burstgpt_handwritten.csv")]) == 2
    assert "line 3, column 'Response tokens'" in capsys.readouterr().err
    assert main(["trace", "info", str(FIX / "burstgpt_handwritten.csv"), "--drop-failed"]) == 0
    assert "dropped_failed_requests: 2" in capsys.readouterr().out
    assert main(["trace", "info", str(FIX / "alpaca_handwritten.json")]) == 2
    assert "--synthetic-arrivals" in capsys.readouterr().err
    assert main(["trace", "info", str(FIX / "alpaca_handwritten.json"), "--synthetic-arrivals", "poisson",
                 "--synthetic-rate", "1", "--synthetic-seed", "0"]) == 0


def test_trace_synth_writes_a_loadable_seeded_trace(tmp_path, capsys):
    args = ["trace", "synth", "--arrivals", "gamma", "--cv", "2", "--rate", "4", "--num-requests", "3000",
            "--lengths", "azure-code", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "a.csv")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    t = load_trace(tmp_path / "a.csv")
    gaps = np.diff(t.arrival_s)
    assert len(t) == 3000 and abs(t.mean_rate / 4 - 1) < 0.15 and abs(gaps.std() / gaps.mean() / 2 - 1) < 0.2
    assert main(["trace", "synth", "--rate", "2", "--num-requests", "100", "--lengths", "lognormal",
                 "--fit-to", "azure-code", "--seed", "1", "--out", str(tmp_path / "ln.csv")]) == 0
    assert "lognormal fit to azure-code" in capsys.readouterr().out
    assert main(["trace", "synth", "--cv", "3", "--rate", "2", "--num-requests", "10", "--seed", "1",
                 "--out", str(tmp_path / "x.csv")]) == 2


def test_trace_convert_slices_and_rescales(tmp_path, capsys):
    out = tmp_path / "conv.csv"
    assert main(["trace", "convert", str(FIX / "splitwise_code.csv.gz"), "--start", "600", "--end", "1200",
                 "--rate", "2", "--out", str(out)]) == 0
    t = load_trace(out)
    src = load_trace(FIX / "splitwise_code.csv.gz")
    inside = (src.arrival_s >= 600) & (src.arrival_s < 1200)
    np.testing.assert_array_equal(t.request_id, src.request_id[inside])
    assert abs(t.mean_rate - 2.0) < 1e-9
