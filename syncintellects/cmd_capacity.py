"""``syncintellects capacity``: per policy, the highest rate that keeps SLO attainment >= a target."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from syncintellects.cmd_simulate import add_cluster_arguments, cluster_fields, parse_params
from syncintellects.cmd_trace import add_load_arguments, load_options
from syncintellects.spec import PREDICTOR_MODEL_HELP, RunSpec


def register(sub) -> None:
    p = sub.add_parser("capacity", help="find each policy's highest rate that meets an SLO (bisection, with seeds)",
                       description="Bisect the offered rate, per policy and seed, to the highest rate at which the "
                                   "share of offered requests meeting --slo stays >= --target; writes "
                                   "DIR/capacity.json and DIR/capacity.html. Finished probes are kept in DIR/probes/ "
                                   "and reused when the same search is run again.")
    p.add_argument("--trace", default="azure-conv", help="bundled trace name or a trace file (default azure-conv)")
    p.add_argument("--policy", required=True, help="comma-separated policies")
    p.add_argument("--seed", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--target", type=float, default=0.9, help="SLO attainment to keep (default 0.9)")
    p.add_argument("--tolerance", type=float, default=0.02, help="relative width of the final bracket (default 0.02)")
    p.add_argument("--start-rate", type=float, default=1.0, help="first rate probed, req/s (default 1)")
    p.add_argument("--num-requests", type=int, default=2000, help="requests per probe (default 2000)")
    p.add_argument("--profile", default=None)
    p.add_argument("--predictor", default=None, help="length predictor for the policies that use one")
    p.add_argument("--predictor-model", default=None, help=PREDICTOR_MODEL_HELP)
    p.add_argument("--length-control", choices=("off", "on"), default="off")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--kv-blocks", type=int, default=None)
    p.add_argument("--tile", action="store_true", help="repeat the trace back to back when a seed's window runs past its end")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--predictor-param", action="append", default=[], metavar="NAME=VALUE",
                   help="predictor parameter, e.g. error_model=in-distribution")
    add_load_arguments(p)
    add_cluster_arguments(p)
    p.add_argument("--workers", type=int, default=1, help="probes run in parallel on this machine (default 1)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="local processes, or tasks on Ray")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--fresh", action="store_true", help="discard the probes of an earlier search in --out")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{flag}: expected comma-separated integers, got {text!r}") from None


def run(args) -> int:
    from syncintellects.capacity import search

    if not args.slo:
        raise ValueError("--slo is required (e.g. --slo ttft=2,tpot=0.1)")
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    seeds = _ints("seed", args.seed)
    if not policies or not seeds:
        raise ValueError("--policy and --seed need at least one value each")
    if args.num_requests < 1:
        raise ValueError(f"--num-requests must be >= 1, got {args.num_requests}")
    base = RunSpec(trace=args.trace, num_requests=args.num_requests, profile=args.profile or RunSpec.profile,
                   batch_size=args.batch_size, predictor=args.predictor, predictor_model=args.predictor_model,
                   length_control=args.length_control == "on", kv_blocks=args.kv_blocks, tile=args.tile,
                   policy_params=parse_params(args.param),
                   predictor_params=parse_params(args.predictor_param, "--predictor-param"), trace_options=tuple(sorted(load_options(args).items())),
                   **cluster_fields(args))

    def show(chain, rate, res):
        print(f"  {chain.policy} seed {chain.seed}: {rate:g} req/s -> attainment {res['slo_attainment']:.3f}",
              file=sys.stderr)

    try:
        results = search(base, policies, seeds, target=args.target, out=args.out, tolerance=args.tolerance,
                         start_rate=args.start_rate, workers=args.workers, fresh=args.fresh, progress=show,
                         backend=args.backend, ray_address=args.ray_address)
    except KeyboardInterrupt as e:
        print(f"interrupted: the finished probes are kept in {args.out}/probes/; run the same command to resume",
              file=sys.stderr)
        return getattr(e, "exit_status", 130)
    html = write_capacity_html(args.out)
    for r in results:
        print(f"{r['policy']:<28} capacity {r['capacity_requests_per_s']:.3f} req/s "
              f"(seeds {r['capacity_min']:.3f}..{r['capacity_max']:.3f}), attainment there "
              f"{r['attainment_at_capacity'] if r['attainment_at_capacity'] is None else round(r['attainment_at_capacity'], 3)}"
              + ("  [lower bound]" if r["capacity_is_lower_bound"] else ""))
    print(f"-> {args.out}/capacity.json, {html}")
    return 0


def write_capacity_html(out: str | Path) -> Path:
    """Attainment against rate (every probe, per policy) and the capacities with their spread over seeds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from syncintellects.dashboard import PALETTE

    out = Path(out)
    results = json.loads((out / "capacity.json").read_text())
    slo, target = results[0]["slo"], results[0]["target"]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], subplot_titles=[
        "SLO attainment at each probed rate (every seed)", "capacity: highest rate meeting the target (min-max over seeds)"])
    for k, r in enumerate(results):
        colour = PALETTE[k % len(PALETTE)]
        pts = sorted((x for s in r["seeds"] for x in s["probes"]), key=lambda x: x[0])
        fig.add_trace(go.Scatter(x=[x[0] for x in pts], y=[x[1] for x in pts], mode="markers+lines", name=r["policy"],
                                 legendgroup=r["policy"], line={"color": colour, "width": 1},
                                 hovertemplate=f"{r['policy']}<br>%{{x:.4g}} req/s<br>attainment %{{y:.3f}}<extra></extra>"),
                      row=1, col=1)
        fig.add_vline(x=r["capacity_requests_per_s"], line={"color": colour, "dash": "dot"}, row=1, col=1)
        fig.add_trace(go.Bar(x=[r["policy"]], y=[r["capacity_requests_per_s"]], marker_color=colour, showlegend=False,
                             error_y={"type": "data", "symmetric": False,
                                      "array": [r["capacity_max"] - r["capacity_requests_per_s"]],
                                      "arrayminus": [r["capacity_requests_per_s"] - r["capacity_min"]]},
                             text=[f"{r['capacity_requests_per_s']:.3g}"], textposition="outside",
                             hovertemplate=f"{r['policy']}: %{{y:.3f}} req/s<extra></extra>"), row=1, col=2)
    fig.add_hline(y=target, line={"color": "black", "dash": "dash"}, annotation_text=f"target {target:g}",
                  row=1, col=1)
    fig.update_xaxes(title_text="offered rate (--rate, req/s, log)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="SLO attainment (share of offered requests)", range=[0, 1.05], row=1, col=1)
    caps = [r["capacity_requests_per_s"] for r in results]
    wide = min(caps) > 0 and max(caps) > 20 * min(caps)  # capacities orders of magnitude apart: a log axis
    fig.update_yaxes(title_text="capacity (req/s" + (", log)" if wide else ")"), type="log" if wide else None, row=1, col=2)
    title = f"Capacity under the SLO {slo} at attainment >= {target:g}"
    fig.update_layout(title=title, height=520, template="plotly_white", margin={"t": 90})
    html = out / "capacity.html"
    fig.write_html(html, include_plotlyjs=True, full_html=True, div_id="capacity")
    text = html.read_text()
    if "<title>" not in text.split("</head>", 1)[0]:  # a browser tab that says what the page is
        html.write_text(text.replace("<head>", f"<head><title>{title}</title>", 1))
    return html
