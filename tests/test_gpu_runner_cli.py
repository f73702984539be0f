"""Profiling, validation and the runner's CLI: profiles the simulator accepts, a fit that recovers
known coefficients, validation reports, and `run` writing the same files as `simulate`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from simulator.profile import load_profile
from gpu_runner.validate import GATED, compare, failures
from syncintellects.cli import main


def test_runner_commands_import_without_torch_and_list_models():
    code = ("import sys, syncintellects.cmd_runner, gpu_runner.models, gpu_runner.validate; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "syncintellects.cli", "models"], check=True, capture_output=True,
                         text=True).stdout
    assert "llama-2-7b" in out and "tiny-llama" in out


def test_compare_and_tolerance_gate():
    real = {"e2e_latency_s": {"mean": 2.0, "p50": 1.0, "p99": 4.0}, "ttft_s": {"mean": 0.5}, "tpot_s": {"mean": 0.01},
            "throughput_output_tokens_per_s": 100.0}
    sim = {"e2e_latency_s": {"mean": 2.3, "p50": 1.0, "p99": 3.0}, "ttft_s": {"mean": 0.5}, "tpot_s": {"mean": None},
           "throughput_output_tokens_per_s": 95.0}
    rep = compare(real, sim)
    assert rep["e2e_latency_s.mean"]["rel_error"] == pytest.approx(0.15)
    assert rep["e2e_latency_s.p99"]["rel_error"] == pytest.approx(-0.25)
    assert rep["throughput_output_tokens_per_s"]["rel_error"] == pytest.approx(-0.05)
    assert rep["tpot_s.mean"]["rel_error"] is None
    # TPOT could not be computed: that fails the gate too; p50 is reported, not gated
    assert failures(rep, 0.10) == ["e2e_latency_s.mean", "e2e_latency_s.p99", "tpot_s.mean"]
    assert failures(rep, 0.30) == ["tpot_s.mean"]
    sim["tpot_s"]["mean"] = 0.0104
    assert failures(compare(real, sim), 0.30) == []
    assert set(GATED) == {"e2e_latency_s.mean", "e2e_latency_s.p99", "ttft_s.mean", "tpot_s.mean",
                          "throughput_output_tokens_per_s"}


def test_fit_recovers_known_coefficients():
    """Samples generated from the step-time model itself are fitted exactly (no noise)."""
    from gpu_runner.fit import fit
    from simulator.cost_model import CostModel
    from simulator.profile import Profile

    truth = {"fixed_step_ms": 0.0, "linear_ops": [[1, 0.5], [8, 0.9], [64, 2.0], [512, 9.0], [4096, 60.0]],
             "decode_attn": {"per_step_ms": 0.05, "per_seq_ms": 0.02, "per_ctx_token_ms": 1e-4},
             "prefill_attn": {"per_chunk_ms": 0.1, "per_sq_token_ms": 2e-5, "per_ctx_token_ms": 1e-5,
                              "padded_sq_token_ms": 5e-5,   # a padded group: one masked call, dearer per C^2
                              "cached_sq_token_ms": 4e-5,   # a chunk on a cached prefix: one masked call too
                              "mixed_step_ms": 0.3,          # decode rows and chunks in one step
                              "mixed_row_ktoken_ms": 0.02}}  # and each decode row per 1,000 prompt tokens
    cost = CostModel(Profile({"coefficients": truth}, "<truth>"))
    samples = []
    for b in (1, 8, 64):
        for k in (100, 1000):
            samples.append({"kind": "decode", "decode_rows": b, "sum_ctx": float(b * k), "chunks": [], "pad_to": 0,
                            "median_ms": cost.step_s(b, b * k) * 1e3})
    for c, k in ((1, 0), (8, 0), (64, 0), (512, 0), (4096, 0), (64, 512), (512, 1024), (1024, 128), (768, 32)):
        samples.append({"kind": "prefill", "decode_rows": 0, "sum_ctx": 0.0, "chunks": [[c, k]], "pad_to": 0,
                        "median_ms": cost.step_s(0, 0, [(c, k)]) * 1e3})
    for r, p in ((4, 64), (8, 512), (2, 512), (4, 1024)):
        samples.append({"kind": "padded", "decode_rows": 0, "sum_ctx": 0.0, "chunks": [[p, 0]] * r, "pad_to": p,
                        "median_ms": cost.step_s(0, 0, [(p, 0)] * r, p) * 1e3})
    for b, c in ((8, 64), (64, 512), (16, 256), (32, 2048)):
        samples.append({"kind": "mixed", "decode_rows": b, "sum_ctx": float(b * 300), "chunks": [[c, 0]], "pad_to": 0,
                        "median_ms": cost.step_s(b, b * 300, [(c, 0)]) * 1e3})
    coeff, report = fit(samples)
    assert report["max_abs_rel_error"] < 1e-5
    assert coeff["prefill_attn"]["padded_sq_token_ms"] == pytest.approx(5e-5, rel=1e-3)
    assert coeff["prefill_attn"]["per_sq_token_ms"] == pytest.approx(2e-5, rel=1e-3)
    assert coeff["prefill_attn"]["mixed_step_ms"] == pytest.approx(0.3, rel=1e-3)
    assert coeff["prefill_attn"]["cached_sq_token_ms"] == pytest.approx(4e-5, rel=1e-3)
    assert coeff["prefill_attn"]["mixed_row_ktoken_ms"] == pytest.approx(0.02, rel=1e-3)
    fitted = CostModel(Profile({"coefficients": coeff}, "<fit>"))
    for b, k in ((2, 500), (32, 3000)):  # between the grid points too
        assert fitted.step_s(b, b * k) == pytest.approx(cost.step_s(b, b * k), rel=0.05)


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory):
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("prof") / "tiny.json"
    assert main(["profile", "--model", "tiny-llama", "--device", "cpu", "--quick", "--kv-tokens", "8192",
                 "--out", str(path), "--quiet"]) == 0
    return path


def test_quick_profile_is_a_simulator_profile(quick_profile, tmp_path):
    import torch
    import transformers


    prof = load_profile(quick_profile)
    d = prof.data
    assert d["versions"]["torch"] == torch.__version__ and d["versions"]["transformers"] == transformers.__version__
    assert d["runner"]["torch_threads"] == 1 and d["dtype"] == "float32" and d["model"]["name"] == "tiny-llama"
    assert prof.kv_blocks(16) == 8192 // 16  # the --kv-tokens budget, exactly
    kinds = {s["kind"] for s in d["samples"]}
    assert kinds == {"decode", "prefill", "padded", "mixed"}
    for s in d["samples"]:
        assert len(s["ms"]) >= 5 and s["median_ms"] == pytest.approx(float(np.median(s["ms"])))
    assert d["fit"]["median_abs_rel_error"] < 0.25
    out = tmp_path / "sim"
    assert main(["simulate", "--profile", str(quick_profile), "--trace", "azure-conv", "--num-requests", "20",
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["kv_blocks_capacity"] == 512


def test_run_writes_the_simulators_files(quick_profile, tmp_path):
    args = ["--trace", "azure-conv", "--policy", "continuous", "--rate", "50", "--num-requests", "12", "--seed", "0"]
    assert main(["run", "--model", "tiny-llama", "--device", "cpu", *args, "--length-scale", "0.1",
                 "--profile", str(quick_profile), "--out", str(tmp_path / "real"), "--quiet"]) == 0
    assert main(["simulate", *args, "--profile", str(quick_profile), "--out", str(tmp_path / "sim"), "--quiet"]) == 0
    real = pl.read_parquet(tmp_path / "real" / "requests.parquet")
    sim = pl.read_parquet(tmp_path / "sim" / "requests.parquet")
    assert real.columns == sim.columns
    assert pl.read_parquet(tmp_path / "real" / "steps.parquet").columns == \
        pl.read_parquet(tmp_path / "sim" / "steps.parquet").columns
    rs = json.loads((tmp_path / "real" / "summary.json").read_text())
    ss = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert set(ss) - {"sim_wall_s"} <= set(rs)
    assert rs["num_finished"] == 12
    # forced lengths: the scaled trace's output lengths, exactly
    assert (real["generated_tokens"] == real["output_tokens"]).all()
    assert (real["output_tokens"] == np.maximum(np.rint(sim["trace_output_tokens"].to_numpy() * 0.1), 1)).all()
    rc = json.loads((tmp_path / "real" / "config.json").read_text())
    sc = json.loads((tmp_path / "sim" / "config.json").read_text())
    assert rc["policy"] == sc["policy"] and rc["policy_config"] == sc["policy_config"]
    assert rc["kv_blocks"] == 512 and rc["torch_threads"] == 1


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_validate_writes_report_and_gates_on_tolerance(quick_profile, tmp_path, policy):
    out = tmp_path / policy
    base = ["validate", "--model", "tiny-llama", "--device", "cpu", "--profile", str(quick_profile), "--trace",
            "azure-conv", "--policy", policy, "--rate", "40", "--num-requests", "24", "--seed", "1",
            "--length-scale", "0.1", "--out", str(out), "--quiet"]
    # continuous: the verdict on the quick grid re-measured twice in between the run's steps
    interleave = ["--interleave", "2"] if policy == "continuous" else ["--interleave", "0"]
    status = main(base + interleave + ["--tolerance", "1e9"])
    assert status == 0
    doc = json.loads((out / "validation.json").read_text())
    if policy == "continuous":
        inter = doc["interleaved"]
        assert inter["sweeps"] == 2 and inter["kinds"] == ["decode", "loose"] and inter["timed_during_run"] > 0
        assert (out / "interleaved-profile.json").exists() and doc["machine_probe"]["factor"] is None
        assert "interleaved" in doc["verdict_basis"] and doc["replay_stored_profile"]["drift"] > 0
        # how the machine moved since profiling: per grid point, the time now over the stored time; the median
        stored = load_profile(quick_profile).data
        now = json.loads((out / "interleaved-profile.json").read_text())["samples"]
        key = lambda s: (s["kind"], s["decode_rows"], round(s["sum_ctx"]), str(s["chunks"]), s["pad_to"])
        ref = {key(s): s["median_ms"] for s in stored["samples"]}
        ratios = [s["median_ms"] / ref[key(s)] for s in now if key(s) in ref]
        assert len(ratios) == inter["points"] and inter["median_ms_vs_stored"] == pytest.approx(np.median(ratios))
        assert doc["profile_created"] == stored["created"]
    else:
        assert doc["interleaved"] is None and doc["machine_probe"]["factor"] > 0
    names = ["e2e_latency_s.mean", "e2e_latency_s.p50", "e2e_latency_s.p99", "ttft_s.mean", "tpot_s.mean",
             "throughput_output_tokens_per_s"]
    for name in names:
        v = doc["metrics"][name]
        assert v["real"] > 0 and v["sim"] > 0
        assert v["rel_error"] == pytest.approx((v["sim"] - v["real"]) / v["real"])
    real = json.loads((out / "real" / "summary.json").read_text())
    assert doc["metrics"]["e2e_latency_s.mean"]["real"] == pytest.approx(real["e2e_latency_s"]["mean"])
    assert (out / "validation.html").stat().st_size > 1000
    # same trace, same KV, same decisions about who is served: both finish every request
    assert doc["real_summary"]["num_finished"] == doc["sim_summary"]["num_finished"] == 24
    # a zero tolerance fails unless the two engines agree to the last bit
    assert main(base + interleave + ["--tolerance", "0"]) == 1


def test_validate_without_plotly_writes_the_verdict_and_says_it_skips_the_page(quick_profile, tmp_path, capsys,
                                                                               monkeypatch):
    """Where the package set was carried by hand (the GPU check's device image has no plotly), the verdict is
    still complete; only the page is left out, and the command says so."""
    monkeypatch.setitem(sys.modules, "plotly", None)  # `import plotly` now raises ImportError
    out = tmp_path / "v"
    status = main(["validate", "--model", "tiny-llama", "--device", "cpu", "--profile", str(quick_profile), "--trace",
                   "azure-conv", "--policy", "static", "--rate", "40", "--num-requests", "8", "--seed", "1",
                   "--length-scale", "0.1", "--interleave", "0", "--probe-every", "0", "--tolerance", "1e9",
                   "--out", str(out), "--quiet"])
    assert status == 0
    doc = json.loads((out / "validation.json").read_text())
    assert doc["metrics"]["e2e_latency_s.mean"]["real"] > 0 and not (out / "validation.html").exists()
    assert "plotly is not installed: validation.html not written" in capsys.readouterr().err
