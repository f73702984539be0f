"""A run specification: everything that determines one run, and how to build it.

``RunSpec`` is a small frozen dataclass (so a sweep is a list of them, and a result row
carries its spec). :func:`prepare` turns a spec into the trace, the policy object and the
simulator settings; both the simulator and the real runner start from it, so they see
the same requests and the same policy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from policies.registry import make_policy
from simulator.engine import SimConfig, simulate
from simulator.metrics import RunResult
from traces.schema import Trace


@dataclass(frozen=True)
class RunSpec:
    trace: str = "azure-conv"
    policy: str = "continuous"
    rate: float | None = None            # requests/s; None keeps the trace's own arrivals
    num_requests: int | None = None      # first N requests (after rate scaling)
    seed: int = 0
    profile: str = "a100-llama-2-7b-fp16"
    batch_size: int | None = None        # static / length-grouped batching
    predictor: str | None = None         # oracle | noisy | prompt | progressive
    predictor_model: str | None = None   # trained predictor directory (prompt / progressive)
    length_control: bool = False
    kv_blocks: int | None = None
    max_context: int | None = None
    policy_params: tuple = field(default_factory=tuple)  # extra (name, value) pairs for the policy
    trace_options: tuple = field(default_factory=tuple)  # (name, value) pairs for traces.load_trace
    length_scale: float = 1.0            # multiply prompt and output lengths (fit a small model's context)
    slo: str | None = None               # SLO targets, e.g. "ttft=2,tpot=0.1" (simulator/slo.py)
    replicas: int = 1                    # replicas behind a router (simulator/cluster.py)
    router: str = "round-robin"          # policies/routers
    replica_profiles: tuple = ()         # one profile per replica (heterogeneous cluster); default: profile

    def to_dict(self) -> dict:
        d = asdict(self)
        d["policy_params"] = dict(self.policy_params)
        d["trace_options"] = dict(self.trace_options)
        return d

    def with_(self, **changes) -> "RunSpec":
        return replace(self, **changes)


def load_spec_trace(spec: RunSpec) -> Trace:
    """The spec's trace: loaded, length-scaled, rate-rescaled, then cut to the first N requests."""
    from traces import load_trace, rescale_rate, scale_lengths

    trace = scale_lengths(load_trace(spec.trace, **dict(spec.trace_options)), spec.length_scale)
    if spec.rate is not None:
        trace = rescale_rate(trace, spec.rate)
    if spec.num_requests is not None:
        if spec.num_requests < 1:
            raise ValueError(f"--num-requests must be >= 1, got {spec.num_requests}")
        trace = trace.head(spec.num_requests)
    return trace


def build_policy(spec: RunSpec, trace: Trace):
    """The policy object for a spec, with its predictor and length controller if asked for."""
    params = dict(spec.policy_params)
    if spec.batch_size is not None:
        params["batch_size"] = spec.batch_size
    from policies.registry import POLICIES

    # A policy's default predictor is built here too, so it sees the run's trace and seed.
    predictor = spec.predictor or getattr(POLICIES.get(spec.policy), "default_predictor", None)
    if predictor is not None:
        from policies.predictors import make_predictor

        params["predictor"] = make_predictor(predictor, trace=trace, seed=spec.seed, model_dir=spec.predictor_model)
    if spec.length_control:
        from policies.control import make_controller

        params["controller"] = make_controller()
    return make_policy(spec.policy, **params)


def length_response_model(spec: RunSpec):
    """The simulator's model of how responses react to length instructions (None when control is off)."""
    if not spec.length_control:
        return None
    from policies.control import default_length_response

    return default_length_response()


def prepare(spec: RunSpec) -> tuple[Trace, object, SimConfig]:
    trace = load_spec_trace(spec)
    policy = build_policy(spec, trace)
    cfg = SimConfig(profile=spec.profile, kv_blocks=spec.kv_blocks, max_context=spec.max_context, seed=spec.seed)
    return trace, policy, cfg


def run_simulation(spec: RunSpec, progress: bool = False) -> RunResult:
    from simulator.slo import apply_slo, parse_slo

    slo = parse_slo(spec.slo) if spec.slo else None  # a bad --slo fails before the run
    trace, policy, cfg = prepare(spec)
    cfg = replace(cfg, progress=progress)
    if spec.replicas != 1 or spec.replica_profiles:
        result = run_cluster(spec, trace, policy, cfg)
    else:
        result = simulate(trace, policy, cfg, length_response=length_response_model(spec))
    if slo is not None:
        result.requests = apply_slo(result.requests, result.summary, slo, trace.slo_class)
    result.config["spec"] = spec.to_dict()
    return result


def run_cluster(spec: RunSpec, trace: Trace, policy, cfg: SimConfig) -> RunResult:
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

        predictor = make_predictor(spec.predictor or "noisy", trace=trace, seed=spec.seed,
                                   model_dir=spec.predictor_model)
    policies = [policy] + [build_policy(spec, trace) for _ in range(spec.replicas - 1)]
    return simulate_cluster(trace, policies, router, cfg, profiles=[load_profile(p) for p in names],
                            length_response=length_response_model(spec), predictor=predictor)
