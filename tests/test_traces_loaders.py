"""Loaders against known answers: real bundled data, a derived copy in another format, fixtures."""
from __future__ import annotations

import calendar
import csv
import gzip
import json
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from traces import TraceError, load_trace
from traces.loaders import BUNDLED, DATA_DIR
from traces.tokenize import count_tokens

FIX = Path(__file__).parent / "fixtures" / "traces"


def _azure_reference(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent parse with the csv module and exact decimal arithmetic (slow, reference only)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def exact(ts: str) -> Decimal:
        whole, frac = ts.split(".")
        return Decimal(calendar.timegm(datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timetuple())) + Decimal("0." + frac)

    t0 = exact(rows[0]["TIMESTAMP"])
    arr = np.array([float(exact(r["TIMESTAMP"]) - t0) for r in rows])
    return arr, np.array([int(r["ContextTokens"]) for r in rows]), np.array([int(r["GeneratedTokens"]) for r in rows])


@pytest.mark.parametrize("name,rows", [("azure-conv", 19366), ("azure-code", 8819)])
def test_azure_bundled_matches_exact_decimal_parse(name, rows):
    trace = load_trace(name)
    arr, ctx, gen = _azure_reference(DATA_DIR / BUNDLED[name][0])
    assert len(trace) == rows
    # Exact decimal difference rounded once to float: no drift from parsing absolute times as floats.
    np.testing.assert_array_equal(trace.arrival_s, arr)
    np.testing.assert_array_equal(trace.prompt_tokens, ctx)
    np.testing.assert_array_equal(trace.output_tokens, gen)
    np.testing.assert_array_equal(trace.request_id, np.arange(rows))
    assert trace.arrival_s[0] == 0.0


def test_azure_conv_known_values():
    t = load_trace("azure-conv")
    # 18:15:50.9951690 - 18:15:46.6805900 and the SOURCES.md span 18:15:46 - 19:14:08.
    assert t.arrival_s[1] == 4.314579
    assert 3501 < t.duration_s < 3502.5
    assert (t.prompt_tokens[0], t.output_tokens[0]) == (374, 44)


def test_vidur_splitwise_agrees_row_by_row_with_azure_loader():
    azure = load_trace("azure-code")
    vidur = load_trace(FIX / "splitwise_code.csv.gz")
    assert vidur.notes["format"] == "vidur" and len(vidur) == len(azure) == 8819
    np.testing.assert_array_equal(vidur.prompt_tokens, azure.prompt_tokens)
    np.testing.assert_array_equal(vidur.output_tokens, azure.output_tokens)
    assert np.max(np.abs(vidur.arrival_s - azure.arrival_s)) < 1e-3


def test_mooncake_bundled_matches_json_lines():
    trace = load_trace("mooncake-conv")
    with gzip.open(DATA_DIR / BUNDLED["mooncake-conv"][0], "rt") as f:
        recs = [json.loads(line) for line in f]
    assert len(trace) == len(recs) == 12031
    np.testing.assert_array_equal(trace.arrival_s, np.array([r["timestamp"] for r in recs]) / 1000.0)
    np.testing.assert_array_equal(trace.prompt_tokens, [r["input_length"] for r in recs])
    np.testing.assert_array_equal(trace.output_tokens, [r["output_length"] for r in recs])
    assert round(trace.prompt_tokens.mean()) == 12035  # documented in SOURCES.md


def test_sharegpt_lengths_default_and_overridden_arrivals():
    t = load_trace("sharegpt-lengths")
    assert len(t) == 30731 and t.arrival_s[0] == 0.0
    assert "poisson at 1 req/s, seed 0" in t.notes["arrivals"]
    assert abs(t.mean_rate - 1.0) < 0.05
    assert (t.prompt_tokens + t.output_tokens).max() <= 8149  # the "8k filter"
    t2 = load_trace("sharegpt-lengths", rate=10.0, seed=3)
    np.testing.assert_array_equal(t2.prompt_tokens, t.prompt_tokens)
    assert abs(t2.mean_rate - 10.0) < 0.5 and "seed 3" in t2.notes["arrivals"]
    g = load_trace("sharegpt-lengths", arrivals="gamma", cv=3.0)
    gaps = np.diff(g.arrival_s)
    assert abs(gaps.std() / gaps.mean() - 3.0) < 0.3


def test_length_stats_file_requires_synthetic_arrivals(tmp_path):
    f = tmp_path / "stats.csv"
    f.write_text("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n10,5,15,2.0\n7,7,14,1.0\n")
    with pytest.raises(TraceError, match=r"stats\.csv.*no arrival times.*arrivals='poisson'.*rate=.*seed="):
        load_trace(f)
    with pytest.raises(TraceError, match="need rate=<req/s> and seed=<int>"):
        load_trace(f, arrivals="poisson", rate=1.0)
    t = load_trace(f, arrivals="poisson", rate=1.0, seed=0)
    assert list(t.prompt_tokens) == [10, 7] and list(t.output_tokens) == [5, 7]


def test_burstgpt_failed_requests_are_an_error_unless_dropped_explicitly():
    f = FIX / "burstgpt_handwritten.csv"
    with pytest.raises(TraceError, match=r"burstgpt_handwritten\.csv: line 3, column 'Response tokens'.*failed"):
        load_trace(f)
    t = load_trace(f, drop_failed=True)
    assert t.notes["dropped_failed_requests"] == 2
    assert list(t.prompt_tokens) == [472, 417, 1360, 30, 212, 95]
    assert list(t.request_id) == [0, 2, 3, 4, 6, 7]  # row positions in the file
    np.testing.assert_array_equal(t.arrival_s, [0, 113, 120, 126, 182.5, 235])  # rebased to the first row
    gpt4 = load_trace(f, drop_failed=True, model="GPT-4")
    assert list(gpt4.prompt_tokens) == [417, 95] and "GPT-4 (3 of 8 rows kept)" in gpt4.notes["filter_model"]
    conv = load_trace(f, drop_failed=True, log_type="Conversation log")
    assert len(conv) == 5


def test_alpaca_json_counts_wordpiece_tokens_and_keeps_text():
    f = FIX / "alpaca_handwritten.json"
    with pytest.raises(TraceError, match="no arrival times"):
        load_trace(f)
    t = load_trace(f, arrivals="poisson", rate=2.0, seed=0)
    recs = json.loads(f.read_text())
    assert t.prompt[1] == "Translate the sentence into French.\n\nThe cat sleeps on the sofa."
    assert t.prompt[0] == recs[0]["instruction"] and t.response == [r["output"] for r in recs]
    np.testing.assert_array_equal(t.prompt_tokens, count_tokens(t.prompt))
    np.testing.assert_array_equal(t.output_tokens, count_tokens(t.response))
    assert t.output_tokens[2] == 12  # 9 words, 2 commas and a full stop: 12 WordPiece tokens
    assert "not Llama" in t.notes["tokenizer"]


def test_tokenizer_is_not_truncated_to_128():
    # The bundled tokenizer.json carries truncation at 128 tokens; it must be switched off.
    assert count_tokens(["word " * 1000])[0] == 1000


def test_format_detection_and_forcing(tmp_path):
    f = tmp_path / "mystery.txt"
    f.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,5,6\n")
    assert load_trace(f).notes["format"] == "vidur"
    with pytest.raises(TraceError, match="needs column"):
        load_trace(f, format="azure")
    g = tmp_path / "odd.csv"
    g.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match=r"odd\.csv: unknown CSV format.*\['a', 'b'\]"):
        load_trace(g)
    with pytest.raises(TraceError, match="unknown trace format 'nope'"):
        load_trace(f, format="nope")
    with pytest.raises(FileNotFoundError, match="bundled traces"):
        load_trace("azure-conversation")


