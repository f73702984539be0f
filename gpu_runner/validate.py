"""Validate the simulator against the real runner: one trace, one policy, one seed, both engines.

The real run and the simulated run start from the same :func:`syncintellects.spec.prepare`
(same trace, a policy object of the same class with the same settings), the same length
transform, the same KV block count and model context, and are scored by the same
:func:`simulator.metrics.summarize`. The simulator is calibrated with a profile measured
on the same machine (``syncintellects profile``).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import polars as pl

from simulator.metrics import RunResult

METRICS = (
    ("e2e_latency_s", "mean"), ("e2e_latency_s", "p50"), ("e2e_latency_s", "p99"),
    ("ttft_s", "mean"), ("tpot_s", "mean"), ("throughput_output_tokens_per_s", None),
)
# The verdict: every one of these within the tolerance (the p50 is reported, not gated).
GATED = ("e2e_latency_s.mean", "e2e_latency_s.p99", "ttft_s.mean", "tpot_s.mean", "throughput_output_tokens_per_s")


def _get(summary: dict, key: str, stat: str | None) -> float | None:
    v = summary.get(key)
    if stat is not None:
        v = (v or {}).get(stat)
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def compare(real: dict, sim: dict) -> dict:
    """{metric: {real, sim, rel_error}} with rel_error = (sim - real) / real."""
    out = {}
    for key, stat in METRICS:
        name = key if stat is None else f"{key}.{stat}"
        r, s = _get(real, key, stat), _get(sim, key, stat)
        rel = None if r is None or s is None or r == 0 else (s - r) / r
        out[name] = {"real": r, "sim": s, "rel_error": rel}
    return out


def short_name(metric: str) -> str:
    """A gated metric's name for a table cell or a plot's note: ``e2e mean``, ``ttft mean``, ``throughput``."""
    return metric.replace("_latency_s.", " ").replace("_s.", " ").replace("_output_tokens_per_s", "")


def failures(report: dict, tolerance: float) -> list[str]:
    """Gated metrics whose |rel_error| exceeds the tolerance (or could not be computed)."""
    bad = []
    for name in GATED:
        rel = report[name]["rel_error"]
        if rel is None or abs(rel) > tolerance:
            bad.append(name)
    return bad


def write_html(real: RunResult, sim: RunResult, report: dict, path: Path, title: str,
               notes: tuple[str, ...] = ()) -> None:
    """Per-request simulated vs real E2E latency (scatter) and the two latency CDFs; ``notes``: a line each,
    under the title, above the metrics."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = ["request_id", "e2e_latency_s"]
    a = real.requests.select(cols).rename({"e2e_latency_s": "real"})
    b = sim.requests.select(cols).rename({"e2e_latency_s": "sim"})
    both = a.join(b, on="request_id").drop_nulls().filter(pl.col("real").is_not_nan() & pl.col("sim").is_not_nan())
    fig = make_subplots(rows=1, cols=2, subplot_titles=("per-request E2E latency: simulated vs real",
                                                        "E2E latency CDF"))
    fig.add_trace(go.Scattergl(x=both["real"], y=both["sim"], mode="markers", name="requests",
                               marker=dict(size=5, opacity=0.6), text=[f"request {i}" for i in both["request_id"]]),
                  1, 1)
    hi = float(max(both["real"].max() or 1, both["sim"].max() or 1))
    fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", name="y = x", line=dict(dash="dash", color="grey")),
                  1, 1)
    for label, col in (("real", "real"), ("simulated", "sim")):
        x = np.sort(both[col].to_numpy())
        fig.add_trace(go.Scatter(x=x, y=np.arange(1, len(x) + 1) / max(len(x), 1), mode="lines", name=f"{label} CDF"),
                      1, 2)
    fig.update_xaxes(title_text="real E2E latency (s)", row=1, col=1)
    fig.update_yaxes(title_text="simulated E2E latency (s)", row=1, col=1)
    fig.update_xaxes(title_text="E2E latency (s)", row=1, col=2)
    fig.update_yaxes(title_text="fraction of requests", row=1, col=2)
    lines = [f"{k}: real {v['real']:.4g}, sim {v['sim']:.4g}, error {v['rel_error']:+.1%}"
             for k, v in report.items() if v["rel_error"] is not None]
    sup = "<br>".join([*notes, " | ".join(lines[:3]), " | ".join(lines[3:])])
    fig.update_layout(title=dict(text=f"{title}<br><sup>{sup}</sup>",
                                 y=0.955, yanchor="top"),
                      height=660, margin=dict(t=190))
    fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline


