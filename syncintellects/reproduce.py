"""Reproduce the SyncIntellects paper's comparison in the simulator.

The paper reports, against task batching served first-come-first-served, 17.76% lower
average latency and 9.34% higher throughput for its policy (progressive length
prediction + grouping + length control). :func:`run_reproduction` runs that comparison,
the policy's parts alone, and the same ideas on continuous batching, on the default
A100 / Llama-2-7B profile and a chat workload from real data: windows of the Azure LLM
inference conversation trace (real arrivals, prompt and output lengths), rescaled to
several load levels; seed k takes the k-th window of ``num_requests`` consecutive requests
(and seeds the predictors and the length-response model); a seed past the trace's last
window is an error, never a repeat of another window. Runs go to a process pool with a
progress bar; with an output directory each finished run is written at once to
``OUT/runs/<run key>.json``, so an interrupted reproduction resumes where it stopped.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from syncintellects.spec import RunSpec, build_policy, length_response_model
from syncintellects.workers import RowStore, parallel, slug
from simulator.engine import SimConfig, simulate

PAPER = {"mean_latency_reduction_pct": 17.76, "throughput_gain_pct": 9.34}
BASELINE = "task batching (static FCFS)"
HEADLINE = "SyncIntellects (static)"


@dataclass(frozen=True)
class Arm:
    """One policy configuration of the comparison."""

    label: str
    policy: str
    predictor: str | None = None
    length_control: bool = False
    params: tuple = ()  # extra (name, value) policy parameters


ARMS = (
    Arm(BASELINE, "static"),
    Arm("grouping + prompt prediction", "length-grouped", "prompt"),
    Arm("grouping + progressive prediction", "length-grouped", "progressive"),
    Arm(HEADLINE, "syncintellects", "progressive", True),
    Arm("grouping + oracle (upper bound)", "length-grouped", "oracle"),
    Arm("grouping + oracle, fixed batch size", "length-grouped", "oracle", params=(("variable_batch", False),)),
    Arm("continuous batching (vLLM FCFS)", "continuous"),
    Arm("SJF + prompt prediction (continuous)", "sjf", "prompt"),
    Arm("SRPT + progressive (continuous)", "srpt", "progressive"),
    Arm("SyncIntellects (continuous)", "syncintellects-continuous", "progressive", True),
)


@dataclass(frozen=True)
class ReproductionConfig:
    trace: str = "azure-conv"
    rates: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    num_requests: int = 1000
    profile: str = "a100-llama-2-7b"
    batch_size: int = 16
    workers: int = 2

    @staticmethod
    def quick() -> "ReproductionConfig":
        return ReproductionConfig(rates=(1.5, 4.0), seeds=(0, 1), num_requests=150)


@lru_cache(maxsize=4)
def _full_trace(name: str):
    from traces import load_trace

    return load_trace(name)


def windows(cfg: ReproductionConfig) -> int:
    """How many disjoint windows of ``num_requests`` requests the trace holds (seeds 0 .. windows-1)."""
    return len(_full_trace(cfg.trace)) // cfg.num_requests


def check_config(cfg: ReproductionConfig) -> None:
    """Refuse, before any run, settings that make no sense or seeds that would repeat a window."""
    import math

    bad_rate = next((r for r in cfg.rates if not (r > 0 and math.isfinite(r))), None)
    for wrong, flag, got, want in ((cfg.num_requests < 2, "--num-requests", cfg.num_requests, "an integer >= 2"),
                                   (not cfg.rates or bad_rate is not None, "--rates", bad_rate, "rates > 0 req/s"),
                                   (not cfg.seeds, "--seeds", len(cfg.seeds), "an integer >= 1"),
                                   (cfg.workers < 1, "--workers", cfg.workers, "an integer >= 1")):
        if wrong:
            raise ValueError(f"reproduce paper {flag}: got {got!r}, expected {want}")
    from simulator.profile import load_profile

    load_profile(cfg.profile)  # an unknown profile is reported before any run starts
    w = windows(cfg)
    if w < 1:
        raise ValueError(f"--num-requests {cfg.num_requests}: trace {cfg.trace!r} has only "
                         f"{len(_full_trace(cfg.trace))} requests")
    if min(cfg.seeds) < 0 or max(cfg.seeds) >= w:
        raise ValueError(f"--seeds {len(cfg.seeds)}: trace {cfg.trace!r} holds {w} windows of {cfg.num_requests} "
                         f"requests (seeds 0..{w - 1}); use at most {w} seeds or a smaller --num-requests")


def workload(cfg: ReproductionConfig, rate: float, seed: int):
    """The ``seed``-th window of ``num_requests`` consecutive requests, starting at 0, at ``rate`` req/s:
    the selection every command shares (:func:`traces.select_requests`); a seed past the last window
    is an error."""
    from traces import select_requests

    return select_requests(_full_trace(cfg.trace), cfg.num_requests, seed, rate)


def run_one(job: tuple[ReproductionConfig, Arm, float, int]) -> dict:
    """Simulate one arm at one rate and seed; returns a flat result row."""
    cfg, arm, rate, seed = job
    trace = workload(cfg, rate, seed)
    spec = RunSpec(trace=cfg.trace, policy=arm.policy, rate=rate, num_requests=cfg.num_requests, seed=seed,
                   profile=cfg.profile, batch_size=cfg.batch_size if arm.policy not in CONTINUOUS else None,
                   predictor=arm.predictor, length_control=arm.length_control, policy_params=arm.params)
    policy = build_policy(spec, trace)
    res = simulate(trace, policy, SimConfig(profile=cfg.profile, seed=seed), length_response=length_response_model(spec))
    s = res.summary
    return {"label": arm.label, "policy": arm.policy, "predictor": arm.predictor or "none",
            "length_control": arm.length_control, "rate": rate, "seed": seed, "num_requests": s["num_requests"],
            "num_finished": s["num_finished"], "num_rejected": s["num_rejected"], "mean_e2e_s": s["e2e_latency_s"]["mean"],
            "p99_e2e_s": s["e2e_latency_s"]["p99"], "mean_ttft_s": s["ttft_s"]["mean"],
            "throughput_output_tokens_per_s": s["throughput_output_tokens_per_s"],
            "throughput_requests_per_s": s["throughput_requests_per_s"], "mean_qos": s["qos_mean"],
            "offered_rate_requests_per_s": s.get("offered_rate_requests_per_s"),
            "preemptions": s["preemptions"], "mean_batch_size": s["mean_batch_size"],
            "padding_waste": s["padding_waste"]}


CONTINUOUS = ("continuous", "sjf", "srpt", "syncintellects-continuous")


def run_key(label: str, rate: float, seed: int) -> str:
    return f"{slug(label)}_r{rate:g}_s{seed}"


def _row_key(row: dict) -> str:
    return run_key(row["label"], row["rate"], row["seed"])


def run_reproduction(cfg: ReproductionConfig, arms=ARMS, progress: bool = True, out: str | Path | None = None,
                     fresh: bool = False) -> list[dict]:
    """Every arm at every rate and seed, in a pool of ``cfg.workers`` processes; rows in a fixed order.

    With ``out``, runs already in ``out/runs/`` are not run again and each new one is written
    as it finishes; an exception (Ctrl-C, SIGTERM: :class:`~syncintellects.workers.Interrupted`)
    stops the workers at once and keeps what is written.
    """
    check_config(cfg)
    study = {**{k: v for k, v in asdict(cfg).items() if k != "workers"}, "arms": [asdict(a) for a in arms]}
    if out is not None:
        from syncintellects.inputs import fingerprints

        inputs = fingerprints([RunSpec(trace=cfg.trace, profile=cfg.profile, policy=a.policy, predictor=a.predictor)
                               for a in arms])
        store = RowStore(out, study, _row_key, fresh, what="reproduction", inputs=inputs)
    else:
        store = None
    jobs = [(cfg, a, r, s) for a in arms for r in cfg.rates for s in cfg.seeds]
    done = store.begin() if store is not None else {}
    rows = [done[k] for k in (run_key(a.label, r, s) for _, a, r, s in jobs) if k in done]
    todo = [j for j in jobs if run_key(j[1].label, j[2], j[3]) not in done]
    if rows and progress:
        print(f"resuming: {len(rows)} of {len(jobs)} runs already done in {store.dir}", file=sys.stderr)
    bar = tqdm(total=len(jobs), initial=len(rows), desc="reproduce paper", unit="run", disable=not progress)
    results = parallel(run_one, todo, cfg.workers)
    try:
        for row in results:
            if store is not None:
                store.write(row)
            rows.append(row)
            bar.update()
    finally:
        results.close()
        bar.close()
    order = {a.label: i for i, a in enumerate(arms)}
    return sorted(rows, key=lambda r: (order[r["label"]], r["rate"], r["seed"]))


# -- tables ---------------------------------------------------------------------------
def aggregate(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (arm, rate)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["rate"]), []).append(r)
    out = []
    for (label, rate), rs in groups.items():
        mean = lambda k: float(np.mean([x[k] for x in rs if x[k] is not None])) if any(x[k] is not None for x in rs) else None
        out.append({"label": label, "policy": rs[0]["policy"], "predictor": rs[0]["predictor"],
                    "length_control": rs[0]["length_control"], "rate": rate, "seeds": len(rs),
                    **{k: mean(k) for k in ("mean_e2e_s", "p99_e2e_s", "throughput_output_tokens_per_s",
                                            "throughput_requests_per_s", "mean_qos",
                                            "preemptions", "mean_batch_size", "padding_waste")}})
    return out


def headline(rows: list[dict], label: str = HEADLINE, baseline: str = BASELINE) -> list[dict]:
    """Per rate, over all rates and over the rates the baseline keeps up with: the arm's gains.

    Each seed is compared with the same seed's baseline (same requests), then averaged. The
    baseline keeps up with a rate when it serves at least ``KEEPS_UP`` of the offered
    requests/s; above that, a finite run's latency mostly measures how long its backlog took
    to drain, so those rates are reported apart.
    """
    base = {(r["rate"], r["seed"]): r for r in rows if r["label"] == baseline}
    gain = lambda new, old: 100.0 * (new - old) / old
    per_rate: dict[float, list[tuple[float, float, float, bool]]] = {}
    for r in rows:
        b = base.get((r["rate"], r["seed"]))
        if r["label"] != label or b is None:
            continue
        per_rate.setdefault(r["rate"], []).append((
            -gain(r["mean_e2e_s"], b["mean_e2e_s"]),
            gain(r["throughput_output_tokens_per_s"], b["throughput_output_tokens_per_s"]),
            gain(r["throughput_requests_per_s"], b["throughput_requests_per_s"]),
            b["throughput_requests_per_s"] >= KEEPS_UP * r["rate"]))
    groups = [(rate, vs) for rate, vs in sorted(per_rate.items())]
    if groups:
        groups.append(("all rates", [v for _, vs in groups for v in vs]))
        kept = [v for _, vs in groups[:-1] for v in vs if all(x[3] for x in vs)]
        if kept:
            groups.append(("rates the baseline keeps up with", kept))
    return [{"rate": rate, "latency_reduction_pct": float(np.mean([v[0] for v in vs])),
             "throughput_gain_pct": float(np.mean([v[1] for v in vs])),
             "request_throughput_gain_pct": float(np.mean([v[2] for v in vs])),
             "baseline_keeps_up": all(v[3] for v in vs), "runs": len(vs)}
            for rate, vs in groups]


KEEPS_UP = 0.9


def _fmt(v, digits=2) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def markdown(rows: list[dict], cfg: ReproductionConfig) -> str:
    agg = aggregate(rows)
    lines = [f"Workload: {cfg.trace}, {cfg.num_requests} requests per run, seeds {list(cfg.seeds)}, "
             f"profile {cfg.profile}, static batch size {cfg.batch_size}.", "",
             f"### {HEADLINE} vs {BASELINE}", "",
             "| rate (req/s) | mean latency reduction, ours | paper | throughput gain (tokens/s), ours | "
             "(requests/s), ours | paper |", "|---|---|---|---|---|---|"]
    for h in headline(rows):
        rate = h["rate"] if h["baseline_keeps_up"] or isinstance(h["rate"], str) else f"{h['rate']} (baseline overloaded)"
        lines.append(f"| {rate} | {h['latency_reduction_pct']:.2f}% | {PAPER['mean_latency_reduction_pct']}% | "
                     f"{h['throughput_gain_pct']:.2f}% | {h['request_throughput_gain_pct']:.2f}% | "
                     f"{PAPER['throughput_gain_pct']}% |")
    lines += ["", "### Every arm (mean over seeds)", "",
              "| policy | predictor | control | rate | mean e2e (s) | p99 e2e (s) | tokens/s | QoS | preemptions | "
              "batch | padding |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
        lines.append(f"| {a['label']} | {a['predictor']} | {'on' if a['length_control'] else 'off'} | {a['rate']} | "
                     f"{_fmt(a['mean_e2e_s'])} | {_fmt(a['p99_e2e_s'])} | {_fmt(a['throughput_output_tokens_per_s'], 1)} | "
                     f"{_fmt(a['mean_qos'], 3)} | {_fmt(a['preemptions'], 1)} | {_fmt(a['mean_batch_size'], 1)} | "
                     f"{_fmt(a['padding_waste'], 3)} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    import polars as pl

    pl.DataFrame(rows).write_csv(path)


def write_html(rows: list[dict], path: Path, cfg: ReproductionConfig | None = None) -> None:
    """Every figure against load, one line per arm (mean over seeds, min–max band): the sweep dashboard's page."""
    import polars as pl

    from syncintellects.dashboard import render

    cfg = cfg or ReproductionConfig()
    names = {"mean_e2e_s": "e2e_latency_s_mean", "p99_e2e_s": "e2e_latency_s_p99", "mean_ttft_s": "ttft_s_mean",
             "mean_qos": "qos_mean"}
    df = pl.DataFrame([{"series": r["label"], "trace": cfg.trace, "profile": cfg.profile,
                        **{names.get(k, k): v for k, v in r.items()}} for r in rows], infer_schema_length=None)
    title = f"SyncIntellects reproduction: {HEADLINE} vs {BASELINE} and the other arms, {cfg.trace}, simulated"
    Path(path).write_text(render(df, title), encoding="utf-8")  # self-contained: opens offline


def write_outputs(rows: list[dict], cfg: ReproductionConfig, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduction.json").write_text(json.dumps(rows, indent=1))
    (out / "reproduction_config.json").write_text(json.dumps({**asdict(cfg), "paper": PAPER,
                                                              "arms": [asdict(a) for a in ARMS]}, indent=1))
    from syncintellects.frontier import reproduce_extras  # latency-QoS frontier + both error models (issue 9)

    (out / "reproduction.md").write_text(markdown(rows, cfg) + "\n" + reproduce_extras(cfg, rows, out))
    write_csv(rows, out / "reproduction.csv")
    write_html(rows, out / "reproduction.html", cfg)
    return out


def with_overrides(cfg: ReproductionConfig, **changes) -> ReproductionConfig:
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})
