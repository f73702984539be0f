"""Sarathi-Serve's stall-free batching (Agrawal et al., OSDI 2024; Vidur's ``sarathi`` scheduler).

Every step first takes all running decodes (never paused for a prefill), then continues
partly prefilled prompts and admits new ones first-come-first-served, in chunks, until the
step's token budget (decode rows count one token each) is spent. The small budget (512
tokens, Vidur's default chunk size) bounds how much a prefill can slow the decodes sharing
its step; a larger budget trades that for faster prefills.

The step composition is :class:`~policies.schedulers.continuous.ContinuousBatching`'s (which
is Sarathi-style with vLLM's 4,096-token budget); this class pins Sarathi-Serve's budget.
"""
from __future__ import annotations

from dataclasses import dataclass

from policies.schedulers.continuous import ContinuousBatching, ContinuousConfig


@dataclass(frozen=True)
class SarathiConfig(ContinuousConfig):
    max_batched_tokens: int = 512


class SarathiServe(ContinuousBatching):
    name = "sarathi"

    def __init__(self, config: SarathiConfig | None = None, **overrides):
        super().__init__(config or SarathiConfig(**overrides))
