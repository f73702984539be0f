"""Plotly dashboards of sweep results: latency, throughput and QoS against load, per policy."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")  # one colour per series, the same in every panel

PANELS = (  # metric, title; latency panels use a log axis (queues blow up past saturation)
    ("e2e_latency_s_mean", "mean end-to-end latency (s, log)"),
    ("e2e_latency_s_p99", "p99 end-to-end latency (s, log)"),
    ("throughput_output_tokens_per_s", "throughput (output tokens/s)"),
    ("ttft_s_mean", "mean time to first token (s, log)"),
    ("tpot_s_mean", "mean time per output token (s)"),
    ("qos_mean", "mean QoS (share of natural answer kept)"),
    ("slo_attainment", "SLO attainment (share of offered requests)"),  # runs with --slo only
    ("goodput_requests_per_s", "goodput (requests/s meeting the SLO)"),
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
        else:
            parts.append(f"{c}={v}")
    return " / ".join(parts)


def aggregate(df: pl.DataFrame) -> pl.DataFrame:
    """Mean and standard deviation over seeds, per series and rate (a series: one combination of
    every setting that varies in the sweep, so runs that differ in anything but the seed are
    never averaged together)."""
    cols = series_columns(df)
    df = df.with_columns(series=pl.Series([series_label(r, cols) for r in df.iter_rows(named=True)], dtype=pl.Utf8))
    metrics = [m for m, _ in PANELS if m in df.columns]
    return (df.group_by(["series", "rate"], maintain_order=True).agg(
        *[pl.col(m).mean().alias(m) for m in metrics],
        *[pl.col(m).std().fill_null(0.0).alias(m + "_std") for m in metrics],
        pl.len().alias("seeds"),
    ).sort(["series", "rate"], maintain_order=True))


def build_figure(df: pl.DataFrame, title: str = "Sweep") -> go.Figure:
    if "rate" not in df.columns or df["rate"].null_count() == df.height:
        raise ValueError("the dashboard plots metrics against --rate; this sweep has no rate values")
    agg = aggregate(df)
    panels = [(m, t) for m, t in PANELS if m in agg.columns]
    rows = (len(panels) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[t for _, t in panels])
    for k, series in enumerate(agg["series"].unique(maintain_order=True).to_list()):
        part = agg.filter(pl.col("series") == series)
        for j, (m, _) in enumerate(panels):
            fig.add_trace(go.Scatter(
                x=part["rate"].to_list(), y=part[m].to_list(), name=series, legendgroup=series,
                showlegend=j == 0, mode="lines+markers", line={"color": PALETTE[k % len(PALETTE)]},
                error_y={"type": "data", "array": part[m + "_std"].to_list(), "visible": True},
                hovertemplate=f"{series}<br>rate %{{x}} req/s<br>%{{y:.4g}}<extra></extra>",
            ), row=j // 2 + 1, col=j % 2 + 1)
    for j, (_, title) in enumerate(panels):
        fig.update_xaxes(title_text="arrival rate (req/s)", row=j // 2 + 1, col=j % 2 + 1)
        if title.endswith("log)"):
            fig.update_yaxes(type="log", row=j // 2 + 1, col=j % 2 + 1)
    fig.update_layout(title=title, height=330 * rows, template="plotly_white")
    return fig


def write_dashboard(results: str | Path, out_html: str | Path | None = None, title: str | None = None) -> Path:
    """Read a sweep's results.parquet (or its directory) and write a standalone HTML dashboard."""
    path = Path(results)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no sweep results at {path} (run `syncintellects sweep --out DIR` first)")
    df = pl.read_parquet(path)
    out_html = Path(out_html) if out_html else path.parent / "dashboard.html"
    fig = build_figure(df, title or f"Sweep: {path.parent.name}")
    fig.write_html(out_html, include_plotlyjs=True, full_html=True, div_id="dashboard")
    return out_html
