"""Malformed input: every error names the file, the 1-based line (or record), the column and what was expected."""
from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest

from traces import TraceError, load_trace

AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD = "2023-11-16 18:15:46.6805900,374,44\n"


def _write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize("bad_line,column,expected", [
    ("2023-11-16 18:15:47.0000000,12x,44", "ContextTokens", "an integer >= 1"),
    ("2023-11-16 18:15:47.0000000,374,0", "GeneratedTokens", "an integer >= 1"),
    ("2023-11-16 18:15:47.0000000,374,", "GeneratedTokens", "an integer >= 1"),
    ("2023-11-16 18:15:47.0000000,374", "GeneratedTokens", "an integer >= 1"),
    ("16/11/2023 18:15:47,374,44", "TIMESTAMP", "a time 'YYYY-MM-DD HH:MM:SS.fffffff'"),
    ("2023-11-16 18:15:47.0000000,3.5,44", "ContextTokens", "an integer >= 1"),
])
def test_azure_bad_row_names_file_line_column(tmp_path, bad_line, column, expected):
    f = _write(tmp_path, "azure.csv", AZURE_HEAD + GOOD * 3 + bad_line + "\n" + GOOD)
    with pytest.raises(TraceError) as e:
        load_trace(f)
    msg = str(e.value)
    assert str(f) in msg and "line 5," in msg and f"column {column!r}" in msg and expected in msg, msg
    assert "skip_bad_rows=True" in msg


def test_skip_bad_rows_counts_and_warns(tmp_path):
    f = _write(tmp_path, "azure.csv", AZURE_HEAD + GOOD + "2023-11-16 18:15:47.1,x,1\n" + "2023-11-16 18:15:48.5,10,0\n"
               + "2023-11-16 18:15:49.25,10,2\n")
    with pytest.warns(UserWarning, match=r"skipped 2 bad row\(s\) of 4; first: .*line 3, column 'ContextTokens'"):
        t = load_trace(f, skip_bad_rows=True)
    assert t.notes["skipped_bad_rows"] == 2
    assert list(t.request_id) == [0, 3]  # request ids are row positions: nothing renumbered silently
    np.testing.assert_array_equal(t.arrival_s, [0.0, 2.5694100])


