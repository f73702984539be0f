"""Dashboards a person can read: the study's title, units, run context, seed bands, offered load, empty sweeps."""
import re

import polars as pl
import pytest

from syncintellects.cli import main
from syncintellects.dashboard import PANELS, aggregate, build_figure, context_line, log_ticks, render, write_dashboard


def _table(offered: bool = True) -> pl.DataFrame:
    rows = []
    for policy, base in (("static", 10.0), ("continuous", 2.0)):
        for rate in (1.0, 2.0, 4.0):
            for seed in (0, 1, 2):
                row = {"trace": "azure-conv", "policy": policy, "rate": rate, "seed": seed, "num_requests": 500,
                       "profile": "a100-llama-2-7b-fp16", "predictor": None, "length_control": False,
                       "e2e_latency_s_mean": base * rate * (1 + 0.1 * seed), "e2e_latency_s_p99": 3 * base * rate,
                       "ttft_s_mean": 0.1 * rate, "tpot_s_mean": 0.012, "throughput_output_tokens_per_s": 100 * rate,
                       "throughput_requests_per_s": 0.9 * rate, "num_rejected": seed, "qos_mean": 1.0}
                if offered:
                    row["offered_rate_requests_per_s"] = rate * (0.95 + 0.05 * seed)
                rows.append(row)
    return pl.DataFrame(rows)


def test_mean_and_min_max_over_seeds_against_the_offered_rate():
    agg = aggregate(_table())
    s = agg.filter((pl.col("series") == "static") & (pl.col("rate") == 2.0)).row(0, named=True)
    assert s["seeds"] == 3
    assert s["e2e_latency_s_mean"] == pytest.approx(20 * 1.1) and s["e2e_latency_s_mean_min"] == pytest.approx(20)
    assert s["e2e_latency_s_mean_max"] == pytest.approx(24) and s["x"] == pytest.approx(2.0)  # mean of .95, 1, 1.05
    assert s["rejected_pct"] == pytest.approx(100 * 1 / 500) and s["rejected_pct_max"] == pytest.approx(100 * 2 / 500)
    # without the offered column the x axis is the nominal rate
    assert aggregate(_table(offered=False))["x"].to_list() == aggregate(_table(offered=False))["rate"].to_list()


def test_figure_panels_units_bands_and_distinguishable_series():
    fig = build_figure(_table())
    shown = [p for p in PANELS if p[0] in aggregate(_table()).columns]
    assert len(shown) == 8  # no SLO columns in this table: no SLO panels
    titles = [a.text for a in fig.layout.annotations]
    assert "Requests served per second" in titles and "Rejected requests" in titles
    assert "Throughput: output tokens/s" in titles
    ytitles = [fig.layout[k].title.text for k in fig.layout if k.startswith("yaxis")]
    assert len(ytitles) == len(shown) and all(ytitles)
    assert "milliseconds" in ytitles and "% of requests" in ytitles and "seconds (log)" in ytitles
    xtitles = {fig.layout[k].title.text for k in fig.layout if k.startswith("xaxis")}
    assert xtitles == {"offered load (requests/s, realised)"}
    lines = [t for t in fig.data if t.fill is None]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(lines) == len(bands) == 2 * len(shown)
    static_e2e = next(t for t in lines if t.name == "static")
    assert list(static_e2e.y) == pytest.approx([11.0, 22.0, 44.0])
    assert list(bands[0].y) == pytest.approx([12, 24, 48, 40, 20, 10])  # static: max forward, min back
    styles = {(t.line.dash, t.marker.symbol) for t in lines}
    assert len(styles) == 2  # overlapping series stay apart by dash and marker
    tpot = [t for t in lines if t.yaxis == "y6"]  # the sixth panel: seconds per token shown in milliseconds
    assert len(tpot) == 2 and all(list(t.y) == pytest.approx([12.0] * 3) for t in tpot)
    log_axes = [fig.layout[k] for k in fig.layout if k.startswith("yaxis") and fig.layout[k].type == "log"]
    assert len(log_axes) == 3 and all(ax.tickvals for ax in log_axes)


