"""Sweeps that survive: per-run files, resuming after kill -9, Ctrl-C / SIGTERM, stale output, bad arms."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from syncintellects import sweep as sweep_mod
from syncintellects.cli import main
from syncintellects.spec import RunSpec
from syncintellects.sweep import expand, run_key, run_sweep

REPO = Path(__file__).resolve().parents[1]
# 8 runs of 800 requests: long enough to interrupt mid-way, short enough to finish quickly
ARGS = ["sweep", "--policy", "static,continuous", "--rate", "1,2,3,4", "--num-requests", "800", "--workers", "2"]


def _specs():
    return expand(RunSpec(num_requests=800), {"policy": ["static", "continuous"], "rate": [1.0, 2.0, 3.0, 4.0]})


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "syncintellects.cli", *ARGS, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finished(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "runs").glob("*/summary.json"))


def _wait_for_runs(proc, out: Path, n: int = 1, timeout: float = 180.0) -> list[Path]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        done = _finished(out)
        if len(done) >= n:
            return done
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no run finished in time")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaper is missing


def _snapshot(dirs: list[Path]) -> dict:
    return {(d.name, f.name): (f.read_bytes(), f.stat().st_mtime_ns) for d in dirs for f in d.iterdir()}


def test_kill_9_midway_then_rerun_runs_each_missing_run_exactly_once(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    proc = _start(out)
    _wait_for_runs(proc, out)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers must notice and stop by themselves
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers outlived their killed parent"
    before = _finished(out)
    snap = _snapshot(before)
    specs, keys = _specs(), [run_key(s) for s in _specs()]
    assert 1 <= len(before) < len(specs) and {d.name for d in before} <= set(keys)

    ran = []
    real = sweep_mod.execute
    monkeypatch.setattr(sweep_mod, "execute", lambda job: ran.append(job[0]) or real(job))
    df = run_sweep(specs, backend="serial", out=out)
    assert f"resuming: {len(before)} of {len(specs)} runs already done" in capsys.readouterr().err
    assert sorted(ran) == [i for i, k in enumerate(keys) if k not in {d.name for d in before}]
    assert _snapshot(before) == snap  # the runs finished before the kill: untouched, byte for byte
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(keys)
    assert all((out / "runs" / k / "summary.json").exists() for k in keys)
    table = pl.read_parquet(out / "results.parquet")
    assert table["run_key"].to_list() == keys == df["run_key"].to_list()
    assert table["run_index"].to_list() == list(range(len(specs)))
    # a second rerun runs nothing and writes the same table (all but the wall-clock column)
    ran.clear()
    again = run_sweep(specs, backend="serial", out=out, progress=False)
    assert ran == [] and again.equals(table)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_every_worker_keeps_finished_runs_and_exits_with_one_line(tmp_path, sig, status):
    out = tmp_path / "sweep"
    proc = _start(out)
    _wait_for_runs(proc, out)
    kids = _children(proc.pid)
    assert kids, "the local backend runs in worker processes"
    t0 = time.monotonic()
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 15
    assert proc.returncode == status
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("sweep:")]
    assert len(lines) == 1 and lines[0].startswith("interrupted by") and "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids)
    done = _finished(out)
    assert f"{len(done)} of 8 runs done" in lines[0]
    assert pl.read_parquet(out / "results.parquet")["run_key"].to_list() == \
        [k for k in map(run_key, _specs()) if k in {d.name for d in done}]


def test_a_second_ctrl_c_while_the_dashboard_is_written_exits_130_with_the_same_one_line(tmp_path):
    out, writing = tmp_path / "sweep", tmp_path / "writing"
    # the dashboard write made slow (it announces itself, then sleeps), so the second SIGINT lands inside it
    code = ("import sys, time; import syncintellects.dashboard as d; real = d.write_dashboard\n"
            "def slow(*a, **k):\n    open(sys.argv[1], 'w').close(); time.sleep(60); return real(*a, **k)\n"
            "d.write_dashboard = slow\nfrom syncintellects.cli import main; raise SystemExit(main(sys.argv[2:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(writing), *ARGS, "--dashboard", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_runs(proc, out)
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while not writing.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 15  # the second signal cut the (60 s) write short
    assert proc.returncode == 130
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("sweep:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("interrupted by Ctrl-C (SIGINT): ") and "the dashboard was not written" in lines[0]
    assert f"{len(_finished(out))} of 8 runs done" in lines[0]
    assert not (out / "dashboard.html").exists() and not list(out.glob(".*.tmp"))


def _small(**grid):
    return expand(RunSpec(num_requests=30), grid or {"policy": ["static", "continuous"]})


def test_a_different_sweep_into_the_same_out_is_refused_and_fresh_replaces_it(tmp_path, capsys):
    out = tmp_path / "s"
    run_sweep(_small(), backend="serial", out=out, progress=False)
    other = _small(policy=["static"], rate=[1.0])
    with pytest.raises(ValueError, match="holds a different sweep"):
        run_sweep(other, backend="serial", out=out, progress=False)
    assert len(list((out / "runs").iterdir())) == 2  # nothing touched
    df = run_sweep(other, backend="serial", out=out, fresh=True, progress=False)
    assert [p.name for p in (out / "runs").iterdir()] == [run_key(other[0])] == df["run_key"].to_list()
    # an output directory written by an older sweep (no sweep.json) is not mixed in either
    old = tmp_path / "old"
    (old / "runs" / "0000").mkdir(parents=True)
    assert main(["sweep", "--policy", "static", "--num-requests", "30", "--out", str(old)]) == 2
    assert "no sweep.json" in capsys.readouterr().err


def test_a_resume_after_an_input_changed_is_refused_naming_it(tmp_path, capsys):
    """The run keys are the specs', so a resume after the trace file (or profile, or predictor model) changed
    content would reuse runs made from the old one: refused with one line naming the input; --fresh reruns."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i * 0.5},{100 + i},{20 + i % 7}\n"
                                                                        for i in range(40)))
    out = tmp_path / "s"
    argv = ["sweep", "--trace", str(trace), "--policy", "static,continuous", "--num-requests", "40", "--out", str(out),
            "--workers", "1"]
    assert main(argv) == 0
    first = pl.read_parquet(out / "results.parquet")
    inputs = json.loads((out / "sweep.json").read_text())["inputs"]
    assert set(inputs) == {f"trace {trace}", "profile a100-llama-2-7b"}
    for run in (out / "runs").iterdir():  # each run's config.json says what content it read (provenance)
        assert json.loads((run / "config.json").read_text())["inputs"] == inputs
    assert main(argv) == 0  # unchanged: resumes, nothing rerun
    assert "resuming: 2 of 2" in capsys.readouterr().err
    trace.write_text(trace.read_text().replace(",20\n", ",200\n"))  # longer answers: other figures
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"trace {trace} has changed" in err[0] and "--fresh" in err[0]
    assert main(argv + ["--fresh"]) == 0
    again = pl.read_parquet(out / "results.parquet")
    assert again["output_tokens"].sum() > first["output_tokens"].sum()


