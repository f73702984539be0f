"""``syncintellects reproduce paper``: the table's arithmetic, the workload windows, and a quick end-to-end run."""
import json

import pytest

from syncintellects.reproduce import (ARMS, BASELINE, HEADLINE, PAPER, ReproductionConfig, headline, run_one,
                                      workload)


def _row(label, rate, seed, e2e, tok, req):
    return {"label": label, "rate": rate, "seed": seed, "mean_e2e_s": e2e, "throughput_output_tokens_per_s": tok,
            "throughput_requests_per_s": req}


def test_headline_compares_each_seed_with_its_own_baseline():
    rows = [_row(BASELINE, 1.0, 0, 10.0, 100.0, 1.0), _row(HEADLINE, 1.0, 0, 8.0, 110.0, 1.0),
            _row(BASELINE, 1.0, 1, 20.0, 200.0, 2.0), _row(HEADLINE, 1.0, 1, 10.0, 200.0, 3.0),
            _row(BASELINE, 2.0, 0, 40.0, 100.0, 1.0), _row(HEADLINE, 2.0, 0, 50.0, 90.0, 1.0)]
    h = {x["rate"]: x for x in headline(rows)}
    assert h[1.0]["latency_reduction_pct"] == pytest.approx((20 + 50) / 2)
    assert h[1.0]["throughput_gain_pct"] == pytest.approx((10 + 0) / 2)
    assert h[1.0]["request_throughput_gain_pct"] == pytest.approx((0 + 50) / 2)
    assert h[2.0]["latency_reduction_pct"] == pytest.approx(-25.0) and h[2.0]["throughput_gain_pct"] == pytest.approx(-10)
    assert h["all rates"]["latency_reduction_pct"] == pytest.approx((20 + 50 - 25) / 3) and h["all rates"]["runs"] == 3
    # the baseline serves 1 and 2 req/s at rate 1.0 (>= 90%) but only 1 req/s at rate 2.0
    assert h[1.0]["baseline_keeps_up"] and not h[2.0]["baseline_keeps_up"]
    assert h["rates the baseline keeps up with"]["latency_reduction_pct"] == pytest.approx(35.0)


def test_workload_windows_are_real_disjoint_and_at_the_asked_rate():
    cfg = ReproductionConfig(num_requests=200)
    a, b = workload(cfg, 2.0, 0), workload(cfg, 2.0, 1)
    assert len(a) == len(b) == 200 and a.arrival_s[0] == 0.0 and b.arrival_s[0] == 0.0
    assert a.mean_rate == pytest.approx(2.0) and workload(cfg, 5.0, 0).mean_rate == pytest.approx(5.0)
    assert not set(a.request_id.tolist()) & set(b.request_id.tolist())
    from traces import load_trace

    full = load_trace("azure-conv")
    assert (a.output_tokens == full.output_tokens[:200]).all() and (b.prompt_tokens == full.prompt_tokens[200:400]).all()


def test_one_run_is_deterministic_and_finishes_every_request():
    cfg = ReproductionConfig(num_requests=80)
    arm = next(a for a in ARMS if a.policy == "syncintellects")
    first, again = run_one((cfg, arm, 3.0, 1)), run_one((cfg, arm, 3.0, 1))
    assert first == again
    assert first["num_requests"] == 80 and first["length_control"]
    # window 1 holds one prompt longer than the model context, which the engine turns away
    assert first["num_finished"] == 80 - first["num_rejected"] == 79


