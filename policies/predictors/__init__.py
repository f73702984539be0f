"""Output-length predictors, by name.

Every predictor has ``name``, ``refresh_every`` (re-predict every k generated tokens, or
None for one-shot predictors) and ``predict(request, generated=0, embedding=None)``, the
predicted *total* output length in tokens (>= generated + 1). Simulator-only predictors
(and the learned ones when text is missing) also have ``bind_truth(fn)``.

- ``oracle``: the truth.
- ``noisy``: the truth x a per-request log-normal error (sigma = the real same-prompt spread).
- ``prompt``: MiniLM prompt embedding + ridge regression, trained on real answers.
- ``progressive``: re-predicts the remaining length from the answer so far.

Importing this package needs neither torch nor transformers; the learned predictors load
the encoder on first use.
"""
from __future__ import annotations

from policies.predictors.learned import ProgressivePredictor, PromptPredictor
from policies.predictors.oracle import NoisyOraclePredictor, OraclePredictor

PREDICTORS = {
    "oracle": OraclePredictor,
    "noisy": NoisyOraclePredictor,
    "prompt": PromptPredictor,
    "progressive": ProgressivePredictor,
}


def make_predictor(name: str, *, trace=None, seed: int = 0, model_dir=None, **params):
    """Build a predictor by name; ``trace`` lets learned predictors embed a trace's prompts in one pass."""
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; choose one of: {', '.join(PREDICTORS)}")
    try:
        if name == "oracle":
            if model_dir is not None:
                raise TypeError("the oracle takes no model directory")
            return OraclePredictor(**params)
        if name == "noisy":
            if model_dir is not None:
                raise TypeError("the noisy oracle takes no model directory")
            return NoisyOraclePredictor(seed=seed, **params)
        return PREDICTORS[name](trace=trace, seed=seed, model_dir=model_dir, **params)
    except TypeError as e:
        raise ValueError(f"predictor {name!r}: {e}") from None


__all__ = ["PREDICTORS", "make_predictor", "OraclePredictor", "NoisyOraclePredictor", "PromptPredictor",
           "ProgressivePredictor"]
