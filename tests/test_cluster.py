"""A cluster of replicas: exact against the single engine, every request served once, routers."""
import json

import numpy as np
import polars as pl
import pytest

from conftest import small_trace
from policies.predictors import OraclePredictor
from policies.routers import ROUTERS, ReplicaLoads, make_router
from policies.schedulers.continuous import ContinuousBatching
from policies.schedulers.static import StaticBatching
from simulator.cluster import simulate_cluster
from simulator.engine import SimConfig, simulate
from syncintellects.cli import main
from syncintellects.spec import RunSpec, run_simulation
from traces.schema import make_trace


def _files(out):
    s = json.loads((out / "summary.json").read_text())
    s.pop("sim_wall_s")
    return (out / "requests.parquet").read_bytes(), (out / "steps.parquet").read_bytes(), s


@pytest.mark.parametrize("spec", [
    RunSpec(policy="continuous", rate=5.0, num_requests=600, kv_blocks=500),  # preemptions
    RunSpec(policy="static", batch_size=8, rate=1.0, num_requests=300),
    RunSpec(policy="srpt", predictor="noisy", rate=4.0, num_requests=400),
    RunSpec(policy="syncintellects", predictor="oracle", length_control=True, rate=2.0, num_requests=300),
])
def test_one_replica_cluster_equals_the_single_engine_byte_for_byte(tmp_path, spec):
    from syncintellects.spec import build_policy, length_response_model, prepare

    trace, policy, cfg = prepare(spec)
    single = simulate(trace, policy, cfg, length_response=length_response_model(spec))
    cluster = simulate_cluster(trace, [build_policy(spec, trace)], make_router("jsq", 1), cfg,
                               length_response=length_response_model(spec))
    assert _files(single.write(tmp_path / "a")) == _files(cluster.write(tmp_path / "b"))
    assert single.config == cluster.config


def test_replicas_fed_identical_copies_of_a_trace_each_behave_as_the_single_engine():
    """Round-robin over two replicas, every arrival doubled: each replica sees exactly the original
    trace, so each must give the single engine's timings exactly (the deferred decode runs stop only
    at their own replica's arrivals)."""
    base = small_trace(n=120, rate=6.0, seed=4, prompt=(50, 600), output=(20, 400))
    twice = make_trace("twice", np.repeat(base.arrival_s, 2), np.repeat(base.prompt_tokens, 2),
                       np.repeat(base.output_tokens, 2))
    cfg = SimConfig(kv_blocks=300)
    one = simulate(base, ContinuousBatching(), cfg).requests
    two = simulate_cluster(twice, [ContinuousBatching(), ContinuousBatching()], make_router("round-robin", 2), cfg).requests
    assert one["preemptions"].sum() > 0
    for k in (0, 1):
        part = two.filter(pl.col("replica") == k)
        for col in ("admitted_s", "first_token_s", "last_token_s", "finish_s", "preemptions", "generated_tokens"):
            assert part[col].to_list() == one[col].to_list(), (k, col)


@pytest.mark.parametrize("router", sorted(ROUTERS))
@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_every_request_is_served_once_across_replicas(router, policy):
    spec = RunSpec(policy=policy, rate=9.0, num_requests=900, replicas=3, router=router, kv_blocks=900)
    res = run_simulation(spec)
    req, steps, s = res.requests, res.steps, res.summary
    routed = req.filter(pl.col("replica").is_not_null())
    assert routed.height + s["num_rejected"] >= req.height and req["request_id"].n_unique() == req.height
    fin = req.filter(~pl.col("rejected"))
    assert (fin["generated_tokens"] == fin["output_tokens"]).all() and fin["replica"].null_count() == 0
    assert [r["num_requests"] for r in s["replicas"]] == [routed.filter(pl.col("replica") == k).height for k in range(3)]
    assert sum(r["num_finished"] for r in s["replicas"]) == s["num_finished"]
    for k in range(3):  # the tokens each replica's steps made are exactly those of its own requests
        mine = steps.filter(pl.col("replica") == k)["output_tokens"].sum()
        assert mine == req.filter(pl.col("replica") == k)["generated_tokens"].sum()
        # a replica runs one step at a time
        st = steps.filter(pl.col("replica") == k)
        assert (st["start_s"][1:] >= st["end_s"][:-1] - 1e-12).all()
    assert all(r["num_requests"] > 0 for r in s["replicas"])


