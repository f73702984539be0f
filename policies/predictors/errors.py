"""Calibrated error models: how the real predictors err, for runs without text.

Azure-style traces carry token counts but no text, so the learned predictors cannot run
there. Instead they are replaced by a model of their *measured* held-out errors, applied
to the truth (bound by the simulator). All errors are in log space:

    ln(pred_rem) - m = c + b (ln(true_rem) - m) + sigma z,      z ~ N(0, 1) per request

where ``true_rem`` is the remaining length after ``g`` of ``T`` tokens (``T`` at g = 0) and
``m`` the mean log remaining length of the workload at that progress, ``mu + ln(1 - p)``
with ``mu`` the trace's mean log output length. b < 1 is the predictor's shrinkage
towards the mean (what limits its ranking power), c its bias, sigma its residual noise.
A trained model directory carries its own measured parameters (``model.json``); the
defaults below were measured with::

    syncintellects train-predictor --kind prompt --data alpaca-eval --out results/pred-prompt
    syncintellects train-predictor --kind progressive --data alpaca-eval --out results/pred-prog

(605 training / 200 held-out Llama-2-7b-chat answers, split by prompt with seed 0, lengths in
MiniLM tokens); docs/predictors.md has the tables.
"""
from __future__ import annotations

import math

import numpy as np

# Pooled within-prompt SD of ln(output tokens) over Vicuna-7B's four answers (temperatures
# 0.7/0.5/0.3/0.0) to each of 10,000 Alpaca prompts: 0.390 on the val file, 0.391 on the train
# file (Sequence-Scheduling data, traces/seqsched-alpaca-lengths). Measured with
# `python -m policies.predictors.calibrate --seqsched /work/shared/traces/seqsched-alpaca-lengths`.
NOISY_SIGMA = 0.39

# Prompt predictor (MiniLM + ridge), 200 held-out prompts: shrinkage fit of its errors.
PROMPT_ERROR = {"b": 0.291, "c": 0.029, "sigma": 0.274}
# Mean ln(tokens) of the 605 training answers: the centre when no trace is given.
TRAIN_MU_LOG_TOKENS = 5.545

# Progressive predictor, same held-out prompts, after 0/25/50/75% of each answer
# (errors on the remaining length).
PROGRESSIVE_ERROR = {
    0.00: {"b": 0.291, "c": 0.029, "sigma": 0.274},
    0.25: {"b": 0.415, "c": -0.436, "sigma": 0.349},
    0.50: {"b": 0.168, "c": -0.094, "sigma": 0.336},
    0.75: {"b": 0.034, "c": 0.498, "sigma": 0.324},
}


# Which measured errors a text-free run applies (predictor parameter ``error_model``):
# "in-distribution" = held-out prompts of the training sources; "unseen-source" = prompts of
# a source the predictor never saw (the default: a user's prompts are not the training set's).
ERROR_MODELS = ("unseen-source", "in-distribution")
# The shipped prompt recipe (MiniLM + cues, all of ShareGPT + AlpacaEval, balanced, ridge+boost head on
# ln tokens clipped to [64, 1024]), scored on AlpacaEval prompts (Llama-2-7b-chat's answers):
# in-distribution = 200 held-out prompts of a model trained on both sources; unseen-source = 785
# prompts of a model trained on ShareGPT only. c is the bias against the *workload's* mean ln length
# (the fit's training-mean c re-centred: c + (1 - b)(mu_train - mu_test), crosssource's
# `error_model_workload`): `python -m policies.predictors.crosssource --data sharegpt,alpaca-eval
# --head ridge+boost --clip-tokens 64,1024`, docs/predictors.md. (First round, 6,000 ShareGPT prompts,
# ln target: in 0.331 / -0.127 / 0.313, unseen 0.286 / -0.337 / 0.367. The same run's ShareGPT
# prompts with a model trained on AlpacaEval only fit b 0.061, c 0.364, sigma 0.275: far less ranking.)
PROMPT_ERROR_IN = {"b": 0.286, "c": -0.128, "sigma": 0.268}
PROMPT_ERROR_UNSEEN = {"b": 0.231, "c": -0.211, "sigma": 0.279}
# Progressive, after the first token: the shipped ``cues`` head (progress_head.py), c re-centred on
# the workload mean as for the prompt model. In-distribution: trained on 605 AlpacaEval answers,
# scored on the 200 held out (seed 0); unseen-source: trained on sharegpt:6000 only, scored on 791
# AlpacaEval answers (`train-predictor --kind progressive ... --holdout 200` / `--holdout-source
# alpaca-eval`; docs/predictors.md, "answer-structure cues"). Before the first token: the shipped
# prompt recipe above. (The earlier ridge head's in-distribution fits were 0.415 / -0.436 / 0.349,
# 0.168 / -0.094 / 0.336 and 0.034 / 0.498 / 0.324 at 25 / 50 / 75%.)
PROGRESSIVE_ERROR_IN = {
    0.00: PROMPT_ERROR_IN,
    0.25: {"b": 0.289, "c": -0.222, "sigma": 0.469},
    0.50: {"b": 0.137, "c": -0.140, "sigma": 0.460},
    0.75: {"b": 0.114, "c": 0.257, "sigma": 0.485},
}
PROGRESSIVE_ERROR_UNSEEN = {
    0.00: PROMPT_ERROR_UNSEEN,
    0.25: {"b": 0.657, "c": -0.526, "sigma": 0.555},
    0.50: {"b": 0.261, "c": -0.216, "sigma": 0.482},
    0.75: {"b": 0.163, "c": 0.235, "sigma": 0.488},
}


def default_errors(kind: str, error_model: str):
    """The shipped error parameters of a ``prompt`` or ``progressive`` predictor for one error model."""
    if error_model not in ERROR_MODELS:
        raise ValueError(f"error_model must be one of {', '.join(ERROR_MODELS)}, got {error_model!r}")
    unseen = error_model == "unseen-source"
    if kind == "prompt":
        return PROMPT_ERROR_UNSEEN if unseen else PROMPT_ERROR_IN
    return PROGRESSIVE_ERROR_UNSEEN if unseen else PROGRESSIVE_ERROR_IN


class RequestNoise:
    """A standard normal per request, from ``default_rng([seed, stream, request_id])``.

    Deterministic regardless of call order (each request has its own stream), cached.
    """

    def __init__(self, seed: int, stream: int):
        self.seed, self.stream = int(seed), int(stream)
        self._z: dict[int, float] = {}

    def __call__(self, request_id: int) -> float:
        z = self._z.get(request_id)
        if z is None:
            z = float(np.random.default_rng([self.seed, self.stream, int(request_id)]).standard_normal())
            self._z[request_id] = z
        return z


def params_at(table: dict[float, dict], progress: float) -> dict:
    """Linear interpolation of the error parameters in progress (held constant past the ends)."""
    keys = sorted(table)
    p = min(max(progress, keys[0]), keys[-1])
    for lo, hi in zip(keys, keys[1:]):
        if lo <= p <= hi:
            w = (p - lo) / (hi - lo)
            return {k: (1 - w) * table[lo][k] + w * table[hi][k] for k in ("b", "c", "sigma")}
    return dict(table[keys[0]])


def modelled_remaining(true_total: int, generated: int, mu: float, params: dict, z: float) -> float:
    """The modelled predictor's remaining-length estimate (>= 1) for one request."""
    rem = max(true_total - generated, 1)
    p = min(generated / max(true_total, 1), 0.99)
    m = mu + math.log1p(-p)
    return max(1.0, math.exp(m + params["c"] + params["b"] * (math.log(rem) - m) + params["sigma"] * z))