def run_validation(spec, lm, runner_cfg, profile_path: str, out_dir: str | Path, *,
                   tolerance: float = 0.10, probe_every_s: float | None = 0.3,
                   interleave_sweeps: int = 0, real_runs: int = 1) -> tuple[dict, int]:
    """Run both engines, write DIR/validation.json and DIR/validation.html (and each run's files
    under DIR/real and DIR/sim); returns (report, exit status).

    With ``probe_every_s`` (default), the real run is interleaved with probe steps
    (:mod:`gpu_runner.probe`) and the simulator prices steps with the profile scaled by the machine
    factor they measured: the verdict compares the two engines on the machine as it was during the
    real run. The uncorrected comparison is in ``metrics_uncorrected``. With ``interleave_sweeps`` the
    profile's grid is measured that many times in between the run's steps instead (no probe) and the
    verdict's simulator is calibrated with that fit (:mod:`gpu_runner.interleave`), written to
    DIR/interleaved-profile.json.

    With ``real_runs`` N > 1 the real run is repeated N times and combined (:mod:`gpu_runner.combine`):
    the runs must make the same decisions, and every step counts its median time over the runs; the
    interleaved grids of the N runs are pooled into one fit. Each run's files are in DIR/real-runs/K."""
    from dataclasses import replace

    from gpu_runner.engine import serve
    from simulator.engine import SimConfig, simulate
    from simulator.profile import load_profile
    from syncintellects.spec import build_policy, length_response_model, load_spec_trace

    if runner_cfg.length_mode != "forced":
        raise ValueError("validate compares the two engines on the same workload, so it needs forced lengths "
                         "(--length-mode forced): in natural mode the real model chooses lengths the simulator "
                         "cannot know")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(profile_path)
    trace = load_spec_trace(spec)  # spec.length_scale applied: the predictors see the served lengths
    policy = build_policy(spec, trace)
    if runner_cfg.kv_blocks is None and runner_cfg.kv_tokens is None:
        runner_cfg = replace(runner_cfg, kv_blocks=profile.kv_blocks(runner_cfg.block_size))
    load_before = os.getloadavg()[0]
    from gpu_runner.probe import profile_reference

    probing = bool(probe_every_s) and profile_reference(profile) is not None and not interleave_sweeps
    interleave = None
    if interleave_sweeps:  # pace the grid by the steps the stored profile's simulation expects
        max_ctx = min(int(runner_cfg.max_context or lm.shape["max_context"]), lm.shape["max_context"])
        pre = simulate(trace, build_policy(spec, trace), SimConfig(
            profile=profile_path, block_size=runner_cfg.block_size, kv_blocks=runner_cfg.kv_blocks,
            max_context=max_ctx, seed=spec.seed), profile=profile, length_response=length_response_model(spec))
        interleave = {"sweeps": int(interleave_sweeps), "expected_steps": int(pre.summary["num_steps"]),
                      "quick": (profile.data.get("runner") or {}).get("grid") == "quick"}
    from gpu_runner.combine import check_same_decisions, combine_runs

    runs = []
    for k in range(max(int(real_runs), 1)):
        run = serve(trace, policy if k == 0 else build_policy(spec, trace), lm, runner_cfg,
                    length_response=length_response_model(spec), probe_profile=profile if probing else None,
                    probe_every_s=probe_every_s or 0.3, interleave=interleave)
        run.config["spec"] = spec.to_dict()
        if real_runs > 1:
            run.write(out / "real-runs" / str(k + 1))
        runs.append(run)
        if k:  # refuse as soon as a run decides otherwise, not after the last one
            check_same_decisions([runs[0], run], k + 1)
    load_after = os.getloadavg()[0]
    real = combine_runs(runs)
    if len(runs) > 1 and probing:  # the machine factor of the combined run: the median of the runs' factors
        probes = [r.summary["runner"].get("probe") or {} for r in runs]
        factors = [p["factor"] for p in probes if p.get("factor") is not None]
        real.summary["runner"]["probe"] = dict(probes[0], factor=float(np.median(factors)) if factors else None,
                                               factors=factors)
    real.write(out / "real")
    sim_policy = build_policy(spec, trace)  # a fresh policy object of the same class and settings
    sim_cfg = SimConfig(profile=profile_path, block_size=runner_cfg.block_size, kv_blocks=real.config["kv_blocks"],
                        max_context=real.config["max_context"], seed=spec.seed)
    probe = real.summary["runner"].get("probe") or {"factor": None}
    factor = probe["factor"]
    raw = simulate(trace, sim_policy, sim_cfg, profile=profile, length_response=length_response_model(spec))
    stored, inter = profile, None
    if real.interleaver is not None:
        from simulator.profile import Profile, save_profile

        data = runs[0].interleaver.profile(profile, others=tuple(r.interleaver for r in runs[1:]))
        save_profile(data, out / "interleaved-profile.json")
        profile = Profile(data=data, path=str(out / "interleaved-profile.json"))
        inter = data["interleaved"]
        factor = None
    sim = raw if factor is None and inter is None else simulate(
        trace, build_policy(spec, trace), sim_cfg, profile=profile if inter else scaled_profile(profile, factor),
        length_response=length_response_model(spec))
    sim.config["spec"] = spec.to_dict()
    sim.config["machine_factor"] = factor
    sim.write(out / "sim")
    report = compare(real.summary, sim.summary)
    bad = failures(report, tolerance)
    replay = replay_steps(real, profile)  # with an interleaved profile: the model's error, free of the machine
    # Diagnosis only (never gated): the simulator again, with every step time scaled by the measured
    # drift between this run's steps and the profile's prediction of those very steps.
    # (No real step, e.g. every request rejected: there is no drift to measure.)
    drifted = None if replay["drift"] is None else simulate(
        trace, build_policy(spec, trace), sim_cfg, profile=scaled_profile(profile, replay["drift"]),
        length_response=length_response_model(spec))
    cond = conditioning(lambda f: simulate(trace, build_policy(spec, trace), sim_cfg,
                                           profile=scaled_profile(profile, f),
                                           length_response=length_response_model(spec)).summary,
                        sim.summary, factor or 1.0)
    # the machine's own noise: the verdict again with each real run left out (needs 3 or more)
    noise = one_run_out([combine_runs(runs[:k] + runs[k + 1:]).summary for k in range(len(runs))], report,
                        sim.summary, tolerance) if len(runs) >= 3 else None
    # each run alone against the same simulation: how far one realisation of the machine can be
    report_runs = [compare(r.summary, sim.summary) for r in runs] if len(runs) > 1 else None
    server = server_time(real, runner_cfg.server_time, sim)
    doc = {"metrics": report, "tolerance": tolerance, "gated": list(GATED), "failed": bad,
           "conditioning": cond, "one_run_out": noise,
           "conclusive": not cond["ill_conditioned"] and not (noise and noise["verdict"] == "undecided"),
           "verdict_basis": (f"simulator calibrated with the profile's grid re-measured {inter['sweeps']} times "
                             f"interleaved with the real run ({out / 'interleaved-profile.json'})" if inter else
                             ("uncorrected: the profile has no probe section" if probe_every_s else
                              "uncorrected: --probe-every 0") if factor is None else
                             f"simulator with the profile x the machine factor {factor:.3f} measured by probes"),
           "interleaved": inter, "real_runs": real.summary.get("real_runs"), "server_time": server,
           "metrics_per_real_run": report_runs,
           "replay_stored_profile": replay_steps(real, stored) if inter else None,
           "machine_probe": probe, "metrics_uncorrected": compare(real.summary, raw.summary),
           "policy": real.config["policy"], "trace": trace.name, "num_requests": len(trace),
           "length_scale": spec.length_scale, "seed": spec.seed, "profile": stored.path,
           "profile_created": stored.data.get("created"), "model": lm.shape,
           "device": str(lm.device), "dtype": lm.dtype, "kv_blocks": real.config["kv_blocks"],
           "max_context": real.config["max_context"], "torch_threads": real.config["torch_threads"],
           "real_summary": {k: real.summary[k] for k in ("num_finished", "num_rejected", "preemptions",
                                                          "mean_batch_size", "num_steps", "runner")},
           "sim_summary": {k: sim.summary[k] for k in ("num_finished", "num_rejected", "preemptions",
                                                        "mean_batch_size", "num_steps")},
           "busy": busy_breakdown(real, sim),
           "replay": replay,
           "drift_corrected_metrics": None if drifted is None else compare(real.summary, drifted.summary),
           "machine_load_average_1m": {"before_real_run": round(load_before, 2), "after_real_run": round(load_after, 2),
                                       "cpu_count": os.cpu_count()}}
    from simulator.metrics import _clean

    (out / "validation.json").write_text(json.dumps(_clean(doc), indent=2, sort_keys=True) + "\n")
    notes = [n for n in (None if factor is None else f"simulator x machine factor {factor:.3f}",
                         "simulator calibrated by the grid interleaved with the run" + (
                             f" (grid {inter['median_ms_vs_stored']:.2f}x its time in the stored profile)"
                             if inter.get("median_ms_vs_stored") is not None else "") if inter else None,
                         f"real: {len(runs)} runs, every step's median time" if len(runs) > 1 else None,
                         "the server's own time off the real clock" if runner_cfg.server_time == "off" else None,
                         "INCONCLUSIVE: ill-conditioned workload" if cond["ill_conditioned"] else None) if n]
    lines = ["; ".join(notes)] if notes else []
    if noise and noise["verdict"] == "undecided":  # a line of its own: it qualifies the verdict
        lines.append("UNDECIDED, one real run flips it: " + ", ".join(map(short_name, noise["undecided"])))
    try:
        import plotly  # noqa: F401  (a core dependency; absent only where the package set was carried by hand)
    except ImportError:
        print("plotly is not installed: validation.html not written (validation.json is complete)", file=sys.stderr)
    else:
        write_html(real, sim, report, out / "validation.html",
                   f"{real.config['policy']} on {trace.name} ({len(trace)} requests): simulator vs real {lm.name}",
                   tuple(lines))
    return doc, (1 if bad else 0)