def test_no_warning_when_nothing_skipped(tmp_path):
    f = _write(tmp_path, "azure.csv", AZURE_HEAD + GOOD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = load_trace(f, skip_bad_rows=True)
    assert "skipped_bad_rows" not in t.notes


def test_arrivals_going_back_in_time(tmp_path):
    f = _write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,5,6\n2.0,5,6\n1.5,7,8\n")
    with pytest.raises(TraceError, match=r"v\.csv: line 4, column 'arrived_at'.*earlier.*sort=True"):
        load_trace(f)
    t = load_trace(f, sort=True)
    np.testing.assert_array_equal(t.arrival_s, [0.0, 1.5, 2.0])
    assert list(t.request_id) == [0, 2, 1] and t.notes["sorted_by_arrival"]


@pytest.mark.parametrize("value,expected", [("-1.0", "a finite number >= 0"), ("nan", "a finite number >= 0"),
                                            ("soon", "a finite number >= 0")])
def test_vidur_bad_arrival(tmp_path, value, expected):
    f = _write(tmp_path, "v.csv", f"arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,5,6\n{value},5,6\n")
    with pytest.raises(TraceError, match=rf"v\.csv: line 3, column 'arrived_at': got '{value}', expected {expected}"):
        load_trace(f)


def test_line_numbers_count_newlines_inside_quoted_text(tmp_path):
    f = _write(tmp_path, "p.csv", 'arrival_s,prompt_tokens,output_tokens,prompt\n0,3,4,"two\nlines"\n'
                                  '1,3,4,"three\nmore\nlines"\n2,3,zero,plain\n')
    with pytest.raises(TraceError, match=r"p\.csv: line 7, column 'output_tokens': got 'zero'"):
        load_trace(f)


def test_blank_line_is_a_bad_row_not_silently_dropped(tmp_path):
    f = _write(tmp_path, "azure.csv", AZURE_HEAD + GOOD + "\n" + GOOD)
    with pytest.raises(TraceError, match=r"line 3, column 'TIMESTAMP': got a missing value"):
        load_trace(f)


def test_too_many_fields(tmp_path):
    f = _write(tmp_path, "azure.csv", AZURE_HEAD + GOOD + GOOD.strip() + ",99\n")
    with pytest.raises(TraceError, match=r"azure\.csv: line 3: 4 fields, expected 3"):
        load_trace(f)


def test_empty_and_not_gzip_files(tmp_path):
    with pytest.raises(TraceError, match="empty"):
        load_trace(_write(tmp_path, "e.csv", ""), format="azure")
    with pytest.raises(TraceError, match="not a valid gzip"):
        load_trace(_write(tmp_path, "x.csv.gz", "plain text"))


def test_mooncake_bad_lines(tmp_path):
    good = {"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [0]}
    lines = [json.dumps(good), json.dumps({**good, "timestamp": 7, "output_length": "5"}), "{not json"]
    f = tmp_path / "m.jsonl.gz"
    f.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(TraceError, match=r"m\.jsonl\.gz: line 2, column 'output_length': got \"'5'\", expected an integer"):
        load_trace(f)
    with pytest.warns(UserWarning, match="skipped 2 bad row"):
        t = load_trace(f, skip_bad_rows=True)
    assert len(t) == 1 and t.notes["skipped_bad_rows"] == 2
    f2 = tmp_path / "m2.jsonl"
    f2.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(TraceError, match=r"m2\.jsonl: line 2, column '\(json\)'.*expected a JSON object"):
        load_trace(f2)


def test_alpaca_bad_records(tmp_path):
    f = _write(tmp_path, "a.json", json.dumps([{"instruction": "Hi", "output": "Hello"},
                                               {"instruction": "Hi", "output": ""},
                                               {"instruction": 3, "output": "x"}]))
    with pytest.raises(TraceError, match=r"a\.json: record 2, column 'output \(WordPiece tokens\)'.*response text is empty"):
        load_trace(f, arrivals="poisson", rate=1.0, seed=0)
    with pytest.warns(UserWarning):
        t = load_trace(f, arrivals="poisson", rate=1.0, seed=0, skip_bad_rows=True)
    assert t.response == ["Hello"] and t.notes["skipped_bad_rows"] == 2
    with pytest.raises(TraceError, match=r"a2\.json: top-level JSON is a dict"):
        load_trace(_write(tmp_path, "a2.json", "{}"))
    with pytest.raises(TraceError, match=r"a3\.json: not valid JSON"):
        load_trace(_write(tmp_path, "a3.json", "[{"))


def test_burstgpt_option_rejected_by_other_formats(tmp_path):
    f = _write(tmp_path, "azure.csv", AZURE_HEAD + GOOD)
    with pytest.raises(TraceError, match=r"azure\.csv: format 'azure' takes no option --drop-failed \(BurstGPT only\)"):
        load_trace(f, drop_failed=True)


def test_all_rows_bad(tmp_path):
    f = _write(tmp_path, "azure.csv", AZURE_HEAD + "2023-11-16 18:15:47.1,x,1\n")
    # skipping every row would leave nothing: refused at once, naming the first bad row (no warning first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TraceError, match=r"azure\.csv: all 1 row\(s\) are bad, so skipping them leaves none; "
                                             r"first: .*line 2"):
            load_trace(f, skip_bad_rows=True)


def test_duplicate_request_id(tmp_path):
    f = _write(tmp_path, "p.csv", "request_id,arrival_s,prompt_tokens,output_tokens\n7,0,1,1\n8,1,1,1\n7,2,1,1\n")
    with pytest.raises(TraceError, match=r"p\.csv: line 4, column 'request_id': got '7', expected an id not used"):
        load_trace(f)


@pytest.mark.parametrize("fmt", ["azure", "vidur", "length-stats", "burstgpt", "project"])
def test_forced_format_with_missing_columns(tmp_path, fmt):
    f = _write(tmp_path, "x.csv", "arrived_at,foo\n0,1\n")
    with pytest.raises(TraceError, match=rf"x\.csv: {fmt} format needs column\(s\)"):
        load_trace(f, format=fmt)
