"""Every scheduling policy by name: one dict, one constructor each.

Adding a policy is one file in ``policies/schedulers/`` and one line here.
"""
from __future__ import annotations

from policies.schedulers.continuous import ContinuousBatching
from policies.schedulers.static import StaticBatching

POLICIES = {
    "static": StaticBatching,
    "continuous": ContinuousBatching,
    "length-grouped": __import__("policies.schedulers.length_grouped", fromlist=["x"]).LengthGroupedBatching,
    "sjf": __import__("policies.schedulers.sjf", fromlist=["x"]).SJFBatching,
    "srpt": __import__("policies.schedulers.srpt", fromlist=["x"]).SRPTBatching,
    "syncintellects": __import__("policies.schedulers.syncintellects", fromlist=["x"]).SyncIntellects,
    "syncintellects-continuous": __import__("policies.schedulers.syncintellects", fromlist=["x"]).SyncIntellectsContinuous,
}


def make_policy(name: str, **params):
    """Build a policy by name; unknown names and parameters are reported with what is accepted."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}") from None
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"policy {name!r}: {e}") from None