def server_time(real: RunResult, mode: str, sim: RunResult) -> dict:
    """The real run's own time between steps (arrivals, the policy's planning, the executor's bookkeeping):
    how much, whether it was on the run's clock, and the comparison with the simulator the other way (the
    run rebuilt with that time put back on its clock, or taken off it: :func:`gpu_runner.combine.retime`)."""
    from gpu_runner.combine import RunsDiffer, retime

    own = getattr(real, "own_before", None)
    out = {"mode": mode, "simulator": "models no server time: a plan takes no time on its clock"}
    if own is None or not len(own):
        return out
    other_key = "metrics_with_server_time" if mode == "off" else "metrics_without_server_time"
    first = real.requests["first_token_s"].to_numpy()
    starts = real.steps["start_s"].to_numpy()
    last_first = np.nanmax(first) if np.isfinite(first).any() else np.inf
    out.update(total_s=float(own.sum()), per_step_ms=float(own.mean() * 1e3), steps=int(len(own)),
               before_last_first_token_s=float(own[starts < last_first].sum()))
    try:
        other = retime(real, own if mode == "off" else np.zeros_like(own))
        out[other_key] = compare(other.summary, sim.summary)
    except RunsDiffer as e:  # a request would be admitted before it arrives (open arrivals, time taken off)
        out[other_key] = None
        out["note"] = str(e)
    return out