def test_log_ticks_are_round_and_cover_the_data():
    ticks = log_ticks([0.13, 47.0])
    assert ticks[0] <= 0.13 and ticks[-1] >= 47.0
    assert all(re.fullmatch(r"[125]", f"{t:g}".replace("0", "").replace(".", "").lstrip("0") or "1") for t in ticks)
    assert log_ticks([1e-3, 1e4]) == [10.0 ** e for e in range(-3, 5)]  # many decades: powers of ten only
    assert log_ticks([2.7, 48.0]) == [2, 5, 10, 20, 50]  # one round label at or past each end
    assert log_ticks([5.0, 5.0]) == [2, 5, 10]
    assert log_ticks([]) == [] and log_ticks([0.0, -1.0]) == []


def test_page_has_the_study_title_context_and_says_when_empty(tmp_path):
    page = render(_table(), "Task batching vs continuous batching")
    assert "<title>Task batching vs continuous batching</title>" in page
    assert "<h1>Task batching vs continuous batching</h1>" in page
    head = page.split("<body>")[0]
    assert head.count("<title>") == 1 and "QoS (share" not in head
    ctx = context_line(_table())
    for part in ("trace azure-conv", "500 requests per run", "profile a100-llama-2-7b-fp16", "seeds 0, 1, 2",
                 "nominal rate 1–4 req/s", "offered (realised) rate 0.95–4.2 req/s"):
        assert part in ctx, ctx
    assert "x axis is the nominal rate" in context_line(_table(offered=False))
    assert render(_table(), "t") == render(_table(), "t")  # deterministic bytes
    empty = render(_table().head(0), "Empty study", planned=6)
    assert "no finished runs yet (0 of 6 planned runs)" in empty and "plotly" not in empty.lower()


def test_dashboard_command_end_to_end_and_its_mistakes(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sweep", "--policy", "static,continuous", "--rate", "1,2", "--num-requests", "30",
                 "--backend", "serial", "--out", str(out), "--dashboard"]) == 0
    page = (out / "dashboard.html").read_text()
    assert "<title>Sweep s: static vs continuous on azure-conv</title>" in page and "Requests served per second" in page
    assert main(["dashboard", str(out), "--out", str(tmp_path / "d.html")]) == 0
    assert (tmp_path / "d.html").read_text() == page  # the same table gives the same page
    capsys.readouterr()
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    for args, needle in [([str(bad)], "not a sweep's results.parquet"), ([str(tmp_path / "nope")], "no sweep results"),
                         ([str(out), "--out", str(tmp_path)], "is a directory")]:
        assert main(["dashboard", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    # a sweep interrupted before its first run still gets a page that says so
    empty = tmp_path / "e"
    empty.mkdir()
    pl.DataFrame({"run_index": []}, schema={"run_index": pl.Int64}).write_parquet(empty / "results.parquet")
    assert "no finished runs yet" in write_dashboard(empty).read_text()


def test_series_named_by_the_nested_setting_that_varies():
    """A sweep over predictor_params (a JSON text column) names its series by name=value, not by the JSON."""
    from syncintellects.dashboard import series_columns, series_label

    df = pl.DataFrame({"policy": ["sjf"] * 2, "rate": [2.0, 2.0], "seed": [0, 0],
                       "predictor_params": ['{"error_model": "in-distribution"}', '{"error_model": "unseen-source"}'],
                       "policy_params": ["{}", "{}"]})
    cols = series_columns(df)
    assert cols == ["policy", "predictor_params"]
    labels = [series_label(r, cols) for r in df.iter_rows(named=True)]
    assert labels == ["sjf / error_model=in-distribution", "sjf / error_model=unseen-source"]
    assert series_label({"policy": "sjf", "predictor_params": "{}"}, cols) == "sjf / no predictor_params"