def test_bundled_load_is_fast():
    load_trace("azure-conv")  # warm imports and caches
    t0 = time.perf_counter()
    load_trace("azure-conv")
    # Measured ~0.02 s on the 2-core dev machine; the bound leaves room for slow CI runners.
    assert time.perf_counter() - t0 < 0.2 * 5


def test_csv_columns_become_typed_arrays_without_python_lists(tmp_path, monkeypatch):
    """A full read makes no Python list of a column (a 200 MB trace's values as Python objects cost
    several times the file); blanks around values still read as before, and a bad value is still named."""
    import polars as pl

    clean = tmp_path / "clean.csv"
    clean.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                     "2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:51.0000000,7,1\n")
    blanks = tmp_path / "blanks.csv"
    blanks.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n 2023-11-16 18:15:46.6805900 ,374, 44\n"
                      "2023-11-16 18:15:50.9951690, 396 ,109\n2023-11-16 18:15:51.0000000,7,1 \n")
    vidur = tmp_path / "v.csv"
    vidur.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,5,6\n 1.5 ,7,8\n")
    burst = tmp_path / "b.csv"
    burst.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     "5,ChatGPT,10,0,10,Conversation log\n6,ChatGPT,11,3,14,Conversation log\n")

    def no_lists(self, *a, **k):
        raise AssertionError(f"column {self.name!r} made into a Python list")

    monkeypatch.setattr(pl.Series, "to_list", no_lists)
    a, b = load_trace(clean), load_trace(blanks)
    assert a.prompt_tokens.tolist() == b.prompt_tokens.tolist() == [374, 396, 7]
    assert a.output_tokens.tolist() == b.output_tokens.tolist() == [44, 109, 1]
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    assert a.arrival_s[1] == pytest.approx(4.314579)
    assert load_trace(vidur).arrival_s.tolist() == [0.0, 1.5]
    assert load_trace(burst, drop_failed=True).prompt_tokens.tolist() == [11]
    monkeypatch.undo()
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                   "2023-11-16 18:15:50.9951690, 3x6 ,109\n")
    with pytest.raises(TraceError, match=r"line 3, column 'ContextTokens': got ' 3x6 ', expected an integer"):
        load_trace(bad)
    with pytest.raises(TraceError, match=r"line 2, column 'Response tokens': got '0', expected an integer >= 1"):
        load_trace(burst)
