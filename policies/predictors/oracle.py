"""The oracle and the noisy oracle: simulator-only predictors that read the truth.

The truth reaches them only through ``bind_truth`` (the simulator's engine calls it with
``true_output(request_id)``, the length after capping and length control), so a policy
never sees it. The noisy oracle multiplies the truth by a per-request log-normal error
whose spread is the real spread of one model's answer length for the *same* prompt: no
predictor that sees only the prompt can do better on a single sample.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from policies.contract import RequestView
from policies.predictors.errors import NOISY_SIGMA, RequestNoise


class _TruthBound:
    refresh_every: int | None = None

    def __init__(self) -> None:
        self._truth: Callable[[int], int] | None = None

    def bind_truth(self, true_output: Callable[[int], int]) -> None:
        """Called by the simulator: ``true_output(request_id)`` is the true output length."""
        self._truth = true_output

    def _true(self, request: RequestView) -> int:
        if self._truth is None:
            raise ValueError(f"predictor {self.name!r} reads the true output length: it works in the simulator "
                             "and with forced lengths in the runner, not with --length-mode natural "
                             "(no truth was bound with bind_truth)")
        return int(self._truth(request.request_id))


class OraclePredictor(_TruthBound):
    """Predicts the exact true output length."""

    name = "oracle"

    def predict(self, request: RequestView, generated: int = 0, embedding=None) -> float:
        return float(max(self._true(request), generated + 1))


class NoisyOraclePredictor(_TruthBound):
    """truth x exp(sigma z), z ~ N(0, 1) drawn once per request from (seed, request_id).

    Median-unbiased in tokens. ``sigma`` defaults to :data:`~policies.predictors.errors.NOISY_SIGMA`,
    the within-prompt spread of Vicuna-7B's answer lengths over four temperatures.
    """

    name = "noisy"

    def __init__(self, sigma: float = NOISY_SIGMA, seed: int = 0):
        super().__init__()
        if not sigma >= 0:
            raise ValueError(f"noisy oracle: sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.seed = int(seed)
        self._noise = RequestNoise(seed, stream=1)

    def predict(self, request: RequestView, generated: int = 0, embedding=None) -> float:
        z = self._noise(request.request_id)
        return float(max(self._true(request) * np.exp(self.sigma * z), generated + 1))
