"""Predictor data sources, source balancing, the error-model choice and the latency-QoS frontier's arithmetic."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policies.predictors import errors, make_predictor
from policies.predictors.sources import load_mix, load_source, split_by_source
from policies.predictors.train import prompt_ids, source_weights
from syncintellects.frontier import frontier_rates, operating_point, pareto, summarise

FIXTURE = Path(__file__).parent / "fixtures" / "alpaca_llama2_sample.json"


def test_alpaca_eval_records_carry_their_sub_source_and_multi_target():
    recs = load_source("alpaca-eval")
    assert len(recs) == 805
    assert {r["source"] for r in recs} == {f"alpaca-eval/{s}" for s in
                                           ("helpful_base", "koala", "oasst", "selfinstruct", "vicuna")}
    multi = load_source("alpaca-eval-multi")
    assert [r["instruction"] for r in multi] == [r["instruction"] for r in recs]
    t = np.array([r["target_tokens"] for r in multi])
    assert (t > 0).all() and len(np.unique(t)) > 700


def test_mix_of_a_file_and_errors_name_the_source(tmp_path):
    recs = load_mix(f"{FIXTURE},{FIXTURE}")
    assert len(recs) == 80 and {r["source"] for r in recs} == {"alpaca_llama2_sample"}
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_mix("nope.json")
    with pytest.raises(ValueError, match="sharegpt:N"):
        load_source("sharegpt:x")


def test_source_weights_give_each_family_the_same_total():
    recs = [{"source": "sharegpt"}] * 30 + [{"source": "alpaca-eval/koala"}] * 5 + [{"source": "alpaca-eval/oasst"}] * 5
    w = source_weights(recs)
    assert w[:30].sum() == pytest.approx(w[30:].sum()) and w.mean() == pytest.approx(1.0)
    assert source_weights(recs[:30]) is None


def test_prompt_ids_group_equal_prompts():
    assert prompt_ids(["a", "b", "a", "c"]).tolist() == [0, 1, 0, 2]


def test_split_by_source_leaves_no_prompt_on_both_sides():
    recs = load_source("alpaca-eval")[:300]
    tr, te = split_by_source(recs, {"alpaca-eval/koala"})
    assert te and all(r["source"] == "alpaca-eval/koala" for r in te)
    assert not {r["instruction"] for r in tr} & {r["instruction"] for r in te}


def test_error_model_choice_defaults_to_unseen_source():
    p = make_predictor("prompt")
    assert p.error_model == "unseen-source" and p.error == errors.PROMPT_ERROR_UNSEEN
    q = make_predictor("prompt", error_model="in-distribution")
    assert q.error == errors.PROMPT_ERROR_IN
    g = make_predictor("progressive", error_model="in-distribution")
    assert g.error == errors.PROGRESSIVE_ERROR_IN
    assert make_predictor("progressive").error == errors.PROGRESSIVE_ERROR_UNSEEN
    with pytest.raises(ValueError, match="error_model"):
        make_predictor("prompt", error_model="optimistic")


def test_a_model_directory_carrying_error_models_uses_its_own_not_the_defaults(tmp_path):
    """A model's ``error_models`` (what the bundled prompt-lora carries) replace the shipped defaults in a
    text-free run, per error model; without them the defaults apply (test above)."""
    import json
    import shutil

    from policies.predictors.learned import SHIPPED

    d = tmp_path / "m"
    shutil.copytree(SHIPPED / "prompt", d)
    meta = json.loads((d / "model.json").read_text())
    mine = {"in-distribution": {"b": 0.5, "c": -0.1, "sigma": 0.4, "n": 10, "measured": "x"},
            "unseen-source": {"b": 0.2, "c": -0.3, "sigma": 0.45, "n": 10, "measured": "y"}}
    (d / "model.json").write_text(json.dumps({**meta, "error_models": mine}))
    for em in errors.ERROR_MODELS:
        p = make_predictor("prompt", model_dir=str(d), error_model=em)
        assert p.error == {k: mine[em][k] for k in ("b", "c", "sigma")}
    assert make_predictor("prompt", model_dir=str(d), error={"b": 1, "c": 0, "sigma": 0}).error["b"] == 1


def test_unseen_source_errors_are_worse_than_in_distribution():
    # Less shrinkage b (worse ranking) or more noise on prompts from a source never seen.
    a, b = errors.PROMPT_ERROR_IN, errors.PROMPT_ERROR_UNSEEN
    assert b["b"] / b["sigma"] < a["b"] / a["sigma"]


def _row(label, mf, q, rate, seed, e2e, qos, tok=100.0):
    return {"label": label, "min_fraction": mf, "align_quantile": q, "rate": rate, "seed": seed, "mean_e2e_s": e2e,
            "mean_qos": qos, "throughput_output_tokens_per_s": tok}


def test_frontier_summary_pareto_and_operating_point():
    rows = [_row("control off", None, None, 1.0, 0, 10.0, 1.0), _row("control off", None, None, 1.0, 1, 20.0, 1.0),
            _row("a", 0.6, 0.5, 1.0, 0, 8.0, 0.90), _row("a", 0.6, 0.5, 1.0, 1, 16.0, 0.92),
            _row("b", 0.8, 0.5, 1.0, 0, 9.0, 0.96), _row("b", 0.8, 0.5, 1.0, 1, 18.0, 0.97),
            _row("c", 0.9, 0.9, 1.0, 0, 9.5, 0.95), _row("c", 0.9, 0.9, 1.0, 1, 19.5, 0.95)]
    s = {x["label"]: x for x in summarise(rows)}
    assert s["a"]["latency_reduction_pct"] == pytest.approx(20.0) and s["a"]["mean_qos"] == pytest.approx(0.91)
    assert s["b"]["latency_reduction_pct"] == pytest.approx(10.0) and s["b"]["min_run_qos"] == pytest.approx(0.96)
    assert {x["label"] for x in pareto(list(s.values()))} == {"control off", "a", "b"}  # c is beaten by b
    op = operating_point(list(s.values()))
    assert op["label"] == "b"
    assert operating_point(list(s.values()), target=0.99) is None
    assert frontier_rates((0.5, 1.0, 2.0, 4.0)) == (1.0, 2.0) and frontier_rates((1.5, 4.0)) == (1.5, 4.0)


def test_frontier_files_from_reproduce(tmp_path):
    from syncintellects.frontier import write_outputs

    rows = [_row("control off", None, None, 1.0, 0, 10.0, 1.0), _row("b", 0.8, 0.5, 1.0, 0, 9.0, 0.96)]
    md = write_outputs(rows, tmp_path, (1.0,), (0,), "unseen-source")
    assert "Operating point" in md and "guard" not in md.split("Operating point")[0].split("\n")[0]
    d = json.loads((tmp_path / "frontier.json").read_text())
    assert d["operating_point"]["label"] == "b" and (tmp_path / "frontier.html").stat().st_size > 10_000