def conditioning(simulate_at, base: dict, factor: float, eps: float = 0.02, limit: float = 2.5) -> dict:
    """How much each gated metric of the simulator moves when every step time moves by ``eps``.

    ``simulate_at(f)`` is the simulator's summary with the profile scaled by ``f``. The elasticity
    ``(m(+eps) - m(-eps)) / (2 eps m)`` is 1 for a latency that is a sum of step times and -1 for a
    throughput bound by them; a metric whose |elasticity| exceeds ``limit`` is *ill-conditioned* at this
    workload: a step-time error (or machine noise) of 1% changes the schedule itself (who joins which
    batch, what is preempted) and moves it by more than ``limit`` per cent, so no comparison with a real
    run can be within a tolerance of a few per cent. The verdict is then inconclusive."""
    lo, hi = simulate_at(factor * (1 - eps)), simulate_at(factor * (1 + eps))
    rep_lo, rep_hi = compare(base, lo), compare(base, hi)
    el = {}
    for name in GATED:
        a, b = rep_lo[name]["rel_error"], rep_hi[name]["rel_error"]
        el[name] = None if a is None or b is None else (b - a) / (2 * eps)
    bad = [k for k, v in el.items() if v is not None and abs(v) > limit]
    return {"eps": eps, "limit": limit, "elasticity": el, "ill_conditioned": bad}


