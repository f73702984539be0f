"""Shared test helpers: small traces and a step-by-step wrapper for any policy."""
from __future__ import annotations

import dataclasses
import signal

import numpy as np
import pytest

from traces.schema import make_trace

# A shell starts a background job (`nohup make test &`) with SIGINT ignored, and a child process
# keeps an ignored signal: the tests that send Ctrl-C to a real command would then see it ignored.
# Restore Python's own handler so every child starts with SIGINT at its default, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def small_trace(n=50, rate=2.0, seed=0, prompt=(20, 400), output=(1, 200), name="synthetic-test"):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    return make_trace(name, arrivals, rng.integers(*prompt, n), rng.integers(*output, n))


class OneStepAtATime:
    """Wraps a policy so every plan runs a single step (the reference the multi-step engine must match)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.predictor = getattr(inner, "predictor", None)  # so the engine binds the truth to it

    def plan(self, view):
        plan = self.inner.plan(view)
        return dataclasses.replace(plan, max_steps=1) if plan.max_steps > 1 else plan

    def observe(self, result):
        self.inner.observe(result)


class SplitPredictor:
    """Odd requests predicted at 45 tokens, even ones at 10: one length bucket, so a length
    controller sees a batch worth aligning and shortens the long half."""

    name, refresh_every = "split", None

    def predict(self, request, generated=0, embedding=None):
        return 45.0 if request.request_id % 2 else 10.0


@pytest.fixture
def trace50():
    return small_trace()
