"""What makes a validation verdict believable on a shared machine: the probe's machine factor (measured
like the profile's reference, off the run's clock, without touching the run) and the conditioning
check (how far a 2% change of every step time moves each metric in the simulator itself)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_runner.validate import GATED, compare, conditioning, one_run_out, scaled_profile, step_kind
from policies.registry import make_policy
from simulator.engine import SimConfig, simulate
from simulator.profile import load_profile
from traces.schema import make_trace


class TickClock:
    """A deterministic clock: every reading advances it by ``unit`` seconds (a power of two, so that every
    reading and difference is exact in floating point). A step's measured time is then ``unit`` x the
    readings inside it, the same for the same code path whatever the machine does."""

    def __init__(self, unit: float):
        self.unit, self.k = unit, 0

    def __call__(self) -> float:
        self.k += 1
        return self.k * self.unit


def _summary(e2e, p99, ttft, tpot, thr):
    return {"e2e_latency_s": {"mean": e2e, "p99": p99}, "ttft_s": {"mean": ttft}, "tpot_s": {"mean": tpot},
            "throughput_output_tokens_per_s": thr}


def test_one_run_out_decides_only_what_no_single_run_flips():
    sim = _summary(1.0, 2.0, 0.1, 0.01, 100.0)

    def real(ttft, e2e=1.0):  # errors (sim - real) / real of 0 on every metric but TTFT (and E2E when given)
        return _summary(e2e, 2.0, ttft, 0.01, 100.0)

    full = compare(real(0.1 / 1.04), sim)  # TTFT +4%: a pass
    # every run left out still passes: decided
    doc = one_run_out([real(0.1 / 1.03), real(0.1 / 1.045), real(0.1 / 1.049)], full, sim, 0.05)
    assert doc["by_metric"]["ttft_s.mean"]["decided"] == "pass" and doc["undecided"] == []
    assert doc["verdict"] == "pass"
    assert doc["by_metric"]["ttft_s.mean"]["range"] == pytest.approx([0.03, 0.049])
    assert doc["runs"] == 3 and doc["by_metric"]["tpot_s.mean"] == {"range": [0.0, 0.0], "decided": "pass"}
    # one of them would fail: the pass hinges on one run
    doc = one_run_out([real(0.1 / 1.03), real(0.1 / 1.06), real(0.1 / 1.04)], full, sim, 0.05)
    assert doc["by_metric"]["ttft_s.mean"]["decided"] == "undecided" and doc["undecided"] == ["ttft_s.mean"]
    assert doc["verdict"] == "undecided"
    # a failure that every leave-one-out repeats is a decided failure, on either side
    full = compare(real(0.1 / 0.90, e2e=1 / 1.08), sim)
    doc = one_run_out([real(0.1 / 0.92, e2e=1 / 1.07), real(0.1 / 0.89, e2e=1 / 1.09), real(0.1 / 0.91, e2e=1 / 1.06)],
                      full, sim, 0.05)
    assert doc["by_metric"]["ttft_s.mean"]["decided"] == "fail" and doc["by_metric"]["e2e_latency_s.mean"]["decided"] == "fail"
    assert doc["undecided"] == [] and doc["verdict"] == "fail"
    # E2E fails whichever run is left out, TTFT fails in the full verdict but not without the third run: the
    # failure is decided though one of its metrics is not
    full = compare(real(0.1 / 0.94, e2e=1 / 1.08), sim)
    doc = one_run_out([real(0.1 / 0.94, e2e=1 / 1.07), real(0.1 / 0.93, e2e=1 / 1.09), real(0.1 / 0.97, e2e=1 / 1.06)],
                      full, sim, 0.05)
    assert doc["undecided"] == ["ttft_s.mean"] and doc["by_metric"]["e2e_latency_s.mean"]["decided"] == "fail"
    assert doc["verdict"] == "fail"
    # no metric fails in every run left out, yet every run left out fails on one of them: a decided failure
    full = compare(real(0.1 / 0.94, e2e=1 / 1.06), sim)
    doc = one_run_out([real(0.1 / 0.94, e2e=1 / 1.04), real(0.1 / 0.97, e2e=1 / 1.06), real(0.1 / 0.94, e2e=1 / 1.06)],
                      full, sim, 0.05)
    assert set(doc["undecided"]) == {"ttft_s.mean", "e2e_latency_s.mean"} and doc["verdict"] == "fail"
    # a metric that cannot be computed is never decided; fewer than three runs: no such check
    doc = one_run_out([real(0.1), real(0.1), {**real(0.1), "ttft_s": {"mean": None}}], compare(real(0.1), sim), sim, 0.05)
    assert doc["undecided"] == ["ttft_s.mean"]
    assert one_run_out([real(0.1), real(0.1)], compare(real(0.1), sim), sim, 0.05) is None


def test_conditioning_elasticity_and_ill_conditioned_metrics():
    base = _summary(2.0, 4.0, 0.5, 0.01, 100.0)

    def proportional(f):  # every latency scales with the step time, throughput inversely
        return _summary(2.0 * f, 4.0 * f, 0.5 * f, 0.01 * f, 100.0 / f)

    c = conditioning(proportional, base, 1.0, eps=0.02)
    for name in GATED:
        want = -1 / (1 - 0.02 ** 2) if name.startswith("throughput") else 1.0
        assert c["elasticity"][name] == pytest.approx(want, rel=1e-9)
    assert c["ill_conditioned"] == []

    def chaotic(f):  # a 2% slower machine changes the schedule: the p99 jumps by 20%
        s = proportional(f)
        s["e2e_latency_s"]["p99"] *= 1.2 if f > 1 else 1.0
        return s

    c = conditioning(chaotic, base, 1.0, eps=0.02)
    assert c["ill_conditioned"] == ["e2e_latency_s.p99"]
    assert c["elasticity"]["e2e_latency_s.p99"] == pytest.approx((4.08 * 1.2 - 3.92) / 4.0 / 0.04)


def test_burst_workload_is_well_conditioned_in_the_simulator():
    """All requests at once: the schedule cannot depend on step times, so every latency is a sum of step
    times (elasticity 1) and the throughput their inverse (-1), for static and continuous batching alike."""
    rng = np.random.default_rng(0)
    n = 40
    tr = make_trace("burst", np.zeros(n), rng.integers(10, 300, n), rng.integers(1, 80, n))
    prof = load_profile("a100-llama-2-7b-fp16")
    cfg = SimConfig(profile="a100-llama-2-7b-fp16", kv_blocks=400, seed=0)
    for name, params in (("static", {"batch_size": 8}), ("continuous", {})):
        def at(f):
            return simulate(tr, make_policy(name, **params), cfg, profile=scaled_profile(prof, f)).summary

        c = conditioning(at, at(1.0), 1.0, eps=0.02)
        assert c["ill_conditioned"] == []
        for key, e in c["elasticity"].items():  # throughput ~ 1/f: (1/1.02 - 1/0.98) / 0.04 = -1 / (1 - 0.02^2)
            assert e == pytest.approx(-1 / (1 - 0.02 ** 2) if key.startswith("throughput") else 1.0, abs=1e-6), \
                (name, key)


def test_step_kinds():
    assert step_kind(8, (), 0) == "decode"
    assert step_kind(1, ((100, 0),), 0) == "prefill"
    assert step_kind(5, ((100, 0),), 0) == "mixed"
    assert step_kind(4, ((100, 0),) * 4, 100) == "padded"


@pytest.fixture(scope="module")
def lm():
    torch = pytest.importorskip("torch")  # only the tests that run the model need the runner extra
    from gpu_runner.models import load_model

    torch.set_num_threads(1)
    return load_model("tiny-llama", device="cpu", dtype="fp32", seed=0)


SMALL = (("decode", 4, 32, 0, 0), ("prefill", 0, 0, 16, 0), ("mixed", 4, 32, 16, 1))


def test_probe_runs_on_its_own_schedule_and_reports_the_ratio(lm):
    from gpu_runner.probe import Probe

    probe = Probe(lm, TickClock(2.0 ** -10), every_s=0.010, cases=SMALL)
    for _ in range(25):
        probe.tick(0.001)  # 25 ms of work: a probe at 10 and 20 ms
    assert [len(v) for v in probe.times.values()] == [2, 2, 2]
    ref = probe.reference()
    assert ref["cases"] == [list(c) for c in SMALL] and ref["probes"] == 2
    # the same procedure under a clock twice as slow: factor 2, exactly (tick clock: same readings per step)
    slow = Probe(lm, TickClock(2.0 ** -9), every_s=0.010, cases=SMALL)
    slow.measure()
    rep = slow.report({tuple(c): ms for c, ms in zip(ref["cases"], ref["median_ms"])})
    assert rep["factor"] == pytest.approx(2.0) and rep["probes"] == 1
    assert all(v["ratio"] == pytest.approx(2.0) for v in rep["cases"].values())


def test_probing_does_not_touch_the_run(lm, monkeypatch):
    """Probe steps use their own bench and KV pool and stay off the virtual clock: the run's tokens, its
    decisions and (with a deterministic clock) its every timestamp are those of a run without probes."""
    from gpu_runner.engine import RunnerConfig, serve
    from simulator.profile import Profile

    rng = np.random.default_rng(2)
    tr = make_trace("unit", np.sort(rng.uniform(0, 0.05, 10)), rng.integers(3, 60, 10), rng.integers(1, 20, 10))
    probe_ref = {"probe": {"cases": [list(c) for c in SMALL], "median_ms": [1.0, 1.0, 1.0]}}
    runs = []
    for prof in (None, Profile(probe_ref, "<probe ref>")):
        monkeypatch.setattr("gpu_runner.engine.step_clock", lambda kind, device, threads: ("cpu", TickClock(2.0 ** -13)))
        cfg = RunnerConfig(kv_tokens=4096, max_context=128)
        runs.append(serve(tr, make_policy("continuous"), lm, cfg, probe_profile=prof, probe_every_s=0.002))
    plain, probed = runs
    assert plain.requests.equals(probed.requests) and plain.steps.equals(probed.steps)
    assert all(plain.executor.tokens_of(i) == probed.executor.tokens_of(i) for i in range(len(tr)))
    rep = probed.summary["runner"]["probe"]
    assert rep["probes"] >= 2 and rep["factor"] > 0 and "probe" not in plain.summary["runner"]


def test_interleaved_grid_and_its_rewarm_do_not_touch_the_run(lm, monkeypatch):
    """Grid points timed between the run's steps, and the run's last step recomputed after them (the rewarm),
    use their own bench or rewrite the same K/V, off the clock: tokens, decisions and (deterministic clock)
    timestamps equal a run without interleaving."""
    from gpu_runner.engine import RunnerConfig, serve

    rng = np.random.default_rng(3)
    tr = make_trace("unit", np.sort(rng.uniform(0, 0.01, 12)), rng.integers(3, 60, 12), rng.integers(2, 20, 12))
    runs = []
    for inter in (None, {"sweeps": 1, "expected_steps": 6, "quick": True}):
        monkeypatch.setattr("gpu_runner.engine.step_clock", lambda kind, device, threads: ("cpu", TickClock(2.0 ** -13)))
        runs.append(serve(tr, make_policy("continuous"), lm, RunnerConfig(kv_tokens=4096, max_context=128),
                          interleave=inter))
    plain, inter = runs
    assert plain.requests.equals(inter.requests) and plain.steps.equals(inter.steps)
    assert all(plain.executor.tokens_of(i) == inter.executor.tokens_of(i) for i in range(len(tr)))
    assert inter.interleaver.interleaved > 0 and inter.interleaver.rewarms > 0


def test_padded_group_has_its_own_attention_term():
    from simulator.cost_model import CostModel
    from simulator.profile import Profile

    coeff = {"fixed_step_ms": 0.0, "linear_ops": [[1, 1.0], [1000, 11.0]],
             "decode_attn": {"per_step_ms": 0.0, "per_seq_ms": 0.0, "per_ctx_token_ms": 0.0},
             "prefill_attn": {"per_chunk_ms": 0.5, "per_sq_token_ms": 1e-4, "per_ctx_token_ms": 1e-5}}
    plain = CostModel(Profile({"coefficients": coeff}, "<plain>"))
    coeff["prefill_attn"]["padded_sq_token_ms"] = 3e-4
    padded = CostModel(Profile({"coefficients": coeff}, "<padded>"))
    linear = 1.0 + 10.0 * (200 - 1) / 999
    # two prompts of 100 and 50 tokens left-padded to 100: both members pay the padded term at 100 tokens
    assert padded.step_s(0, 0, [(100, 0), (50, 0)], 100) == pytest.approx((linear + 2 * (0.5 + 3e-4 * 1e4)) / 1e3)
    assert plain.step_s(0, 0, [(100, 0), (50, 0)], 100) == pytest.approx((linear + 2 * (0.5 + 1e-4 * 1e4)) / 1e3)
    # chunks that are not padded (no pad_to, or a cached prefix) keep the causal-chunk term
    assert padded.step_s(0, 0, [(100, 0), (100, 0)]) == plain.step_s(0, 0, [(100, 0), (100, 0)])
    assert padded.step_s(0, 0, [(100, 20)], 100) == plain.step_s(0, 0, [(100, 20)], 100)
    # a step mixing decode rows with chunks pays the profile's mixed-step cost once; pure steps do not
    coeff["prefill_attn"]["mixed_step_ms"] = 2.0
    mixed = CostModel(Profile({"coefficients": coeff}, "<mixed>"))
    assert mixed.step_s(4, 400, [(100, 0)]) == pytest.approx(padded.step_s(4, 400, [(100, 0)]) + 2e-3)
    assert mixed.step_s(0, 0, [(100, 0)]) == padded.step_s(0, 0, [(100, 0)])
    assert mixed.step_s(4, 400) == padded.step_s(4, 400)
    assert mixed.decode_run_s(4, 400, 10) == padded.decode_run_s(4, 400, 10)
    # ... and its per-row cost once per decode row of a mixed step, never in a decode run or a prefill-only step
    coeff["prefill_attn"]["mixed_row_ms"] = 0.05
    per_row = CostModel(Profile({"coefficients": coeff}, "<mixed rows>"))
    assert per_row.step_s(4, 400, [(100, 0)]) == pytest.approx(mixed.step_s(4, 400, [(100, 0)]) + 4 * 0.05e-3)
    assert per_row.step_s(0, 0, [(100, 0)]) == mixed.step_s(0, 0, [(100, 0)])
    assert per_row.decode_run_s(4, 400, 10) == mixed.decode_run_s(4, 400, 10)
    coeff["prefill_attn"]["mixed_row_ms"] = 0.0
    # ... and its per-row-and-prompt-token cost: decode rows x the step's prompt tokens (padded: their padded length)
    coeff["prefill_attn"]["mixed_row_ktoken_ms"] = 0.04
    per_rowk = CostModel(Profile({"coefficients": coeff}, "<mixed rows x tokens>"))
    assert per_rowk.step_s(4, 400, [(100, 0), (50, 20)]) == pytest.approx(
        mixed.step_s(4, 400, [(100, 0), (50, 20)]) + 0.04 * 4 * 150 / 1000 / 1e3)
    assert per_rowk.step_s(4, 400, [(100, 0), (50, 0)], 100) == pytest.approx(
        mixed.step_s(4, 400, [(100, 0), (50, 0)], 100) + 0.04 * 4 * 200 / 1000 / 1e3)
    assert per_rowk.step_s(0, 0, [(100, 0)]) == mixed.step_s(0, 0, [(100, 0)])
    assert per_rowk.decode_run_s(4, 400, 10) == mixed.decode_run_s(4, 400, 10)
    coeff["prefill_attn"]["mixed_row_ktoken_ms"] = 0.0
    # a chunk on a cached prefix pays its own quadratic term when the profile has one; fresh chunks do not
    coeff["prefill_attn"]["cached_sq_token_ms"] = 4e-4
    cached = CostModel(Profile({"coefficients": coeff}, "<cached>"))
    assert cached.step_s(0, 0, [(100, 20)]) == pytest.approx(mixed.step_s(0, 0, [(100, 20)]) + (4e-4 - 1e-4) * 1e4 / 1e3)
    assert cached.step_s(4, 400, [(100, 0), (50, 0)]) == mixed.step_s(4, 400, [(100, 0), (50, 0)])
    assert cached.step_s(0, 0, [(100, 0)], 100) == mixed.step_s(0, 0, [(100, 0)], 100)  # a padded member: its own term
    # the fast engine's own step arithmetic (a profile with a decode grid) is the cost model's, to the bit,
    # with and without the term
    import copy
    from pathlib import Path

    from simulator.fast_cost import decode_functions

    stored = load_profile(Path(__file__).parent.parent / "docs" / "validation" / "tiny-llama-cpu.json")
    with_term = copy.deepcopy(stored.data)
    with_term["coefficients"]["prefill_attn"]["cached_sq_token_ms"] = 4e-5
    with_term["coefficients"]["prefill_attn"]["mixed_row_ms"] = 0.03
    with_term["coefficients"]["prefill_attn"]["mixed_row_ktoken_ms"] = 0.07
    for model in (CostModel(stored), CostModel(Profile(with_term, "<with cached term>"))):
        assert model._grid is not None
        for rows, ctx, chunks in ((0, 0, [(100, 20)]), (4, 400, [(100, 20), (30, 0)]), (3, 90, [(64, 0)])):
            assert decode_functions(model)[2](rows, ctx, chunks) == model.step_s(rows, ctx, chunks, 0)


def test_probe_keeps_the_minimum_of_its_repeats(lm, monkeypatch):
    """A disturbance that hits one timing (here every case's first, 10x slower) does not reach the probe's
    time; one that lasts (every timing of a probe 1.3x slower) does, exactly."""
    from gpu_runner.probe import Probe

    probe = Probe(lm, TickClock(2.0 ** -10), every_s=1.0, cases=SMALL, repeats=3)
    calls: dict = {}
    slow = {"by": 1.0}

    def scripted(bench, case, slots):
        calls[case] = calls.get(case, 0) + 1
        base = 0.001 * (1 + SMALL.index(case))
        return base * slow["by"] * (10.0 if calls[case] % 3 == 1 else 1.0), {}

    monkeypatch.setattr("gpu_runner.profiler._time_case", scripted)
    probe.measure()
    assert [probe.times[c] for c in SMALL] == [[1.0], [2.0], [3.0]]
    slow["by"] = 1.3
    probe.measure()
    ref = {c: float(probe.times[c][0]) for c in SMALL}
    rep = probe.report(ref)
    assert rep["factor"] == pytest.approx((6.0 + 6.0 * 1.3) / 12.0, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=1, max_size=200), st.sampled_from([None, 1, 1500, 4000, 1 << 20]))
def test_decode_groups_bound_the_padding(lengths, block_tokens):
    """Context groups: every row in exactly one; at most MAX_GROUPS; within a group every row (but in the last
    group once the cap is reached) is at least min(GROUP_RATIO x, x - GROUP_MIN_GAP) of the group's longest x,
    so the attention work tracks the sum of the contexts, not batch x longest. On a CPU each group is cut
    into row blocks of at most CPU_DECODE_BLOCK_BYTES of gathered K (a row over that alone), rows in order,
    each block as wide as its longest row."""
    pytest.importorskip("torch")
    import torch

    from gpu_runner import paged

    lengths = np.asarray(lengths, dtype=np.int64)
    groups = paged._context_groups(lengths)
    assert sorted(j for g in groups for j in g) == list(range(len(lengths))) and len(groups) <= paged.MAX_GROUPS
    for k, g in enumerate(groups):
        ls = lengths[g]
        top = int(ls.max())
        assert ls[0] == top
        if k < paged.MAX_GROUPS - 1:
            assert (ls >= min(paged.GROUP_RATIO * top, top - paged.GROUP_MIN_GAP)).all()

    kv = paged.PagedKV(1, int((lengths + 15).sum() // 16) + len(lengths), 16, 1, 2, dtype=torch.float32, device="cpu")
    for r, n in enumerate(lengths.tolist()):
        kv.ensure(r, n)
    per_token = 1 * 2 * 4  # kv heads x head dim x bytes
    old = paged.CPU_DECODE_BLOCK_BYTES
    paged.CPU_DECODE_BLOCK_BYTES = None if block_tokens is None else block_tokens * per_token
    try:
        blocks = paged._decode_groups(kv, [(r, 0, 0) for r in range(len(lengths))], lengths, "cpu")
    finally:
        paged.CPU_DECODE_BLOCK_BYTES = old
    # the blocks are the groups cut in order: concatenated, they give the groups' rows in the groups' order
    assert [int(i) for b, _, _ in blocks for i in b.tolist()] == [j for g in groups for j in g]
    if block_tokens is None:
        assert len(blocks) == len(groups)
    for b, slots, mask in blocks:
        ls = lengths[b.numpy()]
        assert slots.shape == (len(ls), int(ls.max()))
        assert (mask is None) == bool((ls == ls.max()).all())
        if block_tokens is not None:
            assert len(ls) == 1 or len(ls) * int(ls.max()) <= block_tokens
        for row, j in enumerate(b.tolist()):  # each row gathers its own context, and nothing past it
            assert slots[row, :lengths[j]].tolist() == kv.slots(j, 0, int(lengths[j])).tolist()


def test_grid_point_with_unequal_chunks_places_each_size(lm):
    import time

    from gpu_runner.profiler import FULL, UNEVEN, Bench, _time_case, grid_cases, grid_slots

    cases = [c for c in grid_cases(lm, FULL, 1 << 17) if isinstance(c[3], tuple) and not isinstance(c[2], tuple)]
    assert [c[3] for c in cases] == [UNEVEN, UNEVEN, UNEVEN[2:], UNEVEN[1:], UNEVEN] and all(c[4] == len(c[3]) for c in cases)
    bench = Bench(lm, grid_slots(FULL), 1 << 15, clock=time.thread_time)
    t, work = _time_case(bench, cases[2], grid_slots(FULL))
    assert t > 0 and work["batch"] == 64 and work["chunks"] == [(c, 0) for c in UNEVEN[2:]]
    assert not bench.kv._slot  # the bench is cleared after the point


def test_burst_points_fill_the_budget_and_place_every_row_context(lm):
    import dataclasses
    import time

    from gpu_runner.profiler import FULL, Bench, _time_case, burst_points, grid_cases, grid_slots

    pts = burst_points(7, (0, 5, 40))
    assert pts == burst_points(7, (0, 5, 40))  # seeded: the grid is fixed
    assert pts != burst_points(8, (0, 5, 40))
    for b, ctx, sizes, n in pts:
        assert len(ctx) == b and all(4 <= x <= 1030 for x in ctx)
        assert n == len(sizes) and all(1 <= c <= 1024 for c in sizes)
        assert 4096 - b - 8 <= sum(sizes) <= 4096 - b  # the step's budget less the decode rows, filled
    assert len({c for _, _, sizes, _ in pts for c in sizes}) > 10  # long-tailed sizes, not one size
    # a point whose rows' contexts exceed the model's context is left out
    fits, too_long = (2, (900, 1000), (1000,), 1), (2, (1000, 1100), (1000,), 1)
    mixed = [c for c in grid_cases(lm, dataclasses.replace(FULL, mixed=(fits, too_long)), 1 << 17) if c[0] == "mixed"]
    assert mixed == [("mixed", *fits)]
    b, ctx, sizes, n = pts[1]
    bench = Bench(lm, grid_slots(FULL), 1 << 15, clock=time.thread_time)
    t, work = _time_case(bench, ("mixed", b, ctx, sizes, n), grid_slots(FULL))
    assert t > 0 and work["batch"] == b and work["sum_ctx"] == sum(ctx) and work["chunks"] == [(c, 0) for c in sizes]
    assert not bench.kv._slot
