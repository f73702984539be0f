"""Synthetic workloads: arrival processes and request-length distributions, all seeded.

Arrivals are a renewal process: gaps between requests are i.i.d. Gamma with mean
``1 / rate`` and coefficient of variation ``cv`` (shape ``1 / cv**2``). ``cv = 1`` is the
exponential, i.e. a Poisson process; ``cv > 1`` is burstier, ``cv < 1`` more regular.
The first request arrives at 0, so ``Trace.mean_rate`` estimates ``rate`` from n-1 gaps.

Lengths are either resampled jointly from a real trace (each synthetic request copies
one real request's (prompt, output) pair, keeping their correlation) or drawn from a
bivariate log-normal fitted to a trace (means, spreads and correlation of the logs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from traces.schema import Trace, TraceError, make_trace

ARRIVAL_PROCESSES = ("poisson", "gamma")


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise TraceError("synthetic data needs an explicit seed (an int or a numpy Generator)")
    return np.random.default_rng(seed)


def arrival_times(n: int, rate: float, process: str = "poisson", cv: float = 1.0, seed=None) -> np.ndarray:
    """``n`` arrival times (s, first at 0) of a Poisson or Gamma renewal process at ``rate`` req/s."""
    if process not in ARRIVAL_PROCESSES:
        raise TraceError(f"unknown arrival process {process!r}; expected one of {ARRIVAL_PROCESSES}")
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise TraceError(f"number of requests must be an integer >= 1, got {n!r}")
    if not (math.isfinite(rate) and rate > 0):
        raise TraceError(f"arrival rate must be a finite number > 0 req/s, got {rate!r}")
    if process == "poisson" and cv != 1.0:
        raise TraceError(f"a Poisson process has cv = 1, got cv={cv!r}; use process='gamma' for other burstiness")
    if not (math.isfinite(cv) and cv > 0):
        raise TraceError(f"cv (coefficient of variation of inter-arrival gaps) must be > 0, got {cv!r}")
    rng = _rng(seed)
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n - 1)
    else:
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


@dataclass(frozen=True)
class EmpiricalLengths:
    """Joint (prompt, output) pairs of a real trace, resampled with replacement."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str = ""

    @classmethod
    def from_trace(cls, trace: Trace) -> "EmpiricalLengths":
        return cls(trace.prompt_tokens.copy(), trace.output_tokens.copy(), f"empirical:{trace.name}")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(self.prompt_tokens), size=n)
        return self.prompt_tokens[idx], self.output_tokens[idx]

    def describe(self) -> str:
        return f"{self.source} ({len(self.prompt_tokens)} pairs, resampled jointly)"


@dataclass(frozen=True)
class LognormalLengths:
    """Bivariate log-normal lengths: log(prompt), log(output) ~ N(mu, Sigma), rounded, clipped.

    ``rho`` is the correlation of the logs. Draws are rounded to integers and clipped to
    ``[1, max_*]`` (the fitted trace's maxima by default) so no absurd tail request appears.
    """

    mu_prompt: float
    sigma_prompt: float
    mu_output: float
    sigma_output: float
    rho: float = 0.0
    max_prompt: int = 1 << 20
    max_output: int = 1 << 20
    source: str = "lognormal"

    @classmethod
    def fit(cls, trace: Trace) -> "LognormalLengths":
        lp, lo = np.log(trace.prompt_tokens.astype(float)), np.log(trace.output_tokens.astype(float))
        rho = float(np.corrcoef(lp, lo)[0, 1]) if lp.std() > 0 and lo.std() > 0 else 0.0
        return cls(float(lp.mean()), float(lp.std()), float(lo.mean()), float(lo.std()), rho,
                   int(trace.prompt_tokens.max()), int(trace.output_tokens.max()), f"lognormal fit to {trace.name}")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
        z2 = self.rho * z1 + math.sqrt(max(0.0, 1 - self.rho**2)) * z2
        p = np.exp(self.mu_prompt + self.sigma_prompt * z1)
        o = np.exp(self.mu_output + self.sigma_output * z2)
        return (np.clip(np.rint(p), 1, self.max_prompt).astype(np.int64),
                np.clip(np.rint(o), 1, self.max_output).astype(np.int64))

    def describe(self) -> str:
        return (f"{self.source}: log prompt N({self.mu_prompt:.4g}, {self.sigma_prompt:.4g}^2), log output "
                f"N({self.mu_output:.4g}, {self.sigma_output:.4g}^2), rho {self.rho:.3g}, "
                f"clip [1, {self.max_prompt}] / [1, {self.max_output}]")


def synthesize(num_requests: int, rate: float, lengths, *, process: str = "poisson", cv: float = 1.0,
               seed=None, name: str | None = None) -> Trace:
    """A synthetic trace: ``num_requests`` arrivals at ``rate`` req/s with lengths from ``lengths``.

    ``lengths`` is an :class:`EmpiricalLengths`, a :class:`LognormalLengths`, or a Trace
    (resampled empirically). One Generator from ``seed`` draws arrivals, then lengths.
    """
    if isinstance(lengths, Trace):
        lengths = EmpiricalLengths.from_trace(lengths)
    rng = _rng(seed)
    arrivals = arrival_times(num_requests, rate, process, cv, rng)
    prompt, output = lengths.sample(num_requests, rng)
    cv_txt = "" if process == "poisson" else f", cv {cv:g}"
    seed_txt = "a Generator" if isinstance(seed, np.random.Generator) else str(seed)
    return make_trace(
        name or f"synthetic-{process}", arrivals, prompt, output, source="synthetic",
        notes={"arrivals": f"{process}{cv_txt} at {rate:g} req/s, seed {seed_txt}", "lengths": lengths.describe()},
    )


def with_synthetic_arrivals(trace: Trace, process: str, rate: float, cv: float = 1.0, seed=None) -> Trace:
    """``trace``'s requests, in order, with arrival times drawn from a synthetic process."""
    arr = arrival_times(len(trace), rate, process, cv, seed)
    cv_txt = "" if process == "poisson" else f", cv {cv:g}"
    return trace.with_arrivals(arr, note=f"synthetic arrivals: {process}{cv_txt} at {rate:g} req/s, seed {seed}")
