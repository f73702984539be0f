"""Capacity search: lands where queueing theory says, resumes without rerunning a probe."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from simulator.cost_model import CostModel
from simulator.profile import load_profile
from syncintellects import capacity
from syncintellects.cli import main
from syncintellects.spec import RunSpec
from traces import write_trace_csv
from traces.schema import make_trace

PROMPT = 1000
SERVICE_S = CostModel(load_profile()).step_s(0, 0, [(PROMPT, 0)])  # one prefill step, one output token


def md1_wait_cdf(lam: float, d: float, t: float) -> float:
    """M/D/1 FCFS: P(wait <= t) (Erlang's formula), for arrival rate lam and service time d."""
    return (1 - lam * d) * sum((lam * (k * d - t)) ** k / math.factorial(k) * math.exp(-lam * (k * d - t))
                               for k in range(int(t // d) + 1))


def md1_capacity(target: float, wait: float, d: float) -> float:
    lo, hi = 0.0, (1 - 1e-12) / d
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if md1_wait_cdf(mid, d, wait) >= target else (lo, mid)
    return lo


@pytest.fixture(scope="module")
def md1_trace(tmp_path_factory):
    """Poisson arrivals, identical requests served one at a time (static batches of 1): an M/D/1 queue."""
    n = 5000
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("md1") / "md1.csv"
    return str(write_trace_csv(make_trace("md1", np.cumsum(rng.exponential(1.0, n)), [PROMPT] * n, [1] * n), path))


def _base(trace):
    # TTFT = wait + service, so "TTFT <= 3 D" is "wait <= 2 D"
    return RunSpec(trace=trace, policy="static", batch_size=1, slo=f"ttft={3 * SERVICE_S * (1 + 1e-9)!r}")


def test_md1_capacity_lands_where_theory_says(md1_trace, tmp_path):
    theory = md1_capacity(0.9, 2 * SERVICE_S, SERVICE_S)
    assert 0.5 < theory * SERVICE_S < 0.7  # a loaded but stable queue
    res = capacity.search(_base(md1_trace), ["static"], [0], target=0.9, out=tmp_path / "cap", tolerance=0.02)[0]
    assert res["capacity_requests_per_s"] == pytest.approx(theory, rel=0.03)
    chain = res["seeds"][0]
    assert (chain["lowest_failing_rate"] - chain["capacity_requests_per_s"]) <= 0.02 * chain["capacity_requests_per_s"]
    assert res["attainment_at_capacity"] >= 0.9
    rates = dict((r, a) for r, a in chain["probes"])
    assert rates[chain["lowest_failing_rate"]] < 0.9


def test_an_interrupted_search_resumes_without_rerunning_finished_probes(md1_trace, tmp_path, monkeypatch):
    out = tmp_path / "cap"
    real = capacity.run_probe
    calls = []

    def stop_after_three(job):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job[0].rate)
        return real(job)

    monkeypatch.setattr(capacity, "run_probe", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        capacity.search(_base(md1_trace), ["static"], [0], target=0.9, out=out)
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "probes").iterdir()}
    assert len(kept) == 3 and not (out / "capacity.json").exists()

    calls.clear()
    monkeypatch.setattr(capacity, "run_probe", lambda job: calls.append(job[0].rate) or real(job))
    res = capacity.search(_base(md1_trace), ["static"], [0], target=0.9, out=out)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "probes").iterdir()}
    assert all(after[k] == v for k, v in kept.items())  # untouched
    assert len(calls) == len(after) - 3 and len(res[0]["seeds"][0]["probes"]) == len(after)
    calls.clear()  # a third run: everything is cached, nothing runs, same bytes
    first = (out / "capacity.json").read_bytes()
    capacity.search(_base(md1_trace), ["static"], [0], target=0.9, out=out)
    assert calls == [] and (out / "capacity.json").read_bytes() == first


def test_a_resumed_search_whose_profile_changed_is_refused(md1_trace, tmp_path, capsys):
    """Probes are keyed by policy, seed and rate: after the profile file changed they would be stale."""
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(load_profile().data))
    out = tmp_path / "c"
    args = ["capacity", "--trace", md1_trace, "--policy", "static", "--num-requests", "200", "--slo", "ttft=0.3",
            "--target", "0.8", "--profile", str(prof), "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 0  # unchanged: every probe reused
    data = json.loads(prof.read_text())
    data["name"] = data.get("name", "p") + "-edited"
    prof.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"profile {prof} has changed" in err[0]
    assert main(args + ["--fresh"]) == 0


def test_capacity_command_writes_json_and_html_and_refuses_another_search_in_the_same_out(md1_trace, tmp_path, capsys):
    out = tmp_path / "c"
    args = ["capacity", "--trace", md1_trace, "--policy", "static,continuous", "--seed", "0,1",
            "--num-requests", "300", "--slo", "ttft=0.3", "--target", "0.8", "--workers", "2", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "capacity.json").read_text())
    assert [r["policy"] for r in res] == ["static", "continuous"]
    for r in res:
        assert r["capacity_min"] <= r["capacity_requests_per_s"] <= r["capacity_max"]
        assert {s["seed"] for s in r["seeds"]} == {0, 1}
    html = (out / "capacity.html").read_text()
    assert "<title>Capacity under the SLO" in html
    capsys.readouterr()
    assert main(args[:-2] + ["--target", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different capacity search" in err and err.count("\n") == 1
    assert main(["capacity", "--policy", "static", "--out", str(tmp_path / "x")]) == 2
    assert "--slo" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(threshold=st.floats(0.01, 500), start=st.floats(0.01, 500), tol=st.sampled_from([0.01, 0.02, 0.05]))
def test_bisection_brackets_a_monotone_threshold_within_tolerance(threshold, start, tol):
    ch = capacity.Chain("p", 0, target=0.9, tolerance=tol, start=start)
    while (rate := ch.next_rate()) is not None:
        ch.record(rate, 1.0 if rate <= threshold else 0.5)
    assert ch.capacity <= threshold < ch.hi
    assert ch.hi - ch.capacity <= tol * ch.capacity * 1.0001 + 1e-5
    assert len(ch.probes) < 40


def test_ray_backend_finds_the_local_capacities(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is part of `make test`")
    import ray

    base = RunSpec(num_requests=150, slo="ttft=1,tpot=0.05")
    kw = dict(target=0.8, tolerance=0.1, start_rate=2.0)
    try:
        remote = capacity.search(base, ["continuous", "static"], [0], out=tmp_path / "ray", backend="ray", **kw)
    finally:
        ray.shutdown()
    local = capacity.search(base, ["continuous", "static"], [0], out=tmp_path / "local", **kw)
    assert remote == local
    assert (tmp_path / "ray" / "capacity.json").read_bytes() == (tmp_path / "local" / "capacity.json").read_bytes()