def one_run_out(summaries: list[dict], report: dict, sim: dict, tolerance: float) -> dict | None:
    """Does the verdict hinge on one real run? ``summaries`` are the combined real run made again with each of
    its N runs left out in turn. For each gated metric: the range of (sim - real) / real over them, and a
    decision: the full verdict (``pass`` or ``fail``) when every leave-one-out verdict agrees with it, else
    ``undecided`` (one realisation of the machine more or less would flip it). ``verdict``: the same for the whole
    verdict (it fails when any gated metric is off): ``pass`` or ``fail`` when every leave-one-out verdict agrees
    with the full one (a failure can hold with a metric undecided: another fails in every one), else
    ``undecided``. None with fewer than 3 runs."""
    if len(summaries) < 3:
        return None
    by_metric, undecided = {}, []
    reports = [compare(s, sim) for s in summaries]
    for name in GATED:
        full = report[name]["rel_error"]
        errs = [r[name]["rel_error"] for r in reports]
        if full is None or any(e is None for e in errs):
            by_metric[name] = {"range": None, "decided": "undecided"}
            undecided.append(name)
            continue
        ok = abs(full) <= tolerance
        decided = ("pass" if ok else "fail") if all((abs(e) <= tolerance) == ok for e in errs) else "undecided"
        by_metric[name] = {"range": [float(min(errs)), float(max(errs))], "decided": decided}
        if decided == "undecided":
            undecided.append(name)
    passes = [not failures(r, tolerance) for r in reports]
    full_pass = not failures(report, tolerance)
    verdict = ("pass" if full_pass else "fail") if all(p == full_pass for p in passes) else "undecided"
    return {"runs": len(summaries), "by_metric": by_metric, "undecided": undecided, "verdict": verdict}