def test_same_seed_same_bytes(tmp_path):
    args = ["simulate", "--num-requests", "400", "--rate", "8", "--replicas", "3", "--router", "length-aware",
            "--slo", "ttft=1,tpot=0.05", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0 and main(args + ["--out", str(tmp_path / "b")]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert len(s["replicas"]) == 3 and s["router"] == "length-aware"
    df = pl.read_parquet(tmp_path / "a" / "requests.parquet")
    for k, r in enumerate(s["replicas"]):  # per-replica attainment: the replica's own requests
        assert r["slo_attainment"] == pytest.approx(df.filter(pl.col("replica") == k)["slo_met"].mean())
    assert pl.read_parquet(tmp_path / "a" / "requests.parquet")["slo_met"].dtype == pl.Boolean


def test_round_robin_deals_in_turn_and_jsq_picks_the_shortest_queue():
    rr = make_router("round-robin", 3)
    assert [rr.choose(None, 0, None) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    jsq = make_router("jsq", 3)
    assert jsq.choose(None, 0, ReplicaLoads(requests=[4, 2, 2], work=[0, 0, 0])) == 1
    ll = make_router("least-loaded", 3)
    assert ll.choose(None, 0, ReplicaLoads(requests=[1, 1, 9], work=[500, 900, 100])) == 2
    with pytest.raises(ValueError, match="--router"):
        make_router("random", 2)


def test_length_aware_routing_groups_similar_lengths():
    trace = small_trace(n=800, rate=3.0, seed=7, output=(1, 1000))
    policies = [ContinuousBatching() for _ in range(4)]
    res = simulate_cluster(trace, policies, make_router("length-aware", 4), predictor=OraclePredictor())
    med = [res.requests.filter(pl.col("replica") == k)["output_tokens"].median() for k in range(4)]
    assert med == sorted(med) and med[3] > 4 * med[0]
    rr = simulate_cluster(trace, [ContinuousBatching() for _ in range(4)], make_router("round-robin", 4))
    spread = [rr.requests.filter(pl.col("replica") == k)["output_tokens"].median() for k in range(4)]
    assert max(spread) < 1.5 * min(spread)


def test_a_heterogeneous_cluster_runs_each_replica_on_its_own_profile(tmp_path):
    out = tmp_path / "het"
    assert main(["simulate", "--num-requests", "300", "--rate", "2", "--replica-profiles",
                 "a100-llama-2-7b,h100-llama-2-7b", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    a100, h100 = s["replicas"]
    assert (a100["profile"], h100["profile"]) == ("a100-llama-2-7b", "h100-llama-2-7b")
    assert h100["tpot_s"]["mean"] < 0.8 * a100["tpot_s"]["mean"]  # the H100 decodes faster
    assert [r["profile"] for r in json.loads((out / "config.json").read_text())["replicas"]] == [a100["profile"], h100["profile"]]


def test_bad_cluster_flags_are_one_line(tmp_path, capsys):
    assert main(["simulate", "--num-requests", "5", "--replicas", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--replicas" in capsys.readouterr().err
    assert main(["simulate", "--num-requests", "5", "--replicas", "3", "--replica-profiles", "a100-llama-2-7b-fp16",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--replica-profiles" in capsys.readouterr().err


def test_a_sweep_over_replicas_and_routers_reports_attainment_and_goodput(tmp_path):
    out = tmp_path / "sw"
    assert main(["sweep", "--policy", "continuous", "--rate", "8", "--replicas", "1,2", "--router", "jsq",
                 "--num-requests", "200", "--slo", "ttft=0.5,tpot=0.05", "--backend", "serial", "--out", str(out)]) == 0
    df = pl.read_parquet(out / "results.parquet")
    assert df["replicas"].to_list() == [1, 2] and df["slo"].to_list() == ["ttft=0.5,tpot=0.05"] * 2
    assert df["slo_attainment"].is_between(0, 1).all() and (df["goodput_requests_per_s"] > 0).all()
    assert df["slo_attainment"][1] >= df["slo_attainment"][0]  # twice the GPUs for the same load


def test_decode_horizon_is_the_duration_of_the_run_no_arrival_stops(monkeypatch):
    """The cluster defers a decode run until its horizon: it must be exactly what the run takes."""
    from simulator.executor import SimExecutor

    real = SimExecutor.run
    checked = []

    def run(self, plan, now, next_arrival):
        if not plan.prefill and plan.decode:
            horizon = self.decode_horizon_s(plan)
            result = real(self, plan, now, float("inf"))
            assert result.end_s == now + horizon
            checked.append(result.num_steps)
            return result
        return real(self, plan, now, next_arrival)

    monkeypatch.setattr(SimExecutor, "run", run)
    for policy in (ContinuousBatching(watermark=0.0), StaticBatching(batch_size=6)):
        simulate(small_trace(n=80, rate=8.0, seed=2), policy, SimConfig(kv_blocks=150))
    assert len(checked) > 50 and max(checked) > 1
