"""Length-aware routing: similar predicted output lengths go to the same replica.

The cluster form of the SyncIntellects idea: a replica that serves answers of similar
length batches them with little waste. The predicted lengths seen so far (a histogram
over log-spaced bins, 8 per doubling) are split into N equal-count bands; a request goes
to the replica of its band (band k: replica k, shortest answers on replica 0). So that
one band cannot swamp its replica when the mix shifts, a request whose band's replica has
more than ``2 * min + slack`` outstanding requests goes to the least-loaded replica
(fewest outstanding requests) instead.
"""
from __future__ import annotations

import math

BINS_PER_DOUBLING = 8
NUM_BINS = 20 * BINS_PER_DOUBLING  # up to 2^20 tokens


class LengthAware:
    name = "length-aware"
    needs_prediction = True

    def __init__(self, replicas: int, slack: int = 8):
        self.replicas = replicas
        self.slack = slack
        self.hist = [0] * NUM_BINS
        self.seen = 0

    def band(self, predicted_tokens: float) -> int:
        """The replica whose band holds this length (mid-rank among the lengths seen, this one included)."""
        b = min(max(int(math.log2(max(predicted_tokens, 1.0)) * BINS_PER_DOUBLING), 0), NUM_BINS - 1)
        self.hist[b] += 1
        self.seen += 1
        below = sum(self.hist[:b]) + (self.hist[b] - 1) / 2.0
        return min(int(below / self.seen * self.replicas), self.replicas - 1)

    def choose(self, request, predicted_tokens: float, loads) -> int:
        k = self.band(predicted_tokens)
        q = loads.requests
        least = min(q)
        if q[k] > 2 * least + self.slack:
            return q.index(least)
        return k