def busy_breakdown(real: RunResult, sim: RunResult) -> dict:
    """Where an error comes from: busy time, steps and mean step time of each engine, split into
    steps with prefill work and decode-only steps."""
    out = {}
    for label, res in (("real", real), ("sim", sim)):
        st = res.steps
        dur = (st["end_s"] - st["start_s"]).to_numpy()
        n = st["num_steps"].to_numpy()
        pre = (st["prefill_tokens"] > 0).to_numpy()
        out[label] = {
            "busy_s": float(dur.sum()),
            "prefill_steps": int(n[pre].sum()), "prefill_busy_s": float(dur[pre].sum()),
            "decode_steps": int(n[~pre].sum()), "decode_busy_s": float(dur[~pre].sum()),
            "mean_prefill_step_ms": float(dur[pre].sum() / max(n[pre].sum(), 1) * 1e3),
            "mean_decode_step_ms": float(dur[~pre].sum() / max(n[~pre].sum(), 1) * 1e3),
        }
    return out


def replay_steps(real: RunResult, profile) -> dict:
    """The profile's predicted time of each step the real run made (same batch, contexts, chunks) vs its
    measured time. ``drift`` = measured / predicted over the run: 1.0 means the cost model priced the real
    steps exactly; a drift alone explains an error common to every step (e.g. a machine slower or faster
    than when it was profiled)."""
    from simulator.cost_model import CostModel

    cost = CostModel(profile)
    st = real.steps
    work = real.executor.segment_work
    measured = (st["end_s"] - st["start_s"]).to_numpy()
    rows, n = st["batch_size"].to_numpy(), st["num_steps"].to_numpy()
    pred = np.array([cost.decode_run_s(int(b), ctx, int(k)) if not chunks else
                     cost.step_s(int(b) - len(chunks), ctx, list(chunks), pad)
                     for b, k, (ctx, chunks, pad) in zip(rows, n, work)])
    pre = (st["prefill_tokens"] > 0).to_numpy()
    ratio = lambda m: float(measured[m].sum() / pred[m].sum()) if pred[m].sum() > 0 else None
    kind = np.array([step_kind(int(b), chunks, pad) for b, (_, chunks, pad) in zip(rows, work)])
    by_kind = {k: {"segments": int((kind == k).sum()), "steps": int(n[kind == k].sum()),
                   "measured_s": float(measured[kind == k].sum()), "predicted_s": float(pred[kind == k].sum()),
                   "drift": ratio(kind == k)} for k in sorted(set(kind.tolist()))}
    return {"measured_busy_s": float(measured.sum()), "predicted_busy_s": float(pred.sum()),
            "drift": ratio(np.ones_like(pre)), "drift_prefill_steps": ratio(pre), "drift_decode_steps": ratio(~pre),
            "by_kind": by_kind,
            "segment_abs_rel_error_median": float(np.median(np.abs(measured / np.maximum(pred, 1e-12) - 1)))}


def step_kind(rows: int, chunks, pad: int) -> str:
    """decode (decode rows only), prefill (chunks only), padded (a left-padded prefill group), mixed (both)."""
    if not chunks:
        return "decode"
    if pad:
        return "padded"
    return "mixed" if rows > len(chunks) else "prefill"


def scaled_profile(profile, factor: float):
    """A copy of ``profile`` whose every step time is multiplied by ``factor``."""
    import copy

    from simulator.profile import Profile

    data = copy.deepcopy(profile.data)
    c = data["coefficients"]
    c["fixed_step_ms"] *= factor
    c["linear_ops"] = [[n, ms * factor] for n, ms in c["linear_ops"]]
    for sec in ("decode_attn", "prefill_attn"):
        c[sec] = {k: v * factor for k, v in c[sec].items()}
    if "decode_attn_grid" in c:  # a measured decode-attention grid, where a profile has one
        c["decode_attn_grid"]["ms"] = [[v * factor for v in row] for row in c["decode_attn_grid"]["ms"]]
    return Profile(data=data, path=f"{profile.path} x {factor:.3f}")
