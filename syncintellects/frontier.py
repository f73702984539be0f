"""The latency-QoS frontier of length control, for ``reproduce paper``.

Length control buys latency by asking long answers to be shorter; QoS (the share of the
natural answer kept, :mod:`policies.control.response`) pays for it. Two controller knobs set
the trade: the guard ``min_fraction`` (never ask for less than this share of a request's
predicted length) and ``align_quantile`` (the batch quantile long requests are aligned to).
:func:`run_frontier` sweeps both for the SyncIntellects policy on the reproduction's
workload, next to the same policy without control, and :func:`operating_point` names the
fastest setting whose mean QoS is at least :data:`QOS_TARGET`, with what it buys.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QOS_TARGET = 0.95
MIN_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9)
ALIGN_QUANTILES = (0.5, 0.75, 0.9)
POLICY = "syncintellects"


@dataclass(frozen=True)
class Point:
    """One controller setting (None, None: length control off)."""

    min_fraction: float | None
    align_quantile: float | None

    @property
    def label(self) -> str:
        if self.min_fraction is None:
            return "control off"
        return f"guard {self.min_fraction:g}, quantile {self.align_quantile:g}"


def grid(min_fractions=MIN_FRACTIONS, quantiles=ALIGN_QUANTILES) -> list[Point]:
    return [Point(None, None)] + [Point(f, q) for f in min_fractions for q in quantiles]


def run_point(job) -> dict:
    """Simulate the SyncIntellects policy at one controller setting, rate and seed."""
    from policies.control import default_length_response, make_controller
    from policies.predictors import make_predictor
    from policies.registry import make_policy
    from simulator.engine import SimConfig, simulate
    from syncintellects.reproduce import workload

    cfg, point, rate, seed, error_model = job
    trace = workload(cfg, rate, seed)
    params = {"batch_size": cfg.batch_size,
              "predictor": make_predictor("progressive", trace=trace, seed=seed, error_model=error_model)}
    if point.min_fraction is not None:
        params["controller"] = make_controller(min_fraction=point.min_fraction, align_quantile=point.align_quantile)
    policy = make_policy(POLICY, **params)
    res = simulate(trace, policy, SimConfig(profile=cfg.profile, seed=seed),
                   length_response=default_length_response() if point.min_fraction is not None else None)
    s = res.summary
    return {"label": point.label, "min_fraction": point.min_fraction, "align_quantile": point.align_quantile,
            "rate": rate, "seed": seed, "error_model": error_model, "mean_e2e_s": s["e2e_latency_s"]["mean"],
            "p99_e2e_s": s["e2e_latency_s"]["p99"], "throughput_output_tokens_per_s": s["throughput_output_tokens_per_s"],
            "mean_qos": s["qos_mean"] if s["qos_mean"] is not None else 1.0}


def pool_map(fn, jobs: list, workers: int, desc: str, progress: bool) -> list:
    """``fn`` over ``jobs`` in a spawn pool of ``workers`` processes (in-process when 1), with a progress bar."""
    import multiprocessing as mp

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not progress)
    rows = []
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers)
        try:
            for row in pool.imap_unordered(fn, jobs):
                rows.append(row)
                bar.update()
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    else:
        for job in jobs:
            rows.append(fn(job))
            bar.update()
    bar.close()
    return rows


def run_frontier(cfg, rates, points=None, error_model: str = "unseen-source", progress: bool = True) -> list[dict]:
    points = points or grid()
    jobs = [(cfg, p, r, s, error_model) for p in points for r in rates for s in cfg.seeds]
    rows = pool_map(run_point, jobs, cfg.workers, "QoS frontier", progress)
    order = {p.label: i for i, p in enumerate(points)}
    return sorted(rows, key=lambda r: (order[r["label"]], r["rate"], r["seed"]))


def summarise(rows: list[dict]) -> list[dict]:
    """Per setting: mean QoS, and mean latency change against control off (same rate and seed), over all runs."""
    off = {(r["rate"], r["seed"]): r for r in rows if r["min_fraction"] is None}
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        gain = [100.0 * (off[(r["rate"], r["seed"])]["mean_e2e_s"] - r["mean_e2e_s"]) / off[(r["rate"], r["seed"])]["mean_e2e_s"]
                for r in rs if (r["rate"], r["seed"]) in off]
        tput = [100.0 * (r["throughput_output_tokens_per_s"] - off[(r["rate"], r["seed"])]["throughput_output_tokens_per_s"])
                / off[(r["rate"], r["seed"])]["throughput_output_tokens_per_s"] for r in rs if (r["rate"], r["seed"]) in off]
        out.append({"label": label, "min_fraction": rs[0]["min_fraction"], "align_quantile": rs[0]["align_quantile"],
                    "runs": len(rs), "mean_qos": float(np.mean([r["mean_qos"] for r in rs])),
                    "min_run_qos": float(np.min([r["mean_qos"] for r in rs])),
                    "mean_e2e_s": float(np.mean([r["mean_e2e_s"] for r in rs])),
                    "latency_reduction_pct": float(np.mean(gain)) if gain else None,
                    "throughput_gain_pct": float(np.mean(tput)) if tput else None})
    return out


def pareto(summary: list[dict]) -> list[dict]:
    """Settings no other setting beats on both mean QoS and mean latency."""
    return [a for a in summary if not any(b is not a and b["mean_qos"] >= a["mean_qos"] and b["mean_e2e_s"] <= a["mean_e2e_s"]
                                          and (b["mean_qos"] > a["mean_qos"] or b["mean_e2e_s"] < a["mean_e2e_s"])
                                          for b in summary)]


def operating_point(summary: list[dict], target: float = QOS_TARGET) -> dict | None:
    """The controlled setting with the lowest mean latency among those with mean QoS >= target."""
    ok = [s for s in summary if s["min_fraction"] is not None and s["mean_qos"] >= target]
    return min(ok, key=lambda s: s["mean_e2e_s"]) if ok else None


def markdown(summary: list[dict], rates, seeds, error_model: str) -> str:
    op = operating_point(summary)
    front = {s["label"] for s in pareto(summary)}
    lines = [f"### Latency-QoS frontier of length control (SyncIntellects static, rates {list(rates)} req/s, "
             f"seeds {list(seeds)}, progressive predictor error model: {error_model})", "",
             "| setting | mean QoS | lowest run QoS | mean e2e (s) | latency reduction vs control off | tokens/s change vs off | on the frontier |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lr = "–" if s["latency_reduction_pct"] is None else f"{s['latency_reduction_pct']:+.2f}%"
        tg = "–" if s["throughput_gain_pct"] is None else f"{s['throughput_gain_pct']:+.2f}%"
        lines.append(f"| {s['label']} | {s['mean_qos']:.3f} | {s['min_run_qos']:.3f} | {s['mean_e2e_s']:.2f} | "
                     f"{lr} | {tg} | {'yes' if s['label'] in front else ''} |")
    lines.append("")
    if op is None:
        lines.append(f"No controlled setting keeps mean QoS >= {QOS_TARGET}.")
    else:
        lines.append(f"Operating point (mean QoS >= {QOS_TARGET}, lowest latency): **{op['label']}**: mean QoS "
                     f"{op['mean_qos']:.3f}, mean latency {op['latency_reduction_pct']:+.2f}% and output tokens/s "
                     f"{op['throughput_gain_pct']:+.2f}% against the same policy without length control.")
    return "\n".join(lines) + "\n"


def _sparse_labels(front: list[dict], summary: list[dict], gap: float = 0.05) -> list[str]:
    """The frontier's labels, leaving out a point that sits within `gap` of the plot (both axes) from a
    labelled one, so settings that land together do not print over each other (every point keeps its hover)."""
    qs, es = [s["mean_qos"] for s in summary], [s["mean_e2e_s"] for s in summary]
    dq, de = (max(qs) - min(qs)) or 1.0, (max(es) - min(es)) or 1.0
    shown: list[dict] = []
    labels = []
    for s in front:
        near = any(abs(s["mean_qos"] - t["mean_qos"]) / dq < gap and abs(s["mean_e2e_s"] - t["mean_e2e_s"]) / de < gap
                   for t in shown)
        labels.append("" if near else s["label"])
        if not near:
            shown.append(s)
    return labels


def write_html(summary: list[dict], path: Path, title: str) -> None:
    """Mean latency against mean QoS, one marker per setting, the frontier joined, the operating point ringed."""
    import plotly.graph_objects as go

    front = sorted(pareto(summary), key=lambda s: s["mean_qos"])
    op = operating_point(summary)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[s["mean_qos"] for s in summary], y=[s["mean_e2e_s"] for s in summary],
                             mode="markers", hovertext=[s["label"] for s in summary], name="all settings (hover)",
                             marker={"size": 9, "color": "#4c78a8"}))
    fig.add_trace(go.Scatter(x=[s["mean_qos"] for s in front], y=[s["mean_e2e_s"] for s in front], mode="lines+text",
                             text=_sparse_labels(front, summary), hovertext=[s["label"] for s in front],
                             textposition="middle left", textfont={"size": 10},
                             name="frontier", line={"color": "#e45756"}))
    if op is not None:
        fig.add_trace(go.Scatter(x=[op["mean_qos"]], y=[op["mean_e2e_s"]], mode="markers", name=f"operating point: {op['label']}",
                                 marker={"size": 20, "symbol": "circle-open", "color": "#54a24b", "line": {"width": 3}}))
    fig.add_vline(x=QOS_TARGET, line_dash="dot", annotation_text=f"QoS {QOS_TARGET}")
    fig.update_layout(title=title, xaxis_title="mean QoS (share of the natural answer kept)",
                      yaxis_title="mean end-to-end latency (s)", height=620)
    fig.write_html(path, include_plotlyjs=True)


def write_outputs(rows: list[dict], out: Path, rates, seeds, error_model: str) -> str:
    summary = summarise(rows)
    (out / "frontier.json").write_text(json.dumps({"rows": rows, "summary": summary,
                                                   "operating_point": operating_point(summary),
                                                   "qos_target": QOS_TARGET}, indent=1))
    md = markdown(summary, rates, seeds, error_model)
    (out / "frontier.md").write_text(md)
    write_html(summary, out / "frontier.html", f"Length control: latency vs QoS (SyncIntellects static, rates "
                                               f"{list(rates)} req/s)")
    return md


# -- the two error models, side by side ---------------------------------------------------
def frontier_rates(rates) -> tuple[float, ...]:
    """The frontier runs at the two middle rates of the reproduction (both rates of a 2-rate run)."""
    rates = sorted(rates)
    mid = len(rates) // 2
    return tuple(rates[max(mid - 1, 0):mid + 1])


def run_error_model(job) -> dict:
    """The headline arm with the progressive predictor's in-distribution or unseen-source error model."""
    cfg, arm, rate, seed, error_model = job
    from policies.control import default_length_response, make_controller
    from policies.predictors import make_predictor
    from policies.registry import make_policy
    from simulator.engine import SimConfig, simulate
    from syncintellects.reproduce import workload

    trace = workload(cfg, rate, seed)
    params = {"batch_size": cfg.batch_size, **dict(arm.params),
              "predictor": make_predictor(arm.predictor, trace=trace, seed=seed, error_model=error_model)}
    if arm.length_control:
        params["controller"] = make_controller()
    res = simulate(trace, make_policy(arm.policy, **params), SimConfig(profile=cfg.profile, seed=seed),
                   length_response=default_length_response() if arm.length_control else None)
    s = res.summary
    return {"label": arm.label, "error_model": error_model, "rate": rate, "seed": seed,
            "mean_e2e_s": s["e2e_latency_s"]["mean"], "throughput_output_tokens_per_s": s["throughput_output_tokens_per_s"],
            "mean_qos": s["qos_mean"] if s["qos_mean"] is not None else 1.0}


