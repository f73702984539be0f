"""The QoS-friendly length controller: align a batch's lengths without gutting any answer.

A batch runs as long as its longest member (static batching pads to it; a length-grouped
batch waits for it). The controller asks only the requests predicted to run longest to
stop earlier, and only as far as needed:

1. The *cap* C is the larger of the batch's ``align_quantile`` predicted length (default:
   the median) and the longest prediction among requests it may not touch (``slo_class``
   in ``protected``, default "strict" and "quality"): cutting below that gains nothing.
2. A controllable request predicted above C gets the target max(C, ``min_fraction`` x its
   prediction): the QoS guard, it is never asked for less than that share of its predicted
   natural length (default 0.6).
3. The batch's new predicted max M' is the largest of the targets and untouched
   predictions; every target is raised to M' (cutting below M' shortens no batch), and
   requests predicted at or below M' are left alone.
4. If M' is not at least ``min_gain`` (default 5%) below the batch's predicted max, control
   would not help: no directives at all.

The instruction is added to the prompt, so each directive says how many prompt tokens it
adds. An engine with a real tokenizer binds its counter (:meth:`bind_token_counter`); the
simulator uses :func:`estimate_tokens`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from policies.contract import LengthDirective, RequestView


@dataclass(frozen=True)
class BatchAligningController:
    """Per-request length targets that shrink the batch's predicted max under a QoS guard."""

    min_fraction: float = 0.6
    align_quantile: float = 0.5
    min_gain: float = 0.05
    protected: tuple[str, ...] = ("strict", "quality")
    # MiniLM tokens per whitespace word on the bundled Llama-2-7b-chat answers: 1.29.
    tokens_per_word: float = 1.29
    name: str = "batch-align"
    count_tokens: Callable[[str], int] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_fraction <= 1:
            raise ValueError(f"length controller: min_fraction must be in (0, 1], got {self.min_fraction}")
        if not 0 <= self.align_quantile <= 1:
            raise ValueError(f"length controller: align_quantile must be in [0, 1], got {self.align_quantile}")
        if not 0 <= self.min_gain < 1 or self.tokens_per_word <= 0:
            raise ValueError(f"length controller: need 0 <= min_gain < 1 and tokens_per_word > 0 ({self})")

    def instruction(self, target_tokens: int) -> str:
        """The exact text added to the prompt for a target (in words, what a model understands)."""
        return f"Answer in at most {self.words(target_tokens)} words."

    def bind_token_counter(self, count_tokens: Callable[[str], int]) -> None:
        """Count instruction tokens with the serving model's tokenizer (the runner binds it)."""
        object.__setattr__(self, "count_tokens", count_tokens)

    def instruction_tokens(self, text: str) -> int:
        return int((self.count_tokens or estimate_tokens)(text))

    def words(self, target_tokens: int) -> int:
        return max(1, int(round(target_tokens / self.tokens_per_word)))

    def controllable(self, request: RequestView) -> bool:
        return request.slo_class not in self.protected

    def target_lengths(self, batch: Sequence[RequestView], predicted: Sequence[float]) -> list[LengthDirective | None]:
        if len(batch) != len(predicted):
            raise ValueError(f"length controller: {len(batch)} requests but {len(predicted)} predictions")
        n = len(batch)
        if n < 2:
            return [None] * n  # a batch of one has no padding to remove
        pred = np.asarray(predicted, dtype=np.float64)
        if not np.isfinite(pred).all() or (pred <= 0).any():
            bad = int(np.argmax(~np.isfinite(pred) | (pred <= 0)))
            raise ValueError(f"length controller: prediction {pred[bad]!r} for request {batch[bad].request_id} "
                             "is not a positive number of tokens")
        ctl = np.array([self.controllable(r) for r in batch])
        fixed_max = float(pred[~ctl].max()) if (~ctl).any() else 0.0
        cap = max(float(np.quantile(pred, self.align_quantile)), fixed_max)
        over = ctl & (pred > cap)
        if not over.any():
            return [None] * n
        targets = np.maximum(cap, self.min_fraction * pred)
        new_max = max(float(pred[~over].max()) if (~over).any() else 0.0, float(targets[over].max()))
        if new_max > (1 - self.min_gain) * float(pred.max()):
            return [None] * n
        out: list[LengthDirective | None] = []
        for r, p, o in zip(batch, pred.tolist(), over.tolist()):
            # Whole tokens, never below the guard (ceil) and never above the prediction.
            t = math.ceil(max(new_max, self.min_fraction * p))
            if o and t < p:
                text = self.instruction(t)
                out.append(LengthDirective(request_id=r.request_id, target_tokens=t, instruction=text,
                                           prompt_tokens_added=self.instruction_tokens(text)))
            else:
                out.append(None)
        return out


def estimate_tokens(text: str) -> int:
    """Tokens of a short instruction without a tokenizer: one per word, number or punctuation
    mark, plus one separator ("Answer in at most 40 words." -> 8; Llama's tokenizer gives 9-10)."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + 1
