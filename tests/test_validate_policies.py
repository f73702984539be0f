"""benchmarks/validate_policies.py: one directory per policy and run, resumed by command line.

The real `validate` is replaced by a fake that writes a verdict, so this checks the script's own
bookkeeping (run numbering, read-back, --fresh, a changed command) without running a model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "validate_policies.py"
METRICS = ("e2e_latency_s.mean", "e2e_latency_s.p99", "ttft_s.mean", "tpot_s.mean", "throughput_output_tokens_per_s")


@pytest.fixture()
def script():
    spec = importlib.util.spec_from_file_location("validate_policies", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def calls(monkeypatch):
    import syncintellects.cli

    seen: list[list[str]] = []

    def fake(argv):
        seen.append(list(argv))
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        err = 0.01 * len(seen)
        doc = {"metrics": {k: {"real": 1.0, "sim": 1.0 + err, "rel_error": err} for k in METRICS},
               "failed": [], "conclusive": True, "gated": list(METRICS),
               "machine_load_average_1m": {"before_real_run": 0.1, "after_real_run": 0.2},
               "replay": {"drift": 1.0, "by_kind": {"decode": {"drift": 1.0}}},
               "one_run_out": {"runs": 5, "by_metric": {}, "undecided": ["ttft_s.mean"] if "sjf" in argv else []},
               "interleaved": {"median_ms_vs_stored": 1.5} if "static" in argv else None}
        (out / "validation.json").write_text(json.dumps(doc))
        return 0

    monkeypatch.setattr(syncintellects.cli, "main", fake)
    return seen


def test_every_run_gets_its_own_numbered_directory_and_resumes(script, calls, tmp_path, capsys):
    argv = ["--profile", "p.json", "--out", str(tmp_path), "--runs", "2", "--policies", "static", "sjf"]
    assert script.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["sjf-1", "sjf-2", "static-1", "static-2"]
    # interleaved: policy 1 run 1, policy 2 run 1, policy 1 run 2, ...
    assert [a[a.index("--out") + 1].rsplit("/", 1)[1] for a in calls] == ["static-1", "sjf-1", "static-2", "sjf-2"]
    first = json.loads((tmp_path / "summary.json").read_text())
    assert [d["metrics"]["tpot_s.mean"]["rel_error"] for d in first["static"]] == pytest.approx([0.01, 0.03])

    table = capsys.readouterr().out
    assert "| static | 2/2 |" in table and table.count("| pass / pass | 1.50 / 1.50 |") == 1
    assert "| undecided (ttft mean) / undecided (ttft mean) | - / - |" in table  # a pass one real run would flip
    # 4 verdicts, none failed; the leave-one-out check decided static's two, not sjf's
    assert "4 of 4 verdicts passed; one real run left out decided 2 of 4 (2 pass, 0 fail), 2 undecided" in table

    # the same command again reads every verdict back and runs nothing
    assert script.main(argv) == 0
    assert len(calls) == 4
    assert json.loads((tmp_path / "summary.json").read_text()) == first
    assert capsys.readouterr().out.count("done already") == 4

    # a changed command line reruns what it changes; --fresh reruns everything
    assert script.main(argv[:-1]) == 0  # sjf dropped: static's verdicts are read back
    assert len(calls) == 4
    assert script.main([*argv[:-1], "--tolerance", "0.1"]) == 0
    assert len(calls) == 6
    assert script.main([*argv, "--fresh"]) == 0
    assert len(calls) == 10


def test_a_refused_run_leaves_no_verdict_and_the_rest_go_on(script, calls, tmp_path, monkeypatch, capsys):
    import syncintellects.cli

    real_fake = syncintellects.cli.main

    def refuse_sjf(argv):
        if "sjf" in argv:
            calls.append(list(argv))
            return 2
        return real_fake(argv)

    monkeypatch.setattr(syncintellects.cli, "main", refuse_sjf)
    assert script.main(["--profile", "p.json", "--out", str(tmp_path), "--runs", "1", "--policies", "sjf", "static"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sjf"] == [] and len(summary["static"]) == 1
    assert summary["static"][0]["interleaved"] == {"median_ms_vs_stored": 1.5}
    assert "1 of 1 verdicts passed (1 refused: no verdict)" in capsys.readouterr().out


def test_a_failure_no_single_run_flips_is_decided_though_another_metric_is_not(script):
    """The whole verdict's leave-one-out decision, as validate records it; for a verdict written before that
    field existed, a failing metric decided on its own."""
    loo = lambda verdict, undecided, e2e="fail": {"runs": 5, "undecided": undecided, "verdict": verdict,
                                                  "by_metric": {"e2e_latency_s.mean": {"decided": e2e}}}
    docs = {"a": [{"failed": ["e2e_latency_s.mean"], "one_run_out": loo("fail", ["ttft_s.mean"])}],
            "b": [{"failed": ["ttft_s.mean"], "one_run_out": loo("undecided", ["ttft_s.mean"], "pass")}],
            "c": [{"failed": [], "one_run_out": loo("pass", [], "pass")}],
            "d": [{"failed": ["e2e_latency_s.mean"], "one_run_out": {k: v for k, v in loo(None, ["ttft_s.mean"]).items()
                                                                   if k != "verdict"}}]}
    assert [script.decided(d[0]) for d in docs.values()] == ["FAIL", "undecided (ttft mean)", "pass", "FAIL"]
    assert script.count_line(docs, 5) == ("1 of 4 verdicts passed (1 refused: no verdict); one real run left out "
                                          "decided 3 of 4 (1 pass, 2 fail), 1 undecided")