def error_model_table(cfg, rows: list[dict], progress: bool = False) -> tuple[list[dict], str]:
    """The learned-predictor static arms under both error models, each against the same seed's baseline."""
    from policies.predictors.errors import ERROR_MODELS
    from syncintellects.reproduce import ARMS, BASELINE

    arms = [a for a in ARMS if a.predictor in ("prompt", "progressive") and a.policy in ("length-grouped", "syncintellects")]
    jobs = [(cfg, a, r, s, e) for a in arms for e in ERROR_MODELS for r in cfg.rates for s in cfg.seeds]
    got = pool_map(run_error_model, jobs, cfg.workers, "error models", progress)
    base = {(r["rate"], r["seed"]): r for r in rows if r["label"] == BASELINE}
    lines = ["### The predictors' text-free error models: unseen-source (default) vs in-distribution", "",
             "Latency reduction of each arm against task batching (same seed), mean over rates and seeds.", "",
             "| arm | error model | mean latency reduction | mean QoS |", "|---|---|---|---|"]
    out = []
    for a in arms:
        for e in ERROR_MODELS:
            rs = [g for g in got if g["label"] == a.label and g["error_model"] == e]
            red = [100.0 * (base[(g["rate"], g["seed"])]["mean_e2e_s"] - g["mean_e2e_s"]) / base[(g["rate"], g["seed"])]["mean_e2e_s"]
                   for g in rs if (g["rate"], g["seed"]) in base]
            row = {"label": a.label, "error_model": e, "latency_reduction_pct": float(np.mean(red)) if red else None,
                   "mean_qos": float(np.mean([g["mean_qos"] for g in rs]))}
            out.append(row)
            lr = "–" if row["latency_reduction_pct"] is None else f"{row['latency_reduction_pct']:.2f}%"
            lines.append(f"| {a.label} | {e} | {lr} | {row['mean_qos']:.3f} |")
    return out, "\n".join(lines) + "\n"


def reproduce_extras(cfg, rows: list[dict], out: Path, progress: bool = False) -> str:
    """Frontier + error-model table for ``reproduce paper``: writes frontier.* and error_models.json, returns markdown."""
    rates = frontier_rates(cfg.rates)
    f_rows = run_frontier(cfg, rates, progress=progress)
    md = write_outputs(f_rows, out, rates, cfg.seeds, "unseen-source")
    em_rows, em_md = error_model_table(cfg, rows, progress)
    (out / "error_models.json").write_text(json.dumps(em_rows, indent=1))
    return md + "\n" + em_md
