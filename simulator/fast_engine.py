"""The fast engine's glue: which policies it runs, the per-request state its replicas share, and the
single-replica driver. The loop itself is :func:`simulator.fast_continuous.replica`.

``SimConfig.engine`` (``simulate --engine``): ``auto`` runs the fast engine exactly when
:func:`supports` says it reproduces the policy, ``fast`` refuses any other policy, ``python``
always runs the contract's loop. Both engines write the same bytes.
"""
from __future__ import annotations

from array import array

import numpy as np

from policies.schedulers.continuous import ContinuousBatching, ContinuousConfig
from policies.schedulers.sarathi import SarathiConfig, SarathiServe
from policies.schedulers.vllm_v0 import VLLMv0
from simulator.fast_continuous import replica

FAST_POLICIES = (ContinuousBatching, SarathiServe, VLLMv0)


_FIELDS = set(vars(ContinuousBatching()))  # what the constructor sets: anything more is a change


def supports(policy) -> bool:
    """Whether the fast engine reproduces ``policy`` exactly: one of the built-in continuous-batching
    classes themselves (not a subclass, which may override a hook), with their own config class, no
    attribute set on the instance (a patched ``plan``, say), untouched since construction."""
    return (type(policy) in FAST_POLICIES and set(vars(policy)) == _FIELDS
            and type(policy.config) in (ContinuousConfig, SarathiConfig)
            and not policy._queue and not policy.running and not policy.views and not policy._finished)


class Shared:
    """Per-request truth and counters as typed arrays (shared by a cluster's replicas: each request
    lives on one); written into the recorder's arrays by :meth:`write_back` after the run."""

    def __init__(self, rec, output):
        t = rec.trace
        self.rec = rec
        n = len(t)
        # typed arrays: Python numbers on access, as lists give, at 8 bytes a value instead of ~36
        self.arrival = array("d", t.arrival_s.astype(np.float64).tobytes())
        self.prompt = array("q", t.prompt_tokens.astype(np.int64).tobytes())
        self.remaining = array("q", np.asarray(output, dtype=np.int64).tobytes())
        self.generated = array("q", bytes(8 * n))
        self.preemptions = array("q", bytes(8 * n))
        rec.output_tokens[:] = output

    def write_back(self) -> None:
        self.rec.generated[:] = np.frombuffer(self.generated, dtype=np.int64)
        self.rec.preemptions[:] = np.frombuffer(self.preemptions, dtype=np.int64)


def run_single(policy, num_blocks: int, block_size: int, cost, sh: Shared, rids: list, bar=None, rec=None) -> None:
    """One replica serving ``rids`` (all its requests, in arrival order) on its own clock; ``rec``: the
    recorder for its per-step records (default: the shared one). Call ``sh.write_back()`` after."""
    gen = replica(policy, num_blocks, block_size, cost, sh, sh.rec if rec is None else rec, rids, bar=bar)
    send = gen.send
    try:
        _, t = next(gen)
        while True:
            _, t = send(t)
    except StopIteration:
        pass
