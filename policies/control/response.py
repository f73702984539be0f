"""How a model's answer reacts to "Answer in at most N words.": the simulator's response model.

Fitted to published and shipped measurements (docs/length-control.md has the derivation):

- Compliance spread. Ruler (Li et al., arXiv 2409.18943): for untrained 7-8B models
  ln(achieved / target) is roughly normal with sigma 0.28-0.41. ``sigma = 0.35`` (midpoint).
- Ignoring the instruction. AlpacaEval concise variants (traces/alpaca-eval, six models,
  805 prompts, "be as concise as possible"): the share of requests whose concise answer is
  still >= 0.9 x the plain answer (MiniLM tokens) is 0.08 / 0.13 / 0.17 / 0.19 / 0.21 for the
  five strong models (gpt4_1106_preview, claude-2.1, gpt4_0613, Mixtral-8x7B,
  gpt-3.5-turbo-1106) and 0.54 for alpaca-7b. ``p_ignore = 0.17`` (median of the five);
  ``weak_model_response()`` uses alpaca-7b's 0.54.
- Tight limits undershoot. Concise Thoughts (Nayab et al., arXiv 2407.19825): Llama-2-7b-chat
  at 72 words natural, limit 15 -> 5 words, limit 30 -> 8 words: achieved/target 0.33 and 0.27,
  ln mean -1.2, at target/natural 0.21 and 0.42. ``mu_tight = -1.2`` for target/natural <=
  ``tight_ratio = 0.42``, rising linearly to ``mu_loose = 0`` (median on target) at
  ``loose_ratio = 0.6`` (an assumption: no published point between).
- A limit at or above the natural length changes nothing; an answer is never made longer
  than its natural length by a cap.

The QoS score is the share of the natural answer kept, min(1, achieved / natural): on the
AlpacaEval annotations the judged win rate kept by concise answers tracks that share
(gpt-3.5-turbo-1106: 0.44 of the plain win rate kept where concise/plain words < 0.5, 0.72 at
0.5-0.7, 0.86 at 0.7-0.9, 0.90 at 0.9-1.1; ``python -m policies.control.calibrate``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LengthResponse:
    """apply(natural, target, rng) -> (achieved tokens, qos in [0, 1])."""

    sigma: float = 0.35
    mu_loose: float = 0.0
    mu_tight: float = -1.2
    tight_ratio: float = 0.42
    loose_ratio: float = 0.6
    p_ignore: float = 0.17

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and 0 <= self.p_ignore <= 1 and 0 < self.tight_ratio < self.loose_ratio):
            raise ValueError(f"invalid length-response parameters: {self}")

    def mu(self, ratio: float) -> float:
        """Mean of ln(achieved / target) for a target at ``ratio`` x the natural length."""
        if ratio <= self.tight_ratio:
            return self.mu_tight
        if ratio >= self.loose_ratio:
            return self.mu_loose
        w = (ratio - self.tight_ratio) / (self.loose_ratio - self.tight_ratio)
        return (1 - w) * self.mu_tight + w * self.mu_loose

    def apply(self, natural_tokens: int, target_tokens: int, rng: np.random.Generator) -> tuple[int, float]:
        natural = int(natural_tokens)
        target = int(target_tokens)
        if natural < 1 or target < 1:
            raise ValueError(f"length response: natural ({natural}) and target ({target}) must be >= 1 token")
        if target >= natural:
            return natural, 1.0
        # Draw both numbers always, so the rng stream does not depend on the branch taken.
        ignore = rng.random() < self.p_ignore
        z = rng.standard_normal()
        if ignore:
            return natural, 1.0
        achieved = int(round(target * math.exp(self.mu(target / natural) + self.sigma * z)))
        achieved = min(max(achieved, 1), natural)
        return achieved, achieved / natural


def default_length_response() -> LengthResponse:
    """The response model for a capable 7B chat model (parameters above)."""
    return LengthResponse()


def weak_model_response() -> LengthResponse:
    """A model that mostly ignores length instructions (alpaca-7b: 54% ignore)."""
    return LengthResponse(p_ignore=0.54)
