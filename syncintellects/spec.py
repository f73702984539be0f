"""A run specification: everything that determines one run, and how to build it.

``RunSpec`` is a small frozen dataclass (so a sweep is a list of them, and a result row
carries its spec). :func:`prepare` turns a spec into the trace, the policy object and the
simulator settings; both the simulator and the real runner start from it, so they see
the same requests and the same policy.

Which requests a run serves is decided in one place, :func:`traces.select_requests`
(seed k with ``num_requests`` N = the k-th window of N consecutive requests; ``rate``
applied to the selected requests; ``tile`` to repeat a trace that is too short), and
:func:`load_spec_trace` reads only as much of the trace file as that selection needs.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import asdict, dataclass, field, fields, replace

from policies.registry import make_policy
from simulator.engine import SimConfig, simulate
from simulator.metrics import RunResult
from syncintellects.errors import UsageError
from traces.schema import Trace


PREDICTOR_MODEL_HELP = ("directory written by train-predictor, or a bundled model's name: prompt-lora (the prompt "
                        "predictor with MiniLM's top layers fine-tuned; docs/predictors.md)")


@dataclass(frozen=True)
class RunSpec:
    trace: str = "azure-conv"
    policy: str = "continuous"
    rate: float | None = None            # requests/s of the served requests; None keeps the trace's own arrivals
    num_requests: int | None = None      # N: seed k serves requests k*N .. (k+1)*N-1; None: the whole trace
    seed: int = 0                        # the window (with num_requests), and every random draw of the run
    profile: str = "a100-llama-2-7b"
    batch_size: int | None = None        # static / length-grouped batching
    predictor: str | None = None         # oracle | noisy | prompt | progressive
    predictor_model: str | None = None   # trained predictor directory (prompt / progressive)
    length_control: bool = False
    kv_blocks: int | None = None
    max_context: int | None = None
    policy_params: tuple = field(default_factory=tuple)  # extra (name, value) pairs for the policy
    predictor_params: tuple = field(default_factory=tuple)  # (name, value) pairs for the predictor (error_model, ...)
    trace_options: tuple = field(default_factory=tuple)  # (name, value) pairs for traces.load_trace
    length_scale: float = 1.0            # multiply prompt and output lengths (fit a small model's context)
    slo: str | None = None               # SLO targets, e.g. "ttft=2,tpot=0.1" (simulator/slo.py)
    replicas: int = 1                    # replicas behind a router (simulator/cluster.py)
    router: str = "round-robin"          # policies/routers
    replica_profiles: tuple = ()         # one profile per replica (heterogeneous cluster); default: profile
    tile: bool = False                   # repeat the trace back to back when the window runs past its end

    def to_dict(self) -> dict:
        d = asdict(self)
        d["policy_params"] = dict(self.policy_params)
        d["predictor_params"] = dict(self.predictor_params)
        d["trace_options"] = dict(self.trace_options)
        return d

    def key_dict(self) -> dict:
        """:meth:`to_dict` less the fields added later that are still empty, so that the records keyed on it
        (sweep run keys, a capacity search's record) of older specs stay what they were and still resume."""
        d = self.to_dict()
        if not d["predictor_params"]:
            del d["predictor_params"]
        return d

    def with_(self, **changes) -> "RunSpec":
        return replace(self, **changes)


# field -> (command-line flag, test, what is expected); None always passes for optional fields
_CHECKS = {
    "rate": ("--rate", lambda v: _number(v) and math.isfinite(v) and v > 0, "a number > 0 (requests/s)"),
    "num_requests": ("--num-requests", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "seed": ("--seed", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "batch_size": ("--batch-size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "kv_blocks": ("--kv-blocks", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "max_context": ("--max-context", lambda v: _integer(v) and v >= 2, "an integer >= 2 (tokens)"),
    "length_scale": ("--length-scale", lambda v: _number(v) and math.isfinite(v) and v > 0, "a number > 0"),
    "length_control": ("--length-control", lambda v: isinstance(v, bool), "on or off (true/false)"),
    "tile": ("--tile", lambda v: isinstance(v, bool), "true or false"),
    "trace": ("--trace", lambda v: isinstance(v, str) and v != "", "a bundled trace name or a file path"),
    "policy": ("--policy", lambda v: isinstance(v, str) and v != "", "a policy name"),
    "profile": ("--profile", lambda v: isinstance(v, str) and v != "", "a profile name or .json path"),
    "replicas": ("--replicas", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "router": ("--router", lambda v: v in _routers(), "one of round-robin, least-loaded, jsq, length-aware"),
    "slo": ("--slo", lambda v: isinstance(v, str) and _slo_ok(v), "[CLASS:]ttft=S,tpot=S,e2e=S (seconds > 0)"),
}
_integer = lambda v: isinstance(v, int) and not isinstance(v, bool)


def _routers():
    from policies.routers import ROUTERS

    return ROUTERS


def _slo_ok(text: str) -> bool:
    from simulator.slo import parse_slo

    try:
        parse_slo(text)
    except ValueError:
        return False
    return True


_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)


def check_spec(spec: RunSpec) -> RunSpec:
    """Refuse values that make no sense (UsageError naming the flag and field); returns the spec."""
    for name, (flag, ok, expected) in _CHECKS.items():
        v = getattr(spec, name)
        if v is None and name not in ("trace", "policy", "profile", "seed", "length_control", "tile", "length_scale"):
            continue
        if not ok(v):
            raise UsageError(f"{flag} ({name}): got {v!r}, expected {expected}")
    return spec


def load_spec_trace(spec: RunSpec) -> Trace:
    """The requests the spec serves: :func:`traces.select_requests` on its trace, lengths scaled.

    Only the rows the selection needs are read (``(seed + 1) * num_requests``), so a few
    requests of a huge file cost little; tiling reads the whole trace.
    """
    from traces import load_trace, scale_lengths, select_requests

    check_spec(spec)
    need = None if spec.num_requests is None or spec.tile else (spec.seed + 1) * spec.num_requests
    trace = load_trace(spec.trace, max_rows=need, **dict(spec.trace_options))
    trace = select_requests(trace, spec.num_requests, spec.seed, spec.rate, spec.tile)
    return scale_lengths(trace, spec.length_scale)


def seed_warnings(spec: RunSpec, trace: Trace | None = None) -> list[str]:
    """Say so when a seed cannot change which requests are served (so seeds would not replicate)."""
    arrivals_seed = dict(spec.trace_options).get("seed")  # synthetic arrivals drawn with this run's seed differ
    if spec.num_requests is None and spec.seed != 0 and arrivals_seed != spec.seed:
        return [f"seed {spec.seed} serves the same requests as seed 0: without --num-requests the whole trace "
                f"is served; give --num-requests N to serve the seed-th window of N requests"]
    return []


def router_warnings(spec: RunSpec) -> list[str]:
    """Say so when a router has one replica to send to (the run is the same under every router)."""
    if spec.replicas == 1 and spec.router != RunSpec.router:
        return [f"router {spec.router!r} with one replica: every request goes to it, as under any router; "
                f"give --replicas N (N >= 2) to compare routers"]
    return []


def policy_config_class(name: str):
    """A policy's config dataclass (the type of its ``config`` argument), or None."""
    import typing

    from policies.registry import POLICIES

    hints = typing.get_type_hints(POLICIES[name].__init__)
    return next((a for a in typing.get_args(hints.get("config")) if a is not type(None)), None)


def policy_parameters(name: str) -> dict:
    """The ``--param`` names a policy takes and their defaults (the fields of its config dataclass)."""
    config = policy_config_class(name)
    return {} if config is None else {f.name: f.default for f in fields(config)}


def check_policy_params(policy: str, params: dict) -> None:
    """A ``--param`` value must have its default's type (an integer field takes no 2.5 or 'abc')."""
    from policies.registry import POLICIES

    if policy not in POLICIES:
        return  # make_policy names the unknown policy
    defaults = policy_parameters(policy)
    for k, v in params.items():
        if k not in defaults:
            if k in ("predictor", "controller"):
                continue
            raise UsageError(f"--param {k}: policy {policy!r} has no parameter {k!r}; its parameters: "
                             + (", ".join(f"{n} (default {d!r})" for n, d in defaults.items()) or "none"))
        d = defaults[k]
        kind = ("true or false" if isinstance(d, bool) else "an integer" if isinstance(d, int)
                else "a number" if isinstance(d, float) else None)
        good = (isinstance(v, bool) if isinstance(d, bool) else _integer(v) if isinstance(d, int)
                else _number(v) and math.isfinite(v) if isinstance(d, float) else True)
        if not good:
            raise UsageError(f"--param {k}={v!r}: expected {kind} (default {d!r})")
    config = policy_config_class(policy)
    if config is not None:
        try:  # the config's own range checks (e.g. watermark in [0, 1)), named as the flag
            config(**{k: v for k, v in params.items() if k in defaults})
        except ValueError as e:
            raise UsageError(f"--param of policy {policy!r}: {e}") from None


def build_policy(spec: RunSpec, trace: Trace):
    """The policy object for a spec, with its predictor and length controller if asked for."""
    params = dict(spec.policy_params)
    check_policy_params(spec.policy, params)
    if spec.batch_size is not None:
        from policies.registry import POLICIES

        if "batch_size" in params:
            raise UsageError(f"--batch-size {spec.batch_size} and --param batch_size={params['batch_size']!r}: "
                             "the same setting twice; give one")
        if spec.policy in POLICIES and "batch_size" not in policy_parameters(spec.policy):
            raise UsageError(f"--batch-size: policy {spec.policy!r} takes no batch size; its parameters (--param): "
                             + (", ".join(policy_parameters(spec.policy)) or "none"))
        params["batch_size"] = spec.batch_size
    # A policy's default predictor is built here too, so it sees the run's trace and seed.
    predictor = run_predictor(spec)
    if predictor is None and spec.predictor_params:
        raise UsageError(f"--predictor-param needs a predictor: policy {spec.policy!r} has no default one; "
                         f"give --predictor (oracle, noisy, prompt, progressive)")
    if predictor is not None:
        params["predictor"] = build_predictor(spec, predictor, trace)
    if spec.length_control:
        from policies.control import make_controller

        params["controller"] = make_controller()
    return make_policy(spec.policy, **params)


def predictor_parameters(name: str) -> dict:
    """The ``--predictor-param`` names a predictor takes and their defaults (its constructor's keywords
    but the trace, seed and model directory, which come from the run)."""
    import inspect

    from policies.predictors import PREDICTORS

    if name not in PREDICTORS:
        return {}
    sig = inspect.signature(PREDICTORS[name].__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", "trace", "seed", "model_dir") and p.kind is p.POSITIONAL_OR_KEYWORD}


def build_predictor(spec: RunSpec, name: str, trace: Trace):
    """The run's predictor ``name`` with the spec's ``--predictor-param`` values (UsageError naming the flag)."""
    from policies.predictors import make_predictor

    params = dict(spec.predictor_params)
    known = predictor_parameters(name)
    for k, v in params.items():
        if known and k not in known:
            raise UsageError(f"--predictor-param {k}: predictor {name!r} has no parameter {k!r}; its parameters: "
                             + ", ".join(f"{n} (default {d!r})" for n, d in known.items()))
        d = known.get(k)
        if isinstance(d, (int, float)) and not isinstance(d, bool) and not (_number(v) and math.isfinite(v)):
            raise UsageError(f"--predictor-param {k}={v!r}: expected a number (default {d!r})")
    if spec.predictor_model is not None and name in ("oracle", "noisy"):
        raise UsageError(f"--predictor-model {spec.predictor_model}: predictor {name!r} reads the trace's true "
                         "lengths and takes no model directory")
    try:
        return make_predictor(name, trace=trace, seed=spec.seed, model_dir=spec.predictor_model, **params)
    except (ValueError, TypeError) as e:
        if not params:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise UsageError(f"--predictor-param {given}: {str(e).splitlines()[0]}") from None


def length_response_model(spec: RunSpec):
    """The simulator's model of how responses react to length instructions (None when control is off)."""
    if not spec.length_control:
        return None
    from policies.control import default_length_response

    return default_length_response()


def prepare(spec: RunSpec) -> tuple[Trace, object, SimConfig]:
    trace = load_spec_trace(spec)  # checks the spec first
    policy = build_policy(spec, trace)
    cfg = SimConfig(profile=spec.profile, kv_blocks=spec.kv_blocks, max_context=spec.max_context, seed=spec.seed)
    return trace, policy, cfg


def run_simulation(spec: RunSpec, progress: bool = False, engine: str = "auto", steps_dir=None) -> RunResult:
    """``steps_dir``: where a long run streams its per-step records (simulator/step_records.py)."""
    from simulator.slo import apply_slo, parse_slo

    slo = parse_slo(spec.slo) if spec.slo else None  # a bad --slo fails before the run
    trace, policy, cfg = prepare(spec)
    cfg = replace(cfg, progress=progress, engine=engine)  # engine: auto | fast | python, same output files
    if spec.replicas != 1 or spec.replica_profiles:
        result = run_cluster(spec, trace, policy, cfg, steps_dir)
    else:
        result = simulate(trace, policy, cfg, length_response=length_response_model(spec), steps_dir=steps_dir)
    if slo is not None:
        result.requests = apply_slo(result.requests, result.summary, slo, trace.slo_class)
    result.config["spec"] = spec.to_dict()
    from syncintellects.inputs import fingerprints

    result.config["inputs"] = fingerprints([spec])  # the content hashes of the files the run read (provenance)
    add_warnings(result.summary, seed_warnings(spec, trace) + router_warnings(spec)
                 + seen_prompt_warnings(spec, trace, result.summary))
    return result


def run_cluster(spec: RunSpec, trace: Trace, policy, cfg: SimConfig, steps_dir=None) -> RunResult:
    """``spec.replicas`` replicas (each its own policy instance and profile) behind ``spec.router``."""
    from policies.routers import make_router
    from simulator.cluster import simulate_cluster
    from simulator.profile import load_profile

    names = list(spec.replica_profiles) or [spec.profile] * spec.replicas
    if spec.replicas < 1 or len(names) != spec.replicas:
        raise ValueError(f"--replicas {spec.replicas}: needs >= 1 and one --replica-profiles entry per replica "
                         f"(got {len(spec.replica_profiles)})")
    router = make_router(spec.router, spec.replicas)
    predictor = None
    if router.needs_prediction:  # the router's own predictor: the run's kind, or a model of a real one
        from policies.predictors import make_predictor

        predictor = (build_predictor(spec, spec.predictor, trace) if spec.predictor else
                     make_predictor("noisy", trace=trace, seed=spec.seed, model_dir=spec.predictor_model))
    policies = [policy] + [build_policy(spec, trace) for _ in range(spec.replicas - 1)]
    return simulate_cluster(trace, policies, router, cfg, profiles=[load_profile(p) for p in names],
                            length_response=length_response_model(spec), predictor=predictor, steps_dir=steps_dir)


def run_predictor(spec: RunSpec) -> str | None:
    """The predictor a run of ``spec`` uses: ``--predictor``, else its policy's default one (or None)."""
    from policies.registry import POLICIES

    return spec.predictor or getattr(POLICIES.get(spec.policy), "default_predictor", None)


def learned_model_dir(spec: RunSpec):
    """The model directory a run of ``spec`` reads: ``--predictor-model`` (a bundled name resolved), else the
    shipped model of a learned predictor (prompt, progressive), else None."""
    from policies.predictors.learned import SHIPPED, model_path

    if spec.predictor_model is not None:
        return Path(model_path(spec.predictor_model))
    kind = run_predictor(spec)
    return SHIPPED / kind if kind in ("prompt", "progressive") else None


def seen_prompt_warnings(spec: RunSpec, trace: Trace, summary: dict) -> list[str]:
    """A learned predictor reading prompts its model was trained on predicts them in-sample: count them
    (``predictor_seen_prompts`` of ``predictor_prompts`` in the summary) and say so when there are any."""
    kind = run_predictor(spec)
    prompts = [p for p in (trace.prompt or []) if p]
    if kind not in ("prompt", "progressive") or not prompts:
        return []
    from policies.predictors.train import seen_prompts

    seen = seen_prompts(learned_model_dir(spec), prompts)
    if seen is None:  # a model written before its training prompts were kept
        return []
    summary["predictor_seen_prompts"], summary["predictor_prompts"] = seen, len(prompts)
    if not seen:
        return []
    who = f"predictor model {spec.predictor_model}" if spec.predictor_model else f"the shipped {kind} predictor model"
    return [f"{seen} of the {len(prompts)} requests' prompts are in the training set of {who}: "
            f"its predictions on them are in-sample, so optimistic; for an unseen-source study pass "
            f"--predictor-model with a model trained without them (train-predictor --holdout-source)"]


def add_warnings(summary: dict, lines: list[str]) -> None:
    """Append warning lines to ``summary["warnings"]`` (created by the metrics)."""
    if lines:
        summary["warnings"] = list(summary.get("warnings", [])) + list(lines)
