"""The measured step-time model's newer terms and the runner's minimum-of-k step timer: a fit on synthetic
step times recovers the per-extra-chunk term and prices unseen steps exactly; decode steps are priced from
the measured grid; with k repeats a step counts only its fastest run, and the run's tokens, decisions and
KV are those of a run without repeats."""
from __future__ import annotations

import numpy as np
import pytest

from simulator.cost_model import CostModel
from simulator.profile import Profile
from traces.schema import make_trace

TRUTH = {"fixed_step_ms": 0.0, "linear_ops": [[1, 0.5], [8, 0.9], [64, 2.0], [512, 9.0], [4096, 60.0]],
         "decode_attn": {"per_step_ms": 0.05, "per_seq_ms": 0.02, "per_ctx_token_ms": 1e-4},
         "prefill_attn": {"per_chunk_ms": 0.1, "per_sq_token_ms": 2e-5, "per_ctx_token_ms": 1e-5,
                          "padded_sq_token_ms": 5e-5, "mixed_step_ms": 0.3,
                          "per_extra_chunk_ms": 0.7}}  # every loose chunk after a step's first


def _sample(cost, kind, b, k, chunks, pad=0):
    return {"kind": kind, "decode_rows": b, "sum_ctx": float(b * k), "chunks": [list(c) for c in chunks],
            "pad_to": pad, "median_ms": cost.step_s(b, b * k, [tuple(c) for c in chunks], pad) * 1e3}


def _synthetic_samples(cost):
    s = [_sample(cost, "decode", b, k, []) for b in (1, 8, 64) for k in (100, 400, 1000)]
    s += [_sample(cost, "prefill", 0, 0, [(c, k)]) for c, k in ((1, 0), (8, 0), (64, 0), (512, 0), (4096, 0),
                                                                   (64, 512), (512, 1024))]
    s += [_sample(cost, "padded", 0, 0, [(p, 0)] * r, p) for r, p in ((4, 64), (8, 512), (2, 512), (4, 1024))]
    s += [_sample(cost, "mixed", b, 300, [(c, 0)] * n) for b, c, n in ((8, 64, 1), (64, 512, 1), (16, 256, 1),
                                                                      (0, 256, 16), (0, 128, 8), (64, 192, 12))]
    return s


def test_fit_recovers_the_extra_chunk_term_and_prices_unseen_many_chunk_steps():
    from gpu_runner.fit import fit

    cost = CostModel(Profile({"coefficients": TRUTH}, "<truth>"))
    coeff, report = fit(_synthetic_samples(cost))
    assert report["max_abs_rel_error"] < 1e-6
    fitted = CostModel(Profile({"coefficients": coeff}, "<fit>"))
    assert coeff["prefill_attn"]["per_extra_chunk_ms"] > 0.1  # the many-chunk steps cannot be fitted without it
    # steps the grid never measured: 24 and 3 prompts alone (vllm-v0), a burst's mixed step of 10 chunks
    for b, chunks in ((0, [(160, 0)] * 24), (0, [(900, 0), (40, 0), (300, 0)]), (40, [(200, 0)] * 10)):
        assert fitted.step_s(b, b * 250, chunks) == pytest.approx(cost.step_s(b, b * 250, chunks), rel=1e-6)


def test_decode_steps_are_priced_from_the_measured_grid():
    """Decode samples on a full batch x context rectangle become the profile's decode grid: a decode step at a
    grid point is priced at its measured time even where the linear decode term cannot fit it, and a run of
    decode steps in closed form equals stepping one at a time."""
    from gpu_runner.fit import fit

    cost = CostModel(Profile({"coefficients": TRUTH}, "<truth>"))
    samples = _synthetic_samples(cost)
    bumped = next(s for s in samples if s["kind"] == "decode" and s["decode_rows"] == 8 and s["sum_ctx"] == 3200)
    bumped["median_ms"] *= 1.15  # a step the linear decode term cannot reach
    coeff, report = fit(samples)
    g = coeff["decode_attn_grid"]
    assert g["batch"] == [1, 8, 64] and g["context"] == [100.0, 400.0, 1000.0]
    fitted = CostModel(Profile({"coefficients": coeff}, "<fit>"))
    for s in samples:
        if s["kind"] == "decode":
            assert fitted.step_s(s["decode_rows"], s["sum_ctx"]) * 1e3 == pytest.approx(s["median_ms"], rel=1e-6)
    assert report["by_kind"]["decode"] < 1e-6
    steps = sum(fitted.step_s(8, 8 * 380 + 8 * j) for j in range(50))
    assert fitted.decode_run_s(8, 8 * 380, 50) == pytest.approx(steps, rel=1e-9)
    # incomplete rectangle: no grid (the linear term prices decode)
    coeff2, _ = fit([s for s in samples if s is not bumped])
    assert "decode_attn_grid" not in coeff2


