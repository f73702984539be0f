"""Sweeps: grid expansion, errors, and the Ray backend agreeing with local processes."""
import pytest

from syncintellects.spec import RunSpec
from syncintellects.sweep import expand, flatten, run_sweep


def test_expand_is_the_ordered_cartesian_product():
    specs = expand(RunSpec(num_requests=10), {"policy": ["static", "continuous"], "rate": [1.0, 2.0, 3.0]})
    assert [(s.policy, s.rate) for s in specs] == [(p, r) for p in ("static", "continuous") for r in (1.0, 2.0, 3.0)]
    assert all(s.num_requests == 10 for s in specs)
    with pytest.raises(ValueError, match="unknown field 'rates'"):
        expand(RunSpec(), {"rates": [1]})
    with pytest.raises(ValueError, match="non-empty list of values"):
        expand(RunSpec(), {"rate": []})


def test_flatten_names_nested_figures():
    assert flatten({"a": 1, "e2e": {"mean": 2.0, "p99": 3.0}, "skip": [1]}) == {"a": 1, "e2e_mean": 2.0, "e2e_p99": 3.0}


def test_ray_backend_gives_the_local_results(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is part of `make test`")
    import ray

    specs = expand(RunSpec(num_requests=120), {"policy": ["static", "continuous"], "rate": [1.0, 3.0]})
    try:
        remote = run_sweep(specs, backend="ray", progress=False)
    finally:
        ray.shutdown()
    local = run_sweep(specs, backend="serial", progress=False)
    assert remote.drop("sim_wall_s").equals(local.drop("sim_wall_s"))


def test_dashboard_never_averages_runs_that_differ_in_more_than_the_seed():
    import polars as pl

    from syncintellects.dashboard import aggregate

    df = pl.DataFrame({"trace": ["a", "b", "a", "b"], "policy": ["p"] * 4, "predictor": [None] * 4,
                       "length_control": [False] * 4, "rate": [1.0] * 4, "seed": [0, 0, 1, 1],
                       "e2e_latency_s_mean": [1.0, 3.0, 1.2, 3.2]})
    agg = aggregate(df)
    assert agg["series"].to_list() == ["p / trace=a", "p / trace=b"]
    assert agg["e2e_latency_s_mean"].to_list() == pytest.approx([1.1, 3.1]) and agg["seeds"].to_list() == [2, 2]


def test_sweep_spec_file_and_grid_flags_do_not_mix(tmp_path, capsys):
    import json

    from syncintellects.cli import main

    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"base": {"num_requests": 50}, "grid": {"policy": ["static"], "rate": [1.0]}}))
    assert main(["sweep", "--spec", str(spec), "--rate", "2", "--out", str(tmp_path / "a")]) == 2
    assert "put --rate in its base or grid" in capsys.readouterr().err
    assert main(["sweep", "--spec", str(spec), "--backend", "serial", "--out", str(tmp_path / "b")]) == 0
