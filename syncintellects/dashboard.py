"""Plotly dashboards of sweep results: latency, throughput, rejections and QoS against load, per policy.

One standalone HTML page (plotly.js inlined, opens offline): the study's title (also the
page's ``<title>``), a line of run context (traces, requests per run, profile, seeds,
nominal vs offered rate), then one panel per metric with its unit on the y axis. Each series
is one combination of the settings that vary in the sweep; a point is the mean over seeds,
with a shaded min–max band. The x axis is the offered load actually realised
(``offered_rate_requests_per_s``) when the runs record it, else the nominal ``--rate``.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")  # one colour per series, the same in every panel
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "triangle-down", "cross", "pentagon", "hexagram")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
OFFERED = "offered_rate_requests_per_s"
REJECTED = "rejected_pct"

PANELS = (  # metric, panel title, y-axis title, log axis, scale; side by side in pairs
    ("e2e_latency_s_mean", "Mean end-to-end latency", "seconds (log)", True, 1.0),
    ("e2e_latency_s_p99", "p99 end-to-end latency", "seconds (log)", True, 1.0),
    ("throughput_output_tokens_per_s", "Throughput: output tokens/s", "output tokens / s", False, 1.0),
    ("throughput_requests_per_s", "Requests served per second", "finished requests / s", False, 1.0),
    ("ttft_s_mean", "Mean time to first token", "seconds (log)", True, 1.0),
    ("tpot_s_mean", "Mean time per output token", "milliseconds", False, 1000.0),
    (REJECTED, "Rejected requests", "% of requests", False, 1.0),
    ("qos_mean", "Mean QoS (share of the natural answer kept)", "share, 0–1", False, 1.0),
    ("slo_attainment", "SLO attainment (share of offered requests)", "share, 0–1", False, 1.0),  # runs with --slo
    ("goodput_requests_per_s", "Goodput (requests/s meeting the SLO)", "requests / s", False, 1.0),
)


def series_columns(df: pl.DataFrame) -> list[str]:
    """The run settings that tell series apart: every spec field that varies in the sweep,
    except ``rate`` (the x axis) and ``seed`` (averaged over). Policy is always one."""
    from syncintellects.sweep import SPEC_FIELDS

    cols = [c for c in SPEC_FIELDS if c in df.columns and c not in ("rate", "seed")
            and df[c].n_unique() > 1]
    return cols if "policy" in cols else ["policy", *cols]


def series_label(row: dict, columns: list[str]) -> str:
    parts = []
    for c in columns:
        v = row.get(c)
        if c in ("policy", "predictor"):
            if v is not None:
                parts.append(str(v))
        elif c == "length_control":
            if v:
                parts.append("control")
        elif c in ("policy_params", "predictor_params", "trace_options") and isinstance(v, str) and v.startswith("{"):
            d = json.loads(v)  # nested settings are JSON text columns: name=value pairs read better
            parts.append(", ".join(f"{k}={x}" for k, x in d.items()) or f"no {c}")
        else:
            parts.append(f"{c}={v}")
    return " / ".join(parts)


def with_derived(df: pl.DataFrame) -> pl.DataFrame:
    if REJECTED not in df.columns and {"num_rejected", "num_requests"} <= set(df.columns):
        df = df.with_columns((100.0 * pl.col("num_rejected") / pl.col("num_requests")).alias(REJECTED))
    return df


def aggregate(df: pl.DataFrame) -> pl.DataFrame:
    """Mean, min and max over seeds, per series and nominal rate (a series: one combination of
    every setting that varies in the sweep, so runs that differ in anything but the seed are
    never averaged together). ``x`` is the mean offered rate when recorded, else the nominal rate."""
    df = with_derived(df)
    if "series" not in df.columns:  # a table may name its series itself (the reproduction's arms)
        cols = series_columns(df)
        df = df.with_columns(series=pl.Series([series_label(r, cols) for r in df.iter_rows(named=True)],
                                              dtype=pl.Utf8))
    order = {s: i for i, s in enumerate(df["series"].unique(maintain_order=True).to_list())}
    metrics = [m for m, *_ in PANELS if m in df.columns]
    x = pl.col(OFFERED).mean() if OFFERED in df.columns and df[OFFERED].null_count() < df.height else pl.col("rate").first()
    return (df.group_by(["series", "rate"], maintain_order=True).agg(
        *[pl.col(m).mean().alias(m) for m in metrics],
        *[pl.col(m).min().alias(m + "_min") for m in metrics],
        *[pl.col(m).max().alias(m + "_max") for m in metrics],
        x.alias("x"),
        pl.len().alias("seeds"),
    ).with_columns(pl.col("series").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
            .sort(["_order", "rate"]).drop("_order"))


def log_ticks(values: list[float]) -> list[float]:
    """1-2-5 ticks from the last one at or below the data to the first one at or above it (powers of
    ten alone past four decades): round labels a reader can read, one at each end of the axis."""
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return []
    lo, hi = min(vals), max(vals)
    steps = (1,) if math.log10(hi / lo) > 4 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in steps]
    first = max(i for i, t in enumerate(ticks) if t <= lo * (1 + 1e-9))
    last = min(i for i, t in enumerate(ticks) if t >= hi * (1 - 1e-9))
    if first == last:  # one value on a tick: show the ticks either side too
        first, last = first - 1, last + 1
    return [float(f"{t:.6g}") for t in ticks[first:last + 1]]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def context_line(df: pl.DataFrame) -> str:
    """Traces, requests per run, profile, seeds and the nominal vs offered rates, in one sentence."""
    def values(col):
        return [v for v in df[col].unique(maintain_order=True).to_list() if v is not None] if col in df.columns else []

    def span(vs):
        vs = sorted(vs)
        return "–" if not vs else (_fmt(vs[0]) if vs[0] == vs[-1] else f"{_fmt(vs[0])}–{_fmt(vs[-1])}")

    parts = [f"{df.height} runs", f"trace {', '.join(map(str, values('trace'))) or '–'}",
             f"{', '.join(map(str, values('num_requests'))) or 'all'} requests per run",
             f"profile {', '.join(map(str, values('profile'))) or '–'}",
             (f"seed {values('seed')[0]}" if len(values("seed")) == 1 else
              f"seeds {', '.join(map(str, sorted(values('seed'))))} (points: mean over seeds; band: min–max)")]
    rates = values("rate")
    parts.append(f"nominal rate {span(rates)} req/s" if rates else "the traces' own arrivals (no --rate)")
    if OFFERED in df.columns and values(OFFERED):
        parts.append(f"offered (realised) rate {span(values(OFFERED))} req/s, the x axis")
    elif rates:
        parts.append("offered rate not recorded: the x axis is the nominal rate")
    return "; ".join(parts) + "."


def build_figure(df: pl.DataFrame) -> go.Figure:
    agg = aggregate(df)
    offered = OFFERED in df.columns and df[OFFERED].null_count() < df.height
    panels = [p for p in PANELS if p[0] in agg.columns]
    rows = (len(panels) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[p[1] for p in panels], vertical_spacing=0.3 / rows)
    names = agg["series"].unique(maintain_order=True).to_list()
    alpha = max(0.04, min(0.15, 0.4 / len(names)))  # many series: fainter bands, so their overlap stays see-through
    for k, series in enumerate(names):
        part = agg.filter(pl.col("series") == series).sort("x")
        colour, xs = PALETTE[k % len(PALETTE)], part["x"].to_list()
        for j, (m, _, unit, _, scale) in enumerate(panels):
            pos = {"row": j // 2 + 1, "col": j % 2 + 1}
            sc = lambda col: [None if v is None else v * scale for v in part[col].to_list()]
            if part["seeds"].max() > 1:  # the min–max band over seeds, drawn first (under the line)
                fig.add_trace(go.Scatter(x=xs + xs[::-1], y=sc(m + "_max") + sc(m + "_min")[::-1], fill="toself",
                                         mode="lines", fillcolor=_rgba(colour, alpha), line={"width": 0},
                                         hoverinfo="skip",
                                         legendgroup=series, showlegend=False), **pos)
            fig.add_trace(go.Scatter(
                x=xs, y=sc(m), name=series, legendgroup=series, showlegend=j == 0, mode="lines+markers",
                opacity=0.9, line={"color": colour, "dash": DASHES[k % len(DASHES)], "width": 2},
                # earlier series lie lower: larger markers, so identical points still show every series
                marker={"symbol": SYMBOLS[k % len(SYMBOLS)], "size": 12 - 2 * (k % 4),
                        "line": {"width": 1, "color": "white"}},
                customdata=list(zip(part["rate"].to_list(), part["seeds"].to_list())),
                hovertemplate=f"{html.escape(series)}<br>rate %{{customdata[0]}} req/s (offered %{{x:.3g}})<br>"
                              f"%{{y:.4g}} {unit.replace(' (log)', '')}<br>%{{customdata[1]}} seed(s)<extra></extra>",
            ), **pos)
    xtitle = "offered load (requests/s, realised)" if offered else "arrival rate (requests/s, nominal)"
    for j, (m, _, unit, log, scale) in enumerate(panels):
        pos = {"row": j // 2 + 1, "col": j % 2 + 1}
        fig.update_xaxes(title_text=xtitle, **pos)
        fig.update_yaxes(title_text=unit, **pos)
        if m in ("qos_mean", "slo_attainment"):
            fig.update_yaxes(range=[0, 1.05], **pos)
        elif not log:  # from zero to a little above the largest value (a flat series stays off the frame)
            top = max((v * scale for v in agg[m + "_max"].to_list() if v is not None), default=0.0)
            fig.update_yaxes(range=[0, 1.1 * top] if top > 0 else None, rangemode="tozero", **pos)
        if log:
            vals = [v * scale for c in (m + "_min", m + "_max") for v in agg[c].to_list() if v is not None]
            ticks = log_ticks(vals)
            pad = 0.02 * math.log10(ticks[-1] / ticks[0]) if ticks else 0
            fig.update_yaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks], **pos,
                             range=[math.log10(ticks[0]) - pad, math.log10(ticks[-1]) + pad] if ticks else None)
    fig.update_layout(height=340 * rows, template="plotly_white", margin={"t": 40},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0 + 0.12 / rows, "x": 0})
    return fig


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 20px 28px; color: #222; }}
h1 {{ font-size: 22px; margin: 0 0 6px 0; }}
p.context {{ font-size: 14px; color: #444; margin: 0 0 8px 0; max-width: 1300px; }}
p.empty {{ font-size: 16px; padding: 16px; background: #fff4e0; border: 1px solid #e0b060; max-width: 900px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="context">{context}</p>
{body}
</body>
</html>
"""


