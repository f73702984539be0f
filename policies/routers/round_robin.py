"""Round-robin: request k goes to replica k mod N, whatever the load."""
from __future__ import annotations


class RoundRobin:
    name = "round-robin"
    needs_prediction = False

    def __init__(self, replicas: int):
        self.replicas = replicas
        self._next = 0

    def choose(self, request, predicted_tokens: float, loads) -> int:
        k = self._next
        self._next = (k + 1) % self.replicas
        return k