def test_an_unfinished_run_directory_is_run_again(tmp_path):
    out = tmp_path / "s"
    specs = _small()
    run_sweep(specs, backend="serial", out=out, progress=False)
    d = out / "runs" / run_key(specs[1])
    (d / "summary.json").unlink()
    (d / "config.json").write_text("half written")
    df = run_sweep(specs, backend="serial", out=out, progress=False)
    assert json.loads((d / "config.json").read_text())["spec"]["policy"] == "continuous"
    assert df.height == 2 and (d / "summary.json").exists()


def test_keep_runs_is_not_in_the_key_and_a_resume_with_it_reruns_runs_without_tables(tmp_path, monkeypatch):
    out = tmp_path / "s"
    specs = _small()
    plain = run_sweep(specs, backend="serial", out=out, progress=False)
    d0, d1 = (out / "runs" / run_key(s) for s in specs)
    assert not (d0 / "requests.parquet").exists()
    def figures(d):
        return {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k != "sim_wall_s"}

    summary0 = figures(d0)
    (d1 / "requests.parquet").write_bytes(b"")  # as if a keep_runs run had died between its two tables
    ran = []
    real = sweep_mod.execute
    monkeypatch.setattr(sweep_mod, "execute", lambda job: ran.append(job[0]) or real(job))
    kept = run_sweep(specs, backend="serial", out=out, keep_runs=True, progress=False)
    assert sorted(ran) == [0, 1]  # both lacked a table: run again, under the same keys
    for d in (d0, d1):
        assert pl.read_parquet(d / "requests.parquet").height == 30 and pl.read_parquet(d / "steps.parquet").height > 0
    assert figures(d0) == summary0  # same spec, same run: keep_runs changes no figure
    assert kept.drop("sim_wall_s").equals(plain.drop("sim_wall_s"))
    ran.clear()
    assert run_sweep(specs, backend="serial", out=out, keep_runs=True, progress=False).height == 2 and ran == []
    run_sweep(specs, backend="serial", out=out, progress=False)  # without it: nothing rerun, tables left in place
    assert ran == [] and (d0 / "requests.parquet").exists()