class ScriptedClock:
    """A clock that stands still except where the test moves it: the forward pass's k runs take 5, 2 and 3 ms."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def lm():
    torch = pytest.importorskip("torch")
    from gpu_runner.models import load_model

    torch.set_num_threads(1)
    return load_model("tiny-llama", device="cpu", dtype="fp32", seed=0)


def test_fastest_of_k_counts_only_the_fastest_run_and_changes_nothing_else(lm, monkeypatch):
    import gpu_runner.executor as executor
    from gpu_runner.engine import RunnerConfig, serve
    from policies.registry import make_policy

    clock = ScriptedClock()
    real_forward = executor.forward
    durations = iter([])

    def timed_forward(*a, **kw):
        clock.t += next(durations)
        return real_forward(*a, **kw)

    monkeypatch.setattr(executor, "forward", timed_forward)
    monkeypatch.setattr("gpu_runner.engine.step_clock", lambda kind, device, threads: ("cpu", clock))
    rng = np.random.default_rng(3)
    tr = make_trace("unit", np.sort(rng.uniform(0, 0.02, 8)), rng.integers(3, 60, 8), rng.integers(1, 16, 8))
    runs = {}
    for k, script in ((1, [0.002]), (3, [0.005, 0.002, 0.003])):
        durations = iter(script * 100000)
        runs[k] = serve(tr, make_policy("continuous"), lm, RunnerConfig(kv_tokens=4096, max_context=128,
                                                                        step_repeats=k))
    one, three = runs[1], runs[3]
    steps = len(three.executor.step_s)
    assert steps == len(one.executor.step_s) > 5
    assert np.allclose(three.executor.step_s, 0.002, rtol=0, atol=1e-12)
    assert three.summary["runner"]["repeat_excess_s"] == pytest.approx(0.008 * steps)  # (5 + 2 + 3) - 2 ms
    assert three.summary["runner"]["step_repeats"] == 3
    assert all(one.executor.tokens_of(i) == three.executor.tokens_of(i) for i in range(len(tr)))
    cols = ["batch_size", "num_steps", "prefill_tokens", "output_tokens", "kv_blocks_used"]
    assert one.steps.select(cols).equals(three.steps.select(cols))
    # the virtual clock advanced by the fastest runs only: every timestamp is that of a run whose steps took 2 ms
    assert np.allclose(three.steps["end_s"].to_numpy(), one.steps["end_s"].to_numpy(), rtol=0, atol=1e-12)


def test_validate_refuses_step_repeats_other_than_the_profiles(tmp_path, capsys):
    import json

    from simulator.profile import load_profile
    from syncintellects.cli import main

    data = dict(load_profile("a100-llama-2-7b").data, runner={"step_repeats": 3})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    status = main(["validate", "--profile", str(path), "--step-repeats", "2", "--trace", "azure-conv",
                   "--num-requests", "5", "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--step-repeats 2" in err[0] and "measured with 3" in err[0]


def test_fast_engines_step_price_has_the_extra_chunk_term():
    """The fast engine's closures price a step with the same bits as CostModel.step_s, extra chunks included."""
    from gpu_runner.fit import fit
    from simulator.fast_cost import decode_functions

    cost = CostModel(Profile({"coefficients": TRUTH}, "<truth>"))
    coeff, _ = fit(_synthetic_samples(cost))
    fitted = CostModel(Profile({"coefficients": coeff}, "<fit>"))
    assert fitted._grid is not None and fitted.p_extra > 0
    _, _, step_s = decode_functions(fitted)
    for rows, chunks in ((0, [(160, 0)] * 24), (40, [(200, 0)] * 10), (8, [(64, 100)]), (12, [])):
        assert step_s(rows, rows * 300, chunks) == fitted.step_s(rows, rows * 300, chunks)