def render(df: pl.DataFrame, title: str, planned: int | None = None) -> str:
    """The dashboard page for a results table (an empty or unplottable sweep says so on the page)."""
    if df.height == 0:
        more = f" (0 of {planned} planned runs)" if planned else ""
        body = (f'<p class="empty">This sweep has no finished runs yet{more}, so there is nothing to plot. '
                f"Run the sweep command again: it runs what is missing.</p>")
        return PAGE.format(title=html.escape(title), context="", body=body)
    has_x = ("rate" in df.columns and df["rate"].null_count() < df.height) or \
            (OFFERED in df.columns and df[OFFERED].null_count() < df.height)
    if not has_x:
        body = ('<p class="empty">These runs keep the traces\' own arrivals (no --rate), so there is no load to '
                "plot against; sweep over --rate to compare policies across loads.</p>")
    else:
        body = build_figure(df).to_html(full_html=False, include_plotlyjs=True, div_id="dashboard")
    return PAGE.format(title=html.escape(title), context=html.escape(context_line(df)), body=body)


def default_title(df: pl.DataFrame, name: str) -> str:
    policies = [str(p) for p in df["policy"].unique(maintain_order=True).to_list()] if "policy" in df.columns else []
    traces = [str(t) for t in df["trace"].unique(maintain_order=True).to_list()] if "trace" in df.columns else []
    if not policies:
        return f"Sweep {name}"
    return f"Sweep {name}: {' vs '.join(policies)}" + (f" on {', '.join(traces)}" if traces else "")


def write_dashboard(results: str | Path, out_html: str | Path | None = None, title: str | None = None) -> Path:
    """Read a sweep's results.parquet (or its directory) and write a standalone HTML dashboard."""
    path = Path(results)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no sweep results at {path} (run `syncintellects sweep --out DIR` first)")
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several kinds for a file that is not Parquet
        raise ValueError(f"{path}: not a sweep's results.parquet ({str(e).splitlines()[0][:120]})") from None
    planned = None
    sweep_file = path.parent / "sweep.json"
    if sweep_file.exists():
        try:
            planned = len(json.loads(sweep_file.read_text())["runs"])
        except (ValueError, KeyError, TypeError):
            planned = None
    from syncintellects.errors import check_out_file
    from syncintellects.workers import write_atomic

    out_html = check_out_file(out_html) if out_html else path.parent / "dashboard.html"
    page = render(df, title or default_title(df, path.parent.name), planned)
    try:
        write_atomic(out_html, page)  # a reader (or a second Ctrl-C) never sees half a page
    except OSError as e:
        raise ValueError(f"--out {out_html}: cannot write it ({e.strerror or e})") from None
    return out_html