def test_quick_cli_writes_the_table_and_the_plot(tmp_path):
    from syncintellects.cli import main

    out = tmp_path / "repro"
    assert main(["reproduce", "paper", "--quick", "--num-requests", "60", "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "reproduction.json").read_text())
    quick = ReproductionConfig.quick()
    assert len(rows) == len(ARMS) * len(quick.rates) * len(quick.seeds)
    keys = {"policy", "predictor", "length_control", "rate", "seed", "mean_e2e_s", "p99_e2e_s",
            "throughput_output_tokens_per_s", "mean_qos"}
    assert all(keys <= r.keys() for r in rows)
    for policy in ("static", "syncintellects"):
        got = {(r["rate"], r["seed"]) for r in rows if r["policy"] == policy}
        assert got == {(x, s) for x in quick.rates for s in quick.seeds}
    assert all(r["num_finished"] == 60 for r in rows)  # the first windows hold no over-long prompt
    assert all(r["mean_qos"] == 1.0 for r in rows if not r["length_control"])
    assert all(0.0 < r["mean_qos"] <= 1.0 for r in rows if r["length_control"])
    md = (out / "reproduction.md").read_text()
    assert f"{PAPER['mean_latency_reduction_pct']}%" in md and f"{PAPER['throughput_gain_pct']}%" in md
    html = (out / "reproduction.html").read_text()
    assert "plotly" in html.lower() and HEADLINE in html
    assert (out / "reproduction.csv").read_text().splitlines()[0].startswith("label,policy")


def test_a_seed_past_the_last_window_is_an_error_not_a_repeat(capsys):
    from syncintellects.cli import main
    from syncintellects.reproduce import check_config, windows

    cfg = ReproductionConfig(num_requests=1000)
    assert windows(cfg) == 19  # 19,366 azure-conv requests
    check_config(ReproductionConfig(num_requests=1000, seeds=tuple(range(19))))
    with pytest.raises(ValueError, match=r"19 window\(s\) of 1000 \(seeds 0..18\)"):
        workload(cfg, 1.0, 19)  # was: window 0 again
    assert main(["reproduce", "paper", "--seeds", "20", "--num-requests", "1000", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "--seeds 20" in err and "use at most 19 seeds" in err and len(err.strip().splitlines()) == 1


def test_reproduction_resumes_runs_only_what_is_missing_and_refuses_another_study(tmp_path, monkeypatch, capsys):
    from syncintellects import reproduce
    from syncintellects.cli import main

    out = tmp_path / "r"
    args = ["reproduce", "paper", "--quick", "--num-requests", "40", "--rates", "2", "--workers", "1", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    first = (out / "reproduction.json").read_text()
    runs = sorted(p for p in (out / "runs").glob("*.json") if p.name != "study.json")
    assert len(runs) == len(ARMS) * 2
    lost = runs[::3]
    for p in lost:
        p.unlink()
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs if p not in lost}
    ran = []
    real = reproduce.run_one
    monkeypatch.setattr(reproduce, "run_one", lambda job: ran.append(job) or real(job))
    assert main([*args, "--out", str(out)]) == 0
    assert len(ran) == len(lost) and {reproduce.run_key(a.label, r, s) for _, a, r, s in ran} == {p.stem for p in lost}
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept} == kept
    assert (out / "reproduction.json").read_text() == first  # same rows, same order, same figures
    capsys.readouterr()
    assert main([*args, "--seeds", "1", "--out", str(out)]) == 2
    assert "holds the runs of a different reproduction" in capsys.readouterr().err
    assert main([*args, "--seeds", "1", "--fresh", "--out", str(out)]) == 0
    assert len(json.loads((out / "reproduction.json").read_text())) == len(ARMS)


def test_sigterm_stops_a_reproduction_and_keeps_its_finished_runs(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "syncintellects.cli", "reproduce", "paper", "--num-requests", "300",
                             "--rates", "2", "4", "--seeds", "2", "--workers", "2", "--out", str(out)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    t0 = time.monotonic()
    while not [p for p in (out / "runs").glob("*.json") if p.name != "study.json"]:
        assert proc.poll() is None and time.monotonic() - t0 < 180, proc.communicate()
        time.sleep(0.05)
    kids = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
            if _ppid(p) == proc.pid]
    assert kids
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    deadline = time.monotonic() + 10
    while any(_running(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(k) for k in kids), "a worker outlived the interrupted reproduction"
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("reproduce paper")]
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM") and "Traceback" not in err, err
    done = [p for p in (out / "runs").glob("*.json") if p.name != "study.json"]
    assert 1 <= len(done) < len(ARMS) * 4 and f"{len(done)} runs done" in lines[0]
    assert all(json.loads(p.read_text())["num_requests"] == 300 for p in done)


def _stat(path) -> list[str]:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _ppid(stat_path) -> int:
    fields = _stat(stat_path)
    return int(fields[1]) if fields else -1


def _running(pid: int) -> bool:
    from pathlib import Path

    fields = _stat(Path(f"/proc/{pid}/stat"))
    return bool(fields) and fields[0] != "Z"  # a zombie has exited (only its reaper is missing)


def test_reproduce_mistakes_are_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    from syncintellects import reproduce
    from syncintellects.cli import main

    monkeypatch.setattr(reproduce, "run_one", lambda job: pytest.fail("a run started"))
    afile = tmp_path / "f"
    afile.write_text("x")
    for args, needle in [(["--out", str(afile)], "is a file"), (["--out", ""], "empty path"),
                         (["--workers", "0", "--out", str(tmp_path / "a")], "--workers: got 0"),
                         (["--num-requests", "1", "--out", str(tmp_path / "a")], "--num-requests: got 1"),
                         (["--rates", "0", "--out", str(tmp_path / "a")], "rates > 0"),
                         (["--seeds", "0", "--out", str(tmp_path / "a")], "--seeds must be >= 1")]:
        assert main(["reproduce", "paper", "--quick", "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
