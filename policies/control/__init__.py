"""Length control: per-request length targets for a batch, and the simulator's model of the answer.

- :func:`make_controller` builds the :class:`~policies.control.controller.BatchAligningController`
  (a ``LengthController``: ``target_lengths(batch, predicted) -> [LengthDirective | None]``).
- :func:`default_length_response` is how answers react to the instruction in the simulator:
  ``apply(natural, target, rng) -> (achieved tokens, qos)``, fitted to real measurements.
"""
from __future__ import annotations

from policies.control.controller import BatchAligningController
from policies.control.response import LengthResponse, default_length_response, weak_model_response


def make_controller(**params) -> BatchAligningController:
    """The batch-aligning controller; parameters as in :class:`BatchAligningController`."""
    try:
        return BatchAligningController(**params)
    except TypeError as e:
        raise ValueError(f"length controller: {e}") from None


__all__ = ["BatchAligningController", "LengthResponse", "default_length_response", "make_controller",
           "weak_model_response"]
