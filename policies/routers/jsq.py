"""Join the shortest queue: the replica with the fewest outstanding (routed, not yet released) requests."""
from __future__ import annotations


class JoinShortestQueue:
    name = "jsq"
    needs_prediction = False

    def __init__(self, replicas: int):
        self.replicas = replicas

    def choose(self, request, predicted_tokens: float, loads) -> int:
        q = loads.requests
        return q.index(min(q))