def test_a_bad_arm_stops_the_sweep_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_mod, "execute", lambda job: pytest.fail("a run started"))
    for args, needle in [(["--policy", "static,nope"], "unknown policy 'nope'"),
                         (["--policy", "static", "--rate", "1,-2"], "expected a number > 0"),
                         (["--policy", "static", "--rate", "1,1"], "same run twice"),
                         (["--policy", "static", "--workers", "0"], "--workers must be >= 1")]:
        out = tmp_path / "x"
        code = main(["sweep", *args, "--num-requests", "30", "--backend", "serial", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert needle in err, err
        assert not (out / "runs").exists() and not (out / "sweep.json").exists()


def test_out_spec_and_ray_address_mistakes_are_one_line(tmp_path, capsys):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    spec = tmp_path / "spec.json"
    cases = [(["--policy", "static", "--out", str(afile)], "is a file"),
             (["--policy", "static", "--out", ""], "empty path"),
             (["--spec", str(spec), "--out", str(tmp_path / "o")], "expected an object", "[1, 2]"),
             (["--spec", str(spec), "--out", str(tmp_path / "o")], "field 'num_requests' must be a whole number",
              '{"base": {"num_requests": "2000"}}'),
             (["--spec", str(spec), "--out", str(tmp_path / "o")], "not valid JSON", "{"),
             (["--spec", str(spec), "--out", str(tmp_path / "o")], "field 'length_control' must be true or false",
              '{"grid": {"length_control": ["on"]}}'),
             (["--spec", str(spec), "--num-requests", "5", "--out", str(tmp_path / "o")], "put --num-requests", "{}"),
             (["--spec", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")], "no such file")]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append((["--policy", "static", "--out", str(ro / "x")], "cannot write there"))
    for args, needle, *text in cases:
        if text:
            spec.write_text(text[0])
        assert main(["sweep", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert main(["sweep", "--policy", "static", "--backend", "ray", "--ray-address", f"127.0.0.1:{port}",
                 "--out", str(tmp_path / "r")]) == 2
    assert time.monotonic() - t0 < 10 and "nothing answers" in capsys.readouterr().err


def test_a_failing_run_stops_the_sweep_at_once_and_keeps_the_runs_before_it(tmp_path, monkeypatch):
    specs = _small(policy=["static", "continuous"], rate=[1.0, 2.0])
    real = sweep_mod.execute
    ran = []

    def flaky(job):
        ran.append(job[0])
        return (job[0], None, "ValueError: the trace ran dry") if job[0] == 1 else real(job)

    monkeypatch.setattr(sweep_mod, "execute", flaky)
    with pytest.raises(ValueError, match=f"run {run_key(specs[1])} failed: ValueError: the trace ran dry"):
        run_sweep(specs, backend="serial", out=tmp_path, progress=False)
    assert ran == [0, 1]  # nothing after the failure
    assert pl.read_parquet(tmp_path / "results.parquet")["run_key"].to_list() == [run_key(specs[0])]
    monkeypatch.setattr(sweep_mod, "execute", real)
    assert run_sweep(specs, backend="serial", out=tmp_path, progress=False).height == 4


def test_a_row_store_refuses_to_resume_across_an_input_change(tmp_path):
    """The store of `reproduce paper`: its inputs (trace, profile, predictor models) are fingerprinted too."""
    from syncintellects.workers import RowStore

    key = lambda row: row["k"]  # noqa: E731
    s = RowStore(tmp_path / "r", {"study": 1}, key, False, inputs={"profile p": "aaa"})
    assert s.begin() == {}
    s.write({"k": "one", "v": 1})
    again = RowStore(tmp_path / "r", {"study": 1}, key, False, inputs={"profile p": "aaa"})
    assert again.begin() == {"one": {"k": "one", "v": 1}}  # the inputs file is not a row
    with pytest.raises(ValueError, match="profile p has changed"):
        RowStore(tmp_path / "r", {"study": 1}, key, False, inputs={"profile p": "bbb"})
    fresh = RowStore(tmp_path / "r", {"study": 1}, key, True, inputs={"profile p": "bbb"})
    assert fresh.begin() == {}
    assert json.loads((tmp_path / "r" / "inputs.json").read_text()) == {"profile p": "bbb"}
