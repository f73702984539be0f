"""The real runner on CPU with a small random Llama: exact forced lengths, batching that does not
change the maths (token ids equal a lone greedy generate()), preemption and recompute, natural
lengths, seeded sampling, and the packed forward pass against the Hugging Face forward."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from gpu_runner.engine import RunnerConfig, serve  # noqa: E402
from gpu_runner.models import load_model  # noqa: E402
from policies.registry import POLICIES, make_policy  # noqa: E402
from traces.schema import make_trace  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return load_model("tiny-llama", device="cpu", dtype="fp32", seed=0)


def trace(n=10, seed=1, prompt=(3, 60), output=(1, 24), spread=0.02):
    rng = np.random.default_rng(seed)
    return make_trace("unit", np.sort(rng.uniform(0, spread, n)), rng.integers(*prompt, n), rng.integers(*output, n))


def greedy_alone(lm, prompt_ids, n, suppress_eos=True):
    """The reference: this request run alone through Hugging Face generate(), greedy."""
    kw = dict(suppress_tokens=[lm.eos_token_id], eos_token_id=None) if suppress_eos else dict(eos_token_id=lm.eos_token_id)
    out = lm.model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=0, do_sample=False,
                            pad_token_id=0, **kw)
    return out[0, len(prompt_ids):].tolist()


def check_forced_tokens(lm, tr, result):
    ex = result.executor
    for i in range(len(tr)):
        toks = ex.tokens_of(i)
        assert len(toks) == tr.output_tokens[i], f"request {i}"
        assert toks[-1] == lm.eos_token_id  # forced: EOS exactly at the trace's length
        ref = greedy_alone(lm, ex.ctx[i][:tr.prompt_tokens[i]], int(tr.output_tokens[i]) - 1)
        assert toks[:-1] == ref, f"request {i}: batched tokens differ from generate() alone"
        assert lm.eos_token_id not in toks[:-1]


@pytest.mark.parametrize("policy,params", [("static", {"batch_size": 4}), ("continuous", {"max_batched_tokens": 48})])
def test_forced_lengths_exact_and_tokens_equal_generate_alone(lm, policy, params):
    tr = trace(spread=0.0 if policy == "static" else 0.02)  # static: full batches from the start
    # a short context keeps static batching's worst-case KV reservation small enough for batches of 4
    res = serve(tr, make_policy(policy, **params), lm, RunnerConfig(kv_tokens=4096, max_context=128))
    req = res.requests
    assert (req["generated_tokens"].to_numpy() == tr.output_tokens).all()
    assert (req["output_tokens"].to_numpy() == tr.output_tokens).all()
    assert res.summary["num_finished"] == len(tr)
    assert res.summary["output_tokens"] == int(tr.output_tokens.sum())
    if policy == "continuous":  # a 48-token budget splits long prompts into chunks across steps
        assert res.steps["prefill_tokens"].max() <= 48
    else:  # static prefill is padded to the batch's longest prompt; finished rows stay as padding
        assert res.steps["prefill_tokens"].sum() > tr.prompt_tokens.sum()
        assert res.steps["padded_rows"].sum() > 0
    check_forced_tokens(lm, tr, res)


def test_preempted_requests_recompute_the_right_tokens(lm):
    tr = trace(n=8, seed=3, prompt=(10, 40), output=(10, 30))
    res = serve(tr, make_policy("continuous"), lm, RunnerConfig(kv_blocks=10, block_size=8))
    assert res.summary["num_output_capped"] == 0
    assert res.summary["preemptions"] > 0
    assert res.summary["num_finished"] == len(tr)
    check_forced_tokens(lm, tr, res)
    assert res.executor.pool.used_blocks == 0  # every physical block came back


def test_edge_checks_match_the_simulator(lm):
    from simulator.engine import SimConfig, simulate
    from simulator.profile import load_profile

    tr = make_trace("edge", [0.0, 0.0, 0.0], [70, 40, 10], [5, 50, 5])
    cfg = RunnerConfig(kv_tokens=2048, max_context=64)
    res = serve(tr, make_policy("continuous"), lm, cfg)
    sim = simulate(tr, make_policy("continuous"), SimConfig(kv_blocks=128, max_context=64), profile=load_profile())
    for col in ("rejected", "output_capped", "output_tokens", "generated_tokens"):
        assert res.requests[col].to_list() == sim.requests[col].to_list(), col
    assert res.requests["rejected"].to_list() == [True, False, False]
    assert res.requests["generated_tokens"].to_list() == [0, 24, 5]  # capped at 64 - 40


def test_natural_mode_stops_at_eos_or_the_cap(lm):
    tr = trace(n=6, seed=5, output=(1, 3))
    cap = 6
    res = serve(tr, make_policy("continuous"), lm, RunnerConfig(length_mode="natural", max_new_tokens=cap))
    ex = res.executor
    for i in range(len(tr)):
        ref = greedy_alone(lm, ex.ctx[i][:tr.prompt_tokens[i]], cap, suppress_eos=False)
        assert ex.tokens_of(i) == ref
    assert (res.requests["output_tokens"] == res.requests["generated_tokens"]).all()

    # a model that always prefers EOS stops after one token, whatever the trace says
    eos_lm = load_model("tiny-llama", seed=0)
    head = eos_lm.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[eos_lm.eos_token_id] = 1e3
    eos_lm.model.lm_head = biased
    res = serve(tr, make_policy("static", batch_size=3), eos_lm, RunnerConfig(length_mode="natural"))
    assert res.requests["generated_tokens"].to_list() == [1] * len(tr)


def test_sampling_is_seeded(lm):
    tr = trace(n=4, seed=2)

    def tokens(seed):
        res = serve(tr, make_policy("continuous"), lm, RunnerConfig(temperature=1.0, seed=seed))
        return [res.executor.tokens_of(i) for i in range(len(tr))]

    a, b, c = tokens(1), tokens(1), tokens(2)
    assert a == b
    assert a != c


def test_policy_is_the_simulators_class():
    from syncintellects.spec import RunSpec, prepare

    for name in ("static", "continuous"):
        _, policy, _ = prepare(RunSpec(trace="azure-conv", policy=name, num_requests=5))
        assert type(policy) is POLICIES[name]


def test_packed_forward_matches_hugging_face_forward(lm):
    """Decode rows, a chunk on a cached prefix and a left-padded group in ONE step give the logits of a plain
    full-sequence forward of each request."""
    from gpu_runner.paged import PagedKV, forward, pack

    cfg = lm.model.config
    kv = PagedKV(cfg.num_hidden_layers, 32, 8, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads,
                 torch.float32, "cpu")
    rng = np.random.default_rng(0)
    seqs = {r: rng.integers(1000, 30000, n).tolist() for r, n in enumerate((9, 23, 17, 5, 12))}
    # requests 0, 1: decode their last token; 2: chunk of 6 on 11 cached; 3, 4: padded group from scratch
    for r in (0, 1):
        kv.ensure(r, len(seqs[r]))
        forward(lm.model, kv, pack(kv, [], [(r, seqs[r][:-1], 0)], 0, "cpu"))
    kv.ensure(2, 17)
    forward(lm.model, kv, pack(kv, [], [(2, seqs[2][:11], 0)], 0, "cpu"))
    for r in (3, 4):
        kv.ensure(r, len(seqs[r]))
    decode = [(0, seqs[0][-1], 8), (1, seqs[1][-1], 22)]
    chunks = [(2, seqs[2][11:], 11), (3, seqs[3], 0), (4, seqs[4], 0)]
    logits, _ = forward(lm.model, kv, pack(kv, decode, chunks, 12, "cpu"))
    # logit rows: decode rows, loose chunks, then the padded group
    for row, r in enumerate((0, 1, 2, 3, 4)):
        with torch.no_grad():
            ref = lm.model(torch.tensor([seqs[r]])).logits[0, -1]
        torch.testing.assert_close(logits[row], ref, atol=2e-5, rtol=1e-4)


def test_length_aware_policy_runs_for_real_with_exact_lengths(lm):
    """A policy with a predictor (SJF + oracle) drives the real engine; the oracle is bound to the truth."""
    from syncintellects.spec import RunSpec, prepare

    tr, policy, _ = prepare(RunSpec(trace="azure-conv", policy="sjf", predictor="oracle", rate=50, num_requests=12,
                                    length_scale=0.05))
    res = serve(tr, policy, lm, RunnerConfig())
    assert res.summary["num_finished"] == 12
    assert (res.requests["generated_tokens"].to_numpy() == tr.output_tokens).all()
    assert res.requests["predicted_tokens"].to_list() == tr.output_tokens.tolist()  # oracle = the forced truth


class _Recording:
    """Continuous batching with a (dummy) predictor, recording the texts the engine reports."""

    def __init__(self):
        self.inner = make_policy("continuous")
        self.name = "recording"
        self.predictor = object()
        self.texts = {}

    def plan(self, view):
        return self.inner.plan(view)

    def observe(self, result):
        self.texts.update(result.texts)
        self.inner.observe(result)


def test_text_prompts_are_tokenized_and_answers_reported_as_text(lm):
    prompts = ["the quick brown fox jumps over the lazy dog", "hello"]
    tr = make_trace("text", [0.0, 0.0], [6, 4], [3, 5], prompt=prompts)
    pol = _Recording()
    res = serve(tr, pol, lm, RunnerConfig())
    ex = res.executor
    ids = lm.encode(prompts[0])
    assert ex.ctx[0][:6] == ids[:6]                   # longer text: cut to the trace's prompt length
    hello = lm.encode("hello")
    assert len(hello) < 4 and ex.ctx[1][:len(hello)] == hello  # shorter: synthetic ids follow
    assert lm.eos_token_id not in ex.ctx[0][:6] + ex.ctx[1][:4]
    for i in range(2):
        assert pol.texts[i] == lm.decode(ex.tokens_of(i))


def test_local_checkpoint_directory_loads_and_generates_the_same(lm, tmp_path):
    lm.model.save_pretrained(tmp_path)
    local = load_model(str(tmp_path), device="cpu", dtype="fp32")
    assert local.shape == {**lm.shape, "name": tmp_path.name}
    tr = trace(n=3, seed=4)
    a = serve(tr, make_policy("continuous"), lm, RunnerConfig())
    b = serve(tr, make_policy("continuous"), local, RunnerConfig())
    assert [a.executor.tokens_of(i) for i in range(3)] == [b.executor.tokens_of(i) for i in range(3)]
    with pytest.raises(ValueError, match="not a named shape"):
        load_model(str(tmp_path / "missing"))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.sampled_from(["decode", "chunk", "padded"]), st.floats(0.0, 1.0)),
                min_size=1, max_size=6),
       st.sampled_from([4, 8, 16]))
def test_any_packed_step_matches_a_plain_forward(lm, work, block_size):
    """Property: whatever mix of decode rows, chunks on cached prefixes and padded prompts one step packs,
    and whatever the block size, each row's logits are those of a plain forward of its whole sequence."""
    from gpu_runner.paged import PagedKV, forward, pack

    cfg = lm.model.config
    total = sum(n + 1 for n, _, _ in work)
    kv = PagedKV(cfg.num_hidden_layers, total // block_size + len(work) + 1, block_size, cfg.num_key_value_heads,
                 cfg.hidden_size // cfg.num_attention_heads, torch.float32, "cpu")
    rng = np.random.default_rng(len(work) * 1000 + block_size)
    decode, chunks, seqs = [], [], []
    pad_to = max([n for n, kind, _ in work if kind == "padded"], default=0)
    for r, (n, kind, frac) in enumerate(work):
        seq = rng.integers(1000, 30000, n + 1).tolist()
        seqs.append(seq)
        kv.ensure(r, len(seq))
        if kind == "decode":
            forward(lm.model, kv, pack(kv, [], [(r, seq[:-1], 0)], 0, "cpu"))
            decode.append((r, seq[-1], n))
        elif kind == "chunk":
            k0 = int(frac * n)
            if k0:
                forward(lm.model, kv, pack(kv, [], [(r, seq[:k0], 0)], 0, "cpu"))
            chunks.append((r, seq[k0:], k0))
        else:
            chunks.append((r, seq, 0))
    logits, _ = forward(lm.model, kv, pack(kv, decode, chunks, pad_to, "cpu"))
    loose = [c[0] for c in chunks if not (pad_to > 0 and c[2] == 0)]
    padded = [c[0] for c in chunks if pad_to > 0 and c[2] == 0]
    for row, r in enumerate([d[0] for d in decode] + loose + padded):
        with torch.no_grad():
            ref = lm.model(torch.tensor([seqs[r]])).logits[0, -1]
        torch.testing.assert_close(logits[row], ref, atol=3e-5, rtol=1e-4)
    assert kv.used_blocks == sum(-(-len(s) // block_size) for s in seqs)
    flat = np.concatenate([kv.slots(r, 0, len(s)) for r, s in enumerate(seqs)])
    assert len(np.unique(flat)) == len(flat)  # no two tokens share a pool slot


@pytest.mark.parametrize("length_mode", ["forced", "natural"])
def test_length_instructions_are_really_added_to_the_prompt(lm, length_mode):
    """SyncIntellects with length control: each directive's instruction is tokenized by the model's
    tokenizer, appended to the prompt and prefilled, with KV accounted for it by the policy."""
    from policies.control import default_length_response, make_controller
    from policies.schedulers.syncintellects import SyncIntellects

    from conftest import SplitPredictor

    n = 8
    tr = make_trace("ctl", [0.0] * n, [12] * n, [30] * n)
    pol = SyncIntellects(predictor=SplitPredictor(), controller=make_controller(), batch_size=n)
    cfg = RunnerConfig(kv_tokens=8192, max_context=256, length_mode=length_mode)
    res = serve(tr, pol, lm, cfg, length_response=default_length_response() if length_mode == "forced" else None)
    req, ex = res.requests, res.executor
    controlled = req.filter(req["target_tokens"] > 0)
    assert controlled.height > 0 and res.summary["num_finished"] == n
    for row in controlled.iter_rows(named=True):
        i, k = row["request_id"], row["instruction_tokens"]
        ids = ex.instruction_ids(row["instruction"])
        assert k == len(ids) > 0 and "Answer in at most" in row["instruction"]
        assert ex.ctx[i][12:12 + k] == ids  # the prompt, then the instruction, then the answer
    assert (req.filter(req["target_tokens"] == 0)["instruction_tokens"] == 0).all()
