"""The policy contract shared by the simulator and the real runner.

Both engines drive a policy with the same three-line loop::

    plan = policy.plan(view)        # SchedulerView -> StepPlan
    result = executor.run(plan)     # StepPlan -> StepResult (simulated or real)
    policy.observe(result)

Everything here is plain data: no simpy, no torch. A policy never sees a request's
true output length; it learns about lengths only through its predictor and through
the step results (who produced a first token, who finished).

Repeating plans. A plan may be executed for several consecutive steps: the engine
repeats it for up to ``plan.max_steps`` steps and stops early after any step in which
a request produced its last token, and (when ``plan.wake_on_arrival``) after the step
during which a new request arrived. This is exactly what re-planning after every step
would give for a policy whose plan only changes on those events, and it lets the
simulator advance many decode steps in closed form. A plan that contains prefill work
always runs for exactly one step.

The three types made once per engine step (``StepPlan``, ``SchedulerView``, ``StepResult``)
are frozen dataclasses with their ``__init__`` written out: the generated one of a frozen
dataclass makes one ``object.__setattr__`` call per field (about 5% of the simulator's
time). ``tests/test_contract.py`` checks the written-out signatures
against the fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from policies.kv_cache import KVCache


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a policy may know about a request when it arrives (never its output length)."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    max_output_tokens: int
    prompt: str | None = None
    slo_class: str | None = None


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """Prefill ``num_tokens`` more tokens of a request's pending context.

    A request's pending context is its prompt, or after a recompute preemption its prompt
    plus the tokens it had generated. The step that prefills the last pending token also
    samples the request's next output token.
    """

    request_id: int
    num_tokens: int


@dataclass(frozen=True, slots=True)
class LengthDirective:
    """A length controller's decision for one request: a target and the prompt text.

    The instruction is really added to the request's prompt, so its context grows by
    ``prompt_tokens_added`` tokens (counted by the engine's tokenizer, see
    ``BatchAligningController.bind_token_counter``): a policy that issues a directive
    allocates KV for, and prefills, the prompt plus these tokens, in the plan that first
    prefills the request.
    """

    request_id: int
    target_tokens: int
    instruction: str
    prompt_tokens_added: int = 0


@dataclass(frozen=True)
class StepPlan:
    """What to run next.

    ``decode`` rows each generate one token per step. A row whose request has already
    produced its last token is a *padded* row (static batching keeps finished rows in
    the batch, as a padded ``generate()`` call does): it costs compute and KV but makes
    no useful token. ``prefill_pad_to`` > 0 pads every prefill chunk of this step to that
    many tokens (cost only), as left-padding a static batch does.

    ``release`` returns finished requests to their users at the start of this step; a
    request's ``finish_s`` is the time it is released. ``preempt`` drops requests'
    KV (recompute later): the policy frees their blocks itself. ``directives`` carry the
    length controller's per-request instructions, applied before the request's prefill.
    """

    decode: tuple[int, ...] = ()
    prefill: tuple[PrefillChunk, ...] = ()
    release: tuple[int, ...] = ()
    preempt: tuple[int, ...] = ()
    reject: tuple[tuple[int, str], ...] = ()
    directives: tuple[LengthDirective, ...] = ()
    prefill_pad_to: int = 0
    max_steps: int = 1
    wake_on_arrival: bool = True

    def __init__(self, decode=(), prefill=(), release=(), preempt=(), reject=(), directives=(), prefill_pad_to=0,
                 max_steps=1, wake_on_arrival=True):
        self.__dict__.update(decode=decode, prefill=prefill, release=release, preempt=preempt, reject=reject,
                             directives=directives, prefill_pad_to=prefill_pad_to, max_steps=max_steps,
                             wake_on_arrival=wake_on_arrival)

    @property
    def is_idle(self) -> bool:
        return not self.decode and not self.prefill

    @staticmethod
    def make_empty() -> "StepPlan":
        return _EMPTY_PLAN


_EMPTY_PLAN = StepPlan()


@dataclass(frozen=True)
class SchedulerView:
    """What a policy sees when asked to plan.

    ``arrivals`` are the requests that arrived since the previous call (the policy keeps
    its own queue). ``kv`` is the shared KV-cache accountant: the policy allocates and
    frees blocks through it, and the engines size their real or simulated cache by it.
    """

    now_s: float
    arrivals: tuple[RequestView, ...]
    kv: "KVCache"
    more_arrivals: bool = True

    def __init__(self, now_s, arrivals, kv, more_arrivals=True):
        self.__dict__.update(now_s=now_s, arrivals=arrivals, kv=kv, more_arrivals=more_arrivals)


@dataclass(frozen=True)
class StepResult:
    """What happened when a plan ran for ``num_steps`` steps from ``start_s`` to ``end_s``.

    ``first_tokens``: requests whose first output token was produced (prefill finished for
    a request that had generated nothing). ``prefilled``: requests whose pending context
    was fully prefilled in this step (each of them produced one token). ``finished``:
    requests that produced their last output token. Each decode row of the plan that is
    not padding produced exactly ``num_steps`` tokens.

    ``embeddings`` / ``texts``: optional per-request state for progressive predictors
    (the runner's hidden states or decoded text so far); the simulator leaves them empty
    (a shared read-only empty mapping).
    """

    start_s: float
    end_s: float
    num_steps: int
    tokens: int
    first_tokens: tuple[int, ...] = ()
    prefilled: tuple[int, ...] = ()
    finished: tuple[int, ...] = ()
    embeddings: Mapping[int, object] = field(default_factory=lambda: NO_STATE)
    texts: Mapping[int, str] = field(default_factory=lambda: NO_STATE)

    def __init__(self, start_s, end_s, num_steps, tokens, first_tokens=(), prefilled=(), finished=(),
                 embeddings=None, texts=None):
        self.__dict__.update(start_s=start_s, end_s=end_s, num_steps=num_steps, tokens=tokens,
                             first_tokens=first_tokens, prefilled=prefilled, finished=finished,
                             embeddings=NO_STATE if embeddings is None else embeddings,
                             texts=NO_STATE if texts is None else texts)


NO_STATE: Mapping = MappingProxyType({})


class LazyTexts(Mapping):
    """Per-request text decoded when first read: ``sources`` maps a request to a function returning it.

    The runner hands progressive predictors the answer so far this way. Decoding every row's whole
    answer after every step cost more CPU than the step and slowed the *next* step by 8-50% (measured on
    tiny-llama: a decode step of 4 rows took 2.2 ms after a plain step and 3.2 ms after decoding 100
    answers of 300 tokens), while a predictor reads a row's text only at its re-prediction points.
    ``deferred()`` gives the functions themselves, for a holder that reads later; ``decode_s`` (a shared
    one-element list, optional) accumulates the time spent decoding, measured with ``clock``, so that an
    engine can keep it off its clock as it kept eager decoding off it."""

    def __init__(self, sources: dict, clock=None, decode_s: list | None = None):
        self._sources, self._cache = sources, {}
        self._clock, self._decode_s = clock, decode_s

    def __getitem__(self, rid):
        if rid not in self._cache:
            fn = self._sources[rid]  # KeyError for a request not in this step
            t0 = self._clock() if self._clock and self._decode_s is not None else None
            self._cache[rid] = fn()
            if t0 is not None:
                self._decode_s[0] += self._clock() - t0
        return self._cache[rid]

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def deferred(self) -> dict:
        """{request: function returning its text, decoded once}."""
        return {rid: (lambda r=rid: self[r]) for rid in self._sources}


@runtime_checkable
class Policy(Protocol):
    """A scheduling policy: one object drives either engine."""

    name: str

    def plan(self, view: SchedulerView) -> StepPlan: ...

    def observe(self, result: StepResult) -> None: ...


@runtime_checkable
class LengthPredictor(Protocol):
    """Predicts a request's total output length in tokens.

    ``generated`` is the number of tokens produced so far; ``embedding`` (or text) is
    optional state from the engine. Returns the predicted *total* output length
    (>= generated + 1 for an unfinished request).
    """

    name: str

    def predict(self, request: RequestView, generated: int = 0, embedding: object | None = None) -> float: ...


@runtime_checkable
class LengthController(Protocol):
    """Chooses per-request length targets (with their prompt instruction) for a batch."""

    name: str

    def target_lengths(self, batch: Sequence[RequestView], predicted: Sequence[float]) -> list[LengthDirective | None]: ...
