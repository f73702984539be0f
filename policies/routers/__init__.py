"""Routers: which replica of a cluster serves each arriving request.

A router is a small object with ``name``, ``needs_prediction`` and
``choose(request, predicted_tokens, loads) -> replica index``, called once per request
at its arrival, in arrival order. ``loads`` (:class:`ReplicaLoads`) is what a front-end
load balancer can know at that moment: per replica, the requests routed to it and not yet
released, and their work (prompt tokens + predicted output tokens). ``predicted_tokens`` is
the router's own length prediction (0 unless ``needs_prediction``). Ties go to the
lowest replica index, so routing is deterministic.

Adding a router is one file here and one line in ``ROUTERS``.
"""
from __future__ import annotations

from dataclasses import dataclass

from policies.routers.jsq import JoinShortestQueue
from policies.routers.least_loaded import LeastLoaded
from policies.routers.length_aware import LengthAware
from policies.routers.round_robin import RoundRobin


@dataclass
class ReplicaLoads:
    """Per replica: outstanding requests and outstanding work (tokens); lists indexed by replica."""

    requests: list[int]
    work: list[float]


ROUTERS = {
    "round-robin": RoundRobin,
    "least-loaded": LeastLoaded,
    "jsq": JoinShortestQueue,
    "length-aware": LengthAware,
}


def make_router(name: str, replicas: int):
    try:
        cls = ROUTERS[name]
    except KeyError:
        raise ValueError(f"--router: unknown router {name!r}; choose one of: {', '.join(ROUTERS)}") from None
    return cls(replicas)


__all__ = ["ROUTERS", "ReplicaLoads", "make_router"]
