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
    with pytest.raises(ValueError, match="no values"):
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
