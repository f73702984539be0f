"""Every scheduling policy by name: one dict, one constructor each.

Adding a policy is one file in ``policies/schedulers/`` and one line here.
"""
from __future__ import annotations

import inspect

from policies.schedulers.continuous import ContinuousBatching
from policies.schedulers.length_grouped import LengthGroupedBatching
from policies.schedulers.sarathi import SarathiServe
from policies.schedulers.sjf import SJFBatching
from policies.schedulers.srpt import SRPTBatching
from policies.schedulers.static import StaticBatching
from policies.schedulers.syncintellects import SyncIntellects, SyncIntellectsContinuous
from policies.schedulers.vllm_v0 import VLLMv0

POLICIES = {
    "static": StaticBatching,
    "continuous": ContinuousBatching,
    "length-grouped": LengthGroupedBatching,
    "sjf": SJFBatching,
    "srpt": SRPTBatching,
    "syncintellects": SyncIntellects,
    "syncintellects-continuous": SyncIntellectsContinuous,
    "vllm-v0": VLLMv0,
    "sarathi": SarathiServe,
}


def make_policy(name: str, **params):
    """Build a policy by name; unknown names and parameters are reported with what is accepted."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}") from None
    accepts = inspect.signature(cls.__init__).parameters
    for key, flag in (("predictor", "--predictor"), ("controller", "--length-control on")):
        if key in params and key not in accepts:
            users = sorted(n for n, c in POLICIES.items() if key in inspect.signature(c.__init__).parameters)
            raise ValueError(f"policy {name!r} does not use a length {key} ({flag}); policies that do: "
                             f"{', '.join(users)}")
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"policy {name!r}: {e}") from None
