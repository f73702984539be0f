"""Least outstanding work: the replica whose outstanding requests hold the fewest tokens to process,
counting each as its prompt plus its predicted output (the router's own length predictor)."""
from __future__ import annotations


class LeastLoaded:
    name = "least-loaded"
    needs_prediction = True

    def __init__(self, replicas: int):
        self.replicas = replicas

    def choose(self, request, predicted_tokens: float, loads) -> int:
        w = loads.work
        return w.index(min(w))
