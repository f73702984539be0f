"""The user-facing commands, end to end on the bundled real trace (small N)."""
import json

import polars as pl
import pytest

from syncintellects.cli import main

SUMMARY_KEYS = ("num_requests", "num_finished", "num_rejected", "output_tokens", "throughput_requests_per_s",
                "throughput_output_tokens_per_s", "sim_wall_s")
REQUEST_COLUMNS = ("request_id", "arrival_s", "first_token_s", "finish_s", "prompt_tokens", "output_tokens")


@pytest.mark.parametrize("policy,extra", [("continuous", []), ("static", ["--batch-size", "8"])])
def test_simulate_writes_the_contract_files(tmp_path, policy, extra):
    out = tmp_path / policy
    rc = main(["simulate", "--trace", "azure-conv", "--policy", policy, "--rate", "1.5", "--num-requests", "300",
               "--seed", "0", "--out", str(out), "--quiet", *extra])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for k in SUMMARY_KEYS:
        assert k in s, k
    for k in ("e2e_latency_s", "ttft_s", "tpot_s"):
        assert set(s[k]) >= {"mean", "p50", "p90", "p99"} and s[k]["p50"] <= s[k]["p99"]
    df = pl.read_parquet(out / "requests.parquet")
    assert set(REQUEST_COLUMNS) <= set(df.columns) and df.height == 300 == s["num_requests"]
    assert s["num_finished"] + s["num_rejected"] == 300
    assert s["output_tokens"] == int(df.filter(~pl.col("rejected"))["output_tokens"].sum())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["policy"] == policy and cfg["spec"]["rate"] == 1.5
    if policy == "static":  # task batching: a batch's responses are returned together
        groups = df.filter(~pl.col("rejected")).group_by("finish_s").len()
        assert groups["len"].max() > 1


def test_simulate_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["simulate", "--policy", "no-such", "--num-requests", "5", "--out", str(tmp_path)]) == 2
    assert "unknown policy 'no-such'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,ten,5\n")
    assert main(["simulate", "--trace", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "prompt_tokens" in err


def test_sweep_and_dashboard(tmp_path):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--trace", "azure-conv", "--policy", "static,continuous", "--rate", "1,2", "--num-requests", "150",
               "--workers", "2", "--out", str(out), "--dashboard"])
    assert rc == 0
    df = pl.read_parquet(out / "results.parquet")
    assert df.height == 4
    assert df.select("policy", "rate").rows() == [("static", 1.0), ("static", 2.0), ("continuous", 1.0), ("continuous", 2.0)]
    assert (df["num_finished"] + df["num_rejected"] == 150).all()
    html = (out / "dashboard.html").read_text()
    assert "mean end-to-end latency" in html.lower() and "continuous" in html
    # the same sweep again gives the same table (rows in spec order, deterministic runs)
    main(["sweep", "--trace", "azure-conv", "--policy", "static,continuous", "--rate", "1,2", "--num-requests", "150",
          "--backend", "serial", "--out", str(tmp_path / "again")])
    again = pl.read_parquet(tmp_path / "again" / "results.parquet")
    assert again.drop("sim_wall_s").equals(df.drop("sim_wall_s"))


def test_simulate_reads_text_traces_with_synthetic_arrivals(tmp_path, capsys):
    from pathlib import Path

    fixture = str(Path(__file__).parent / "fixtures" / "traces" / "alpaca_handwritten.json")
    assert main(["simulate", "--trace", fixture, "--out", str(tmp_path / "no"), "--quiet"]) == 2
    assert "--synthetic-arrivals" in capsys.readouterr().err  # the error names the flags that fix it
    out = tmp_path / "yes"
    assert main(["simulate", "--trace", fixture, "--synthetic-arrivals", "poisson", "--synthetic-rate", "2",
                 "--policy", "sjf", "--predictor", "oracle", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert s["num_finished"] == s["num_requests"] > 0
    assert cfg["spec"]["trace_options"] == {"arrivals": "poisson", "rate": 2.0, "seed": 0}


def test_predictor_param_chooses_the_error_model_in_simulate_and_sweep(tmp_path):
    """``--predictor-param error_model=...`` reaches the predictor: the run's predictions are those of
    ``make_predictor(..., error_model=...)`` on the same requests, and differ from the default's."""
    from policies.predictors import make_predictor
    from syncintellects.spec import RunSpec, load_spec_trace
    from syncintellects.sweep import run_key
    from simulator.engine import SimConfig, simulate
    from policies.registry import make_policy

    base = ["simulate", "--trace", "azure-conv", "--policy", "sjf", "--predictor", "prompt", "--rate", "4",
            "--num-requests", "120", "--quiet"]
    preds = {}
    for em in ("in-distribution", "unseen-source", None):
        out = tmp_path / str(em)
        extra = ["--predictor-param", f"error_model={em}"] if em else []
        assert main(base + extra + ["--out", str(out)]) == 0
        preds[em] = pl.read_parquet(out / "requests.parquet").sort("request_id")["predicted_tokens"]
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["spec"]["predictor_params"] == ({"error_model": em} if em else {})
    assert preds["unseen-source"].equals(preds[None])  # the documented default
    assert not preds["in-distribution"].equals(preds[None])
    spec = RunSpec(trace="azure-conv", policy="sjf", predictor="prompt", rate=4.0, num_requests=120)
    trace = load_spec_trace(spec)
    direct = simulate(trace, make_policy("sjf", predictor=make_predictor("prompt", trace=trace, seed=0,
                                                                         error_model="in-distribution")),
                      SimConfig(profile=spec.profile, seed=0))
    got = direct.requests.sort("request_id")["predicted_tokens"]
    assert got.equals(preds["in-distribution"])

    # a sweep takes it for every run, as a JSON column; a spec without it keeps the key it had before
    out = tmp_path / "sweep"
    assert main(["sweep", "--trace", "azure-conv", "--policy", "sjf", "--predictor", "prompt", "--rate", "4",
                 "--num-requests", "120", "--predictor-param", "error_model=in-distribution", "--backend", "serial",
                 "--out", str(out)]) == 0
    df = pl.read_parquet(out / "results.parquet")
    assert json.loads(df["predictor_params"][0]) == {"error_model": "in-distribution"}
    with_params = spec.with_(predictor_params=(("error_model", "in-distribution"),))
    assert df["run_key"][0] == run_key(with_params) != run_key(spec)
    d = spec.to_dict()
    del d["predictor_params"]
    import hashlib
    assert run_key(spec).endswith(hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10])
