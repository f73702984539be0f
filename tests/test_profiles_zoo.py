"""The bundled profile zoo: every profile loads, respects its physical floor, is what the deriver
computes from the bundled sources, and scales across GPUs and tensor parallelism as hardware does."""
import json
import re

import pytest

from simulator.cost_model import CostModel
from simulator.profile import ALIASES, bundled_profiles, load_profile, profile_rows

NAMES = bundled_profiles()


def cost(name):
    return CostModel(load_profile(name))


def test_the_zoo_covers_the_contracts_names():
    for name in ("a100-llama-2-7b", "h100-llama-2-7b", "a100-llama-2-70b-tp4", "a100-llama-2-7b-hf"):
        assert name in NAMES
    assert len(NAMES) >= 40
    assert load_profile("a100-llama-2-7b-fp16").name == "a100-llama-2-7b" == load_profile().name
    assert ALIASES["a100-llama-2-7b-fp16"] == "a100-llama-2-7b"


@pytest.mark.parametrize("name", NAMES)
def test_every_profile_loads_and_respects_its_floor(name):
    p = load_profile(name)
    m = re.fullmatch(r"(a100|h100|a40)-([a-z0-9.-]+?)(?:-tp(\d))?(-hf)?", name)
    assert m and p.name == name and p.model["name"] == m.group(2)
    assert p.tensor_parallel == int(m.group(3) or 1)
    assert p.engine == ("hf" if m.group(4) else "vllm")
    c = CostModel(p)
    # a batch-1 decode step reads every weight on this GPU once: it cannot beat weights / bandwidth
    floor_s = p.memory["weights_bytes"] / p.data["gpu"]["hbm_bandwidth_bytes_per_s"]
    assert p.floor_ms == pytest.approx(floor_s * 1e3)
    for ctx in (1, 128, 1024):
        assert c.step_s(1, ctx) > floor_s
    # weights are split over the TP GPUs; the cache holds at least one full-context request
    assert p.memory["weights_bytes"] == pytest.approx(2 * p.model["params"] / p.tensor_parallel, abs=1)
    assert p.kv_blocks() * p.memory["block_size"] >= p.model["max_context"]
    # costs grow with work
    assert c.step_s(64, 64 * 2048) > c.step_s(64, 64 * 512) > c.step_s(8, 8 * 512)
    assert c.step_s(0, 0, [(2048, 0)]) > c.step_s(0, 0, [(512, 0)])


def test_h100_vs_a100_follows_bandwidth_for_decode_and_compute_for_prefill():
    a, h = cost("a100-llama-2-7b"), cost("h100-llama-2-7b")
    bw = 2.039 / 3.35  # HBM bandwidth ratio: memory-bound decode
    for b, k in ((1, 128), (32, 1024), (128, 2048)):
        assert h.step_s(b, b * k) / a.step_s(b, b * k) == pytest.approx(bw, rel=0.05)
    # compute-bound prefill gains more than bandwidth (FP16 ratio 312 / 989 = 0.32)
    for c in (512, 2048, 4096):
        assert 0.25 < h.step_s(0, 0, [(c, 0)]) / a.step_s(0, 0, [(c, 0)]) < 0.45


def test_tensor_parallelism_scales_sublinearly_and_frees_memory():
    for model, tps in (("llama-2-70b", (2, 4, 8)), ("llama-2-7b", (1, 2, 4, 8)), ("codellama-34b", (1, 2, 4, 8))):
        names = [f"a100-{model}" + (f"-tp{t}" if t > 1 else "") for t in tps]
        profs = [load_profile(n) for n in names]
        costs = [CostModel(p) for p in profs]
        for (t0, c0, p0), (t1, c1, p1) in zip(zip(tps, costs, profs), zip(tps[1:], costs[1:], profs[1:])):
            for work in ((1, 128, []), (64, 64 * 1024, []), (0, 0, [(2048, 0)])):
                s0, s1 = c0.step_s(*work), c1.step_s(*work)
                # more GPUs are faster, but by less than their number (all-reduces, launch floors)
                assert s0 / (t1 / t0) < s1 < s0, (names, work)
            assert p1.memory["weights_bytes"] * 2 == pytest.approx(p0.memory["weights_bytes"], abs=1)
            assert p1.kv_blocks() > p0.kv_blocks()
    # the all-reduces are in: TP 2 prices 2 x 80 + 1 all-reduces per step beyond the sharded operators
    assert "161 all-reduces" in load_profile("a100-llama-2-70b-tp2").data["derivation"]


def test_hf_profile_meets_the_published_figures():
    from simulator.profiles.derive_zoo import hf_batch16_throughput

    p = load_profile("a100-llama-2-7b-hf")
    assert CostModel(p).step_s(1, 512) * 1e3 == pytest.approx(22.5, abs=1e-3)  # HF generate, batch 1
    assert hf_batch16_throughput(p.data) == pytest.approx(1.39, rel=1e-3)  # Sequence Scheduling's HF baseline
    vllm = cost("a100-llama-2-7b")
    assert cost("a100-llama-2-7b-hf").step_s(16, 16 * 300) > 2 * vllm.step_s(16, 16 * 300)


def test_the_deriver_reproduces_every_bundled_profile():
    from simulator.profiles.derive_zoo import build_all

    built = {p["name"]: json.loads(json.dumps(p)) for p in build_all()}
    assert sorted(built) == NAMES
    for name, data in built.items():
        assert data == load_profile(name).data, name


def test_profiles_command_lists_the_zoo(capsys):
    from syncintellects.cli import main

    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in ("a100-llama-2-7b ", "h100-llama-2-7b ", "a100-llama-2-70b-tp4 ", "a100-llama-2-7b-hf "):
        assert name in out
    assert "a100-llama-2-7b-fp16" in out  # the alias is shown
    assert main(["profiles", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(NAMES) and rows == profile_rows()


def test_unknown_profile_is_one_line_exit_2(tmp_path, capsys):
    from syncintellects.cli import main

    assert main(["simulate", "--profile", "b200-llama-2-7b", "--num-requests", "5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown profile 'b200-llama-2-7b'" in err


def test_reproduce_paper_runs_on_the_hf_profile(tmp_path, capsys):
    from syncintellects.cli import main

    assert main(["reproduce", "paper", "--profile", "nope", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    args = ["reproduce", "paper", "--rates", "0.2", "--seeds", "1", "--num-requests", "24", "--workers", "1", "--quiet"]
    assert main(args + ["--profile", "a100-llama-2-7b-hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(args + ["--out", str(tmp_path / "vllm")]) == 0
    assert json.loads((tmp_path / "hf" / "reproduction_config.json").read_text())["profile"] == "a100-llama-2-7b-hf"
    hf = {r["label"]: r for r in json.loads((tmp_path / "hf" / "reproduction.json").read_text())}
    vl = {r["label"]: r for r in json.loads((tmp_path / "vllm" / "reproduction.json").read_text())}
    base = "task batching (static FCFS)"
    assert hf[base]["mean_e2e_s"] > 1.5 * vl[base]["mean_e2e_s"]  # the HF-class engine is slower
