"""The bad-input catalogue: every user mistake is exit status 2 and one line on stderr, no traceback.

Each case runs the real command in-process (``syncintellects.cli.main``) on a small real
input; the message must name the flag, file or field at fault.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from syncintellects.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "traces"


def run_cli(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse (and --version) exit through SystemExit
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(argv, capsys, *needles):
    rc, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture
def files(tmp_path):
    """Bad inputs of every kind, made on the spot."""
    f = {}
    f["dir"] = tmp_path / "a_directory"
    f["dir"].mkdir()
    f["file"] = tmp_path / "a_file.txt"
    f["file"].write_text("not a directory\n")
    f["binary"] = tmp_path / "random.csv"
    f["binary"].write_bytes(bytes(range(256)) * 64)
    f["badgz"] = tmp_path / "broken.csv.gz"
    f["badgz"].write_bytes(gzip.compress(b"arrival_s,prompt_tokens,output_tokens\n0,1,1\n" * 50)[:60])
    f["empty_alpaca"] = tmp_path / "empty.json"
    f["empty_alpaca"].write_text("[]")
    f["empty_csv"] = tmp_path / "empty.csv"
    f["empty_csv"].write_text("")
    f["header_only"] = tmp_path / "header.csv"
    f["header_only"].write_text("arrival_s,prompt_tokens,output_tokens\n")
    f["small"] = tmp_path / "small.csv"
    f["small"].write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i * 0.5},{10 + i},{5 + i}\n"
                                                                              for i in range(20)))
    f["wide"] = tmp_path / "wide.csv"
    f["wide"].write_text(",".join(f"c{i}" for i in range(500)) + "\n" + ",".join("1" * 500) + "\n")
    f["latin1_jsonl"] = tmp_path / "trace.jsonl"
    f["latin1_jsonl"].write_bytes(b'{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"x": "\xe9\xff"}\n')
    prof = json.loads((Path(__file__).parents[1] / "simulator" / "profiles" / "a100-llama-2-7b.json").read_text())
    c = prof["coefficients"]  # every time in it set to 0 ms
    c["fixed_step_ms"] = 0.0
    c["linear_ops"] = [[x, 0.0] for x, _ in c["linear_ops"]]
    for sec in ("decode_attn", "prefill_attn"):
        c[sec] = {k: 0.0 for k in c[sec]}
    if "decode_attn_grid" in c:
        c["decode_attn_grid"]["ms"] = [[0.0] * len(row) for row in c["decode_attn_grid"]["ms"]]
    f["broken_model"] = tmp_path / "broken_model"
    f["broken_model"].mkdir()
    (f["broken_model"] / "model.json").write_text('{"kind": "prompt",\n')  # truncated, as its head
    (f["broken_model"] / "head.npz").write_bytes(b"PK\x03\x04 truncated")
    f["all_bad"] = tmp_path / "all_bad.csv"
    f["all_bad"].write_text("arrival_s,prompt_tokens,output_tokens\n0,-10,5\n1,-3,5\n")
    f["zero_profile"] = tmp_path / "zero_profile.json"
    f["zero_profile"].write_text(json.dumps(prof))
    return f


SIM = ["simulate", "--num-requests", "20", "--quiet"]
RUN = ["run", "--model", "tiny-llama", "--device", "cpu", "--num-requests", "4", "--length-scale", "0.1", "--quiet"]

CASES = [
    # (id, argv with {name} placeholders for the files fixture / "OUT" for a fresh output dir, substrings)
    ("out-is-a-file", SIM + ["--out", "{file}"], ["--out", "a_file.txt", "is a file"]),
    ("out-empty", SIM + ["--out", ""], ["--out", "empty"]),
    ("out-under-a-file", SIM + ["--out", "{file}/sub"], ["--out", "cannot write"]),
    ("trace-is-a-directory", SIM + ["--trace", "{dir}", "--out", "OUT"], ["a_directory", "directory"]),
    ("trace-binary", SIM + ["--trace", "{binary}", "--out", "OUT"], ["random.csv", "not a UTF-8 text file"]),
    ("trace-corrupt-gzip", SIM + ["--trace", "{badgz}", "--out", "OUT"], ["broken.csv.gz", "gzip"]),
    ("trace-empty-alpaca", ["simulate", "--trace", "{empty_alpaca}", "--synthetic-arrivals", "poisson",
                            "--synthetic-rate", "1", "--quiet", "--out", "OUT"], ["empty.json"]),
    ("trace-empty-csv", SIM + ["--trace", "{empty_csv}", "--out", "OUT"], ["empty.csv", "empty"]),
    ("trace-header-only", SIM + ["--trace", "{header_only}", "--out", "OUT"], ["header.csv"]),
    ("trace-not-utf8", SIM + ["--trace", "{latin1_jsonl}", "--out", "OUT"], ["trace.jsonl"]),
    ("trace-unknown-header", SIM + ["--trace", "{wide}", "--out", "OUT"], ["wide.csv", "500 columns", "project"]),
    ("trace-missing", SIM + ["--trace", "no/such/file.csv", "--out", "OUT"], ["no/such/file.csv"]),
    ("param-zero", SIM + ["--param", "max_num_seqs=0", "--out", "OUT"], ["max_num_seqs"]),
    ("param-not-a-number", SIM + ["--param", "max_num_seqs=abc", "--out", "OUT"], ["max_num_seqs", "integer"]),
    ("param-watermark-2", SIM + ["--param", "watermark=2", "--out", "OUT"], ["watermark"]),
    ("param-unknown", SIM + ["--param", "max_seqs=4", "--out", "OUT"], ["max_seqs", "max_num_seqs"]),
    ("param-no-equals", SIM + ["--param", "max_num_seqs", "--out", "OUT"], ["--param", "NAME=VALUE"]),
    ("kv-blocks-0", SIM + ["--kv-blocks", "0", "--out", "OUT"], ["--kv-blocks"]),
    ("num-requests-0", ["simulate", "--num-requests", "0", "--out", "OUT"], ["--num-requests"]),
    ("num-requests-negative", ["simulate", "--num-requests", "-5", "--out", "OUT"], ["--num-requests"]),
    ("rate-0", SIM + ["--rate", "0", "--out", "OUT"], ["--rate"]),
    ("rate-nan", SIM + ["--rate", "nan", "--out", "OUT"], ["--rate"]),
    ("rate-not-a-number", SIM + ["--rate", "fast", "--out", "OUT"], ["--rate", "fast"]),
    ("seed-negative", SIM + ["--seed", "-1", "--out", "OUT"], ["--seed"]),
    ("num-requests-past-the-trace", ["simulate", "--num-requests", "100000", "--out", "OUT"],
     ["--num-requests 100000", "19,366", "--tile"]),
    ("seed-past-the-last-window", ["simulate", "--num-requests", "5000", "--seed", "3", "--out", "OUT"],
     ["--seed 3", "3 window(s)", "--tile"]),
    ("tile-without-num-requests", ["simulate", "--tile", "--trace", "{small}", "--out", "OUT"], ["--tile", "--num-requests"]),
    ("format-on-bundled-trace", SIM + ["--format", "vidur", "--out", "OUT"], ["--format", "azure-conv"]),
    ("format-unknown", SIM + ["--trace", "{small}", "--format", "xls", "--out", "OUT"], ["xls"]),
    ("synthetic-rate-without-arrivals", SIM + ["--synthetic-rate", "2", "--out", "OUT"], ["--synthetic-rate",
                                                                                           "--synthetic-arrivals"]),
    ("unknown-policy", SIM + ["--policy", "fifo", "--out", "OUT"], ["fifo"]),
    ("unknown-predictor", SIM + ["--policy", "sjf", "--predictor", "psychic", "--out", "OUT"], ["psychic"]),
    ("predictor-param-unknown", SIM + ["--policy", "sjf", "--predictor", "prompt", "--predictor-param", "temperature=2",
                                       "--out", "OUT"], ["--predictor-param temperature", "error_model"]),
    ("predictor-param-bad-error-model", SIM + ["--policy", "sjf", "--predictor", "prompt", "--predictor-param",
                                               "error_model=optimistic", "--out", "OUT"],
     ["--predictor-param", "optimistic", "unseen-source", "in-distribution"]),
    ("predictor-param-refresh-0", SIM + ["--policy", "sjf", "--predictor", "progressive", "--predictor-param",
                                         "refresh_every=0", "--out", "OUT"], ["--predictor-param", "refresh_every"]),
    ("predictor-param-no-equals", SIM + ["--policy", "sjf", "--predictor", "noisy", "--predictor-param", "sigma",
                                         "--out", "OUT"], ["--predictor-param", "NAME=VALUE"]),
    ("predictor-param-without-predictor", SIM + ["--predictor-param", "error_model=in-distribution", "--out", "OUT"],
     ["--predictor-param", "--predictor"]),
    ("profile-missing", SIM + ["--profile", "no-such-profile", "--out", "OUT"], ["no-such-profile"]),
    ("profile-all-zero", SIM + ["--profile", "{zero_profile}", "--out", "OUT"], ["zero_profile.json"]),
    ("unknown-flag", SIM + ["--rates", "2", "--out", "OUT"], ["--rates"]),
    ("missing-out", ["simulate"], ["--out"]),
    ("synth-fit-to-without-lognormal", ["trace", "synth", "--rate", "1", "--num-requests", "10", "--seed", "0",
                                        "--fit-to", "azure-code", "--out", "OUT/x.csv"], ["--fit-to", "--lengths lognormal"]),
    ("synth-out-is-a-directory", ["trace", "synth", "--rate", "1", "--num-requests", "10", "--seed", "0",
                                  "--out", "{dir}"], ["--out", "directory"]),
    ("synth-cv-with-poisson", ["trace", "synth", "--rate", "1", "--num-requests", "10", "--seed", "0", "--cv", "2",
                               "--out", "OUT/x.csv"], ["--cv"]),
    ("convert-out-is-a-directory", ["trace", "convert", "azure-code", "--out", "{dir}"], ["--out", "directory"]),
    ("info-missing-file", ["trace", "info", "nothing.csv"], ["nothing.csv"]),
    ("run-temperature-negative", ["run", "--temperature", "-1", "--num-requests", "2", "--out", "OUT"], ["--temperature"]),
    ("run-kv-tokens-0", ["run", "--kv-tokens", "0", "--num-requests", "2", "--out", "OUT"], ["--kv-tokens"]),
    ("validate-tolerance-negative", ["validate", "--profile", "{zero_profile}", "--tolerance", "-1", "--num-requests",
                                     "2", "--out", "OUT"], ["--tolerance"]),
    ("run-bad-device", ["run", "--device", "tpu9", "--num-requests", "2", "--out", "OUT"], ["--device"]),
    # a setting given twice, or to something that does not use it: refused, never the last one or ignored
    ("param-given-twice", SIM + ["--param", "max_num_seqs=8", "--param", "max_num_seqs=16", "--out", "OUT"],
     ["--param max_num_seqs", "given twice"]),
    ("batch-size-and-param", SIM + ["--policy", "static", "--batch-size", "8", "--param", "batch_size=4", "--out", "OUT"],
     ["--batch-size 8", "--param batch_size=4"]),
    ("batch-size-on-continuous", SIM + ["--batch-size", "8", "--out", "OUT"], ["--batch-size", "'continuous'", "max_num_seqs"]),
    ("sweep-serial-workers", ["sweep", "--backend", "serial", "--workers", "4", "--num-requests", "20", "--out", "OUT"],
     ["--workers 4", "--backend serial"]),
    ("synthetic-arrivals-without-rate", SIM + ["--trace", "{small}", "--synthetic-arrivals", "poisson", "--out", "OUT"],
     ["--synthetic-arrivals poisson", "--synthetic-rate"]),
    ("synthetic-rate-negative", ["trace", "info", "{small}", "--synthetic-arrivals", "poisson", "--synthetic-rate", "-2"],
     ["--synthetic-rate", "-2"]),
    ("drop-failed-on-azure", SIM + ["--drop-failed", "--out", "OUT"], ["--drop-failed", "format 'azure'"]),
    ("predictor-param-not-a-number", SIM + ["--policy", "sjf", "--predictor", "noisy", "--predictor-param", "sigma=abc",
                                            "--out", "OUT"], ["--predictor-param sigma", "expected a number"]),
    ("predictor-model-on-oracle", SIM + ["--policy", "sjf", "--predictor", "oracle", "--predictor-model", "prompt-lora",
                                         "--out", "OUT"], ["--predictor-model", "'oracle'"]),
    ("every-row-bad-skipped", SIM[:1] + ["--trace", "{all_bad}", "--skip-bad-rows", "--quiet", "--out", "OUT"],
     ["all_bad.csv", "all 2 row(s) are bad"]),
    ("synth-seed-negative", ["trace", "synth", "--rate", "1", "--num-requests", "10", "--seed", "-3", "--out", "OUT/x.csv"],
     ["--seed", "-3"]),
    ("synth-rate-0", ["trace", "synth", "--rate", "0", "--num-requests", "10", "--seed", "0", "--out", "OUT/x.csv"],
     ["--rate"]),
    ("convert-end-before-start", ["trace", "convert", "{small}", "--start", "5", "--end", "1", "--out", "OUT/x.csv"],
     ["--start", "--end"]),
    ("convert-window-empty", ["trace", "convert", "{small}", "--start", "1e9", "--out", "OUT/x.csv"],
     ["--start/--end", "no request"]),
    ("convert-rate-negative", ["trace", "convert", "{small}", "--rate", "-1", "--out", "OUT/x.csv"], ["--rate", "-1"]),
    ("synthetic-cv-with-poisson", SIM + ["--trace", "{small}", "--synthetic-arrivals", "poisson", "--synthetic-rate", "2",
                                         "--synthetic-cv", "3", "--out", "OUT"], ["--synthetic-cv 3", "gamma"]),
    # the runner's flags: one setting given twice, a flag nothing would use, a profile of another server
    ("run-kv-blocks-and-kv-tokens", RUN + ["--kv-blocks", "10", "--kv-tokens", "4096", "--out", "OUT"],
     ["--kv-blocks 10", "--kv-tokens 4096"]),
    ("run-max-new-tokens-forced", RUN + ["--max-new-tokens", "5", "--out", "OUT"], ["--max-new-tokens", "natural"]),
    ("run-profile-with-kv-tokens", RUN + ["--profile", "a100-llama-2-7b", "--kv-tokens", "4096", "--out", "OUT"],
     ["--profile a100-llama-2-7b", "--kv-tokens"]),
    ("run-profile-of-another-model", RUN + ["--profile", "a100-llama-2-7b", "--out", "OUT"],
     ["--profile a100-llama-2-7b", "'llama-2-7b'", "--model tiny-llama"]),
    ("run-max-context-past-the-model", RUN + ["--max-context", "8192", "--out", "OUT"], ["--max-context 8192", "2048"]),
    ("run-cpu-clock-with-threads", RUN + ["--clock", "cpu", "--threads", "2", "--out", "OUT"], ["--clock cpu", "--threads 2"]),
    ("profile-kv-tokens-and-memory", ["profile", "--quick", "--kv-tokens", "4096", "--memory-gb", "1", "--out", "OUT/p.json"],
     ["--memory-gb", "--kv-tokens"]),
    ("profile-empty-name", ["profile", "--quick", "--name", "", "--out", "OUT/p.json"], ["--name"]),
    ("train-holdout-with-source", ["train-predictor", "--kind", "prompt", "--data", "alpaca-eval", "--holdout", "10",
                                   "--holdout-source", "alpaca-eval", "--out", "OUT"], ["--holdout 10", "--holdout-source"]),
    ("train-max-answers-on-prompt", ["train-predictor", "--kind", "prompt", "--data", "alpaca-eval", "--max-answers", "5",
                                     "--out", "OUT"], ["--max-answers", "--kind progressive"]),
    ("train-out-is-a-file", ["train-predictor", "--kind", "prompt", "--data", "alpaca-eval", "--out", "{file}"],
     ["--out", "a_file.txt", "is a file"]),
    ("evaluate-broken-model", ["evaluate-predictor", "--model", "{broken_model}", "--data", "alpaca-eval", "--out",
                               "OUT/e.json"], ["broken_model", "cannot be read"]),
    ("evaluate-out-is-a-directory", ["evaluate-predictor", "--model", "prompt", "--data", "alpaca-eval", "--out", "{dir}"],
     ["--out", "a_directory", "is a directory"]),
]


@pytest.mark.parametrize("argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistake_is_one_line_and_exit_2(argv, needles, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.replace("OUT", str(out)).format(**{k: str(v) for k, v in files.items()}) for a in argv]
    one_line_error(argv, capsys, *needles)


def test_cuda_device_on_a_machine_without_cuda(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(["run", "--device", "cuda", "--num-requests", "2", "--out", tmp_path / "o"], capsys,
                   "--device cuda", "no CUDA device")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--kv-blocks"):
        main(["simulate", "--kv-blocks", "0", "--out", str(tmp_path / "o"), "--debug"])


def test_ctrl_c_is_exit_130_with_one_line(tmp_path, capsys, monkeypatch):
    import syncintellects.cmd_simulate as cmd

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd, "run_simulation", interrupted)
    rc, _, err = run_cli(["simulate", "--num-requests", "5", "--out", tmp_path / "o"], capsys)
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err


def test_version_and_help_show_defaults(capsys):
    rc, out, _ = run_cli(["--version"], capsys)
    assert rc == 0 and out.startswith("syncintellects ")
    rc, out, _ = run_cli(["simulate", "--help"], capsys)
    assert rc == 0 and "(default: azure-conv)" in out and "(default: continuous)" in out and "(default: 0)" in out
    rc, out, _ = run_cli(["trace", "synth", "--help"], capsys)
    assert rc == 0 and "(default: poisson)" in out  # an option without help text shows its default too


def test_policies_lists_their_params_with_defaults(capsys):
    rc, out, _ = run_cli(["policies"], capsys)
    assert rc == 0
    from syncintellects.spec import policy_parameters

    assert "max_num_seqs=256" in out and "watermark=0.01" in out and "batch_size=16" in out
    assert policy_parameters("srpt")["max_preemptions"] == 1  # a subclass's own fields are listed too
    # and every length predictor with its --predictor-param names, each one taken at its listed default
    from policies.predictors import PREDICTORS, make_predictor
    from syncintellects.spec import predictor_parameters

    assert 'error_model="unseen-source"' in out and "refresh_every=32" in out and "sigma=0.39" in out
    for name in PREDICTORS:
        assert name in out
        for k, v in predictor_parameters(name).items():
            assert make_predictor(name, **{k: v}).name == name


def test_every_command_in_the_readme_parses():
    """The README's commands are the CLI's: each `syncintellects ...` line of its code blocks parses,
    and each subcommand its table names exists."""
    import re
    import shlex

    from syncintellects.cli import build_parser

    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if c.strip().startswith("syncintellects ")]
    assert len(commands) >= 5
    parser = build_parser()
    for c in commands:
        parser.parse_args(shlex.split(c.split("#")[0])[1:])  # argparse exits (SystemExit) on a mismatch
    for row in re.findall(r"^\| `syncintellects ([^`]+)` \|", text, flags=re.M):
        words = row.replace("…", "").split()
        first = words[0]
        assert first in parser._subparsers._group_actions[0].choices, row
        if first == "trace":  # trace list / info / synth / convert
            trace = parser._subparsers._group_actions[0].choices["trace"]
            actions = trace._subparsers._group_actions[0].choices
            assert [w for w in words[1:] if w != "/"] and all(w in actions for w in words[1:] if w != "/"), row


@pytest.mark.parametrize("signame,code,word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_stops_simulate_with_one_line(tmp_path, signame, code, word):
    """A real process: Ctrl-C or SIGTERM during a long simulation ends it at once, one line, 130 / 143."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "syncintellects.cli", "simulate", "--num-requests", "400000",
                             "--tile", "--rate", "50", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # --out is created once the command has started (handlers installed)
    time.sleep(0.3)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [err.strip()] and word in err and "Traceback" not in err


def test_trace_info_and_convert_take_the_synthetic_arrival_flags_as_simulate(tmp_path, capsys):
    text = str(FIXTURES / "alpaca_handwritten.json")
    flags = ["--synthetic-arrivals", "poisson", "--synthetic-rate", "2"]
    rc, out, _ = run_cli(["trace", "info", text, *flags, "--json"], capsys)
    assert rc == 0 and json.loads(out)["rows"] == 3
    rc, _, _ = run_cli(["trace", "convert", text, *flags, "--out", tmp_path / "c.csv"], capsys)
    assert rc == 0
    from traces import load_trace

    converted = load_trace(tmp_path / "c.csv")
    assert main(["simulate", "--trace", text, *flags, "--out", str(tmp_path / "s"), "--quiet"]) == 0
    import polars as pl

    served = pl.read_parquet(tmp_path / "s" / "requests.parquet")["arrival_s"].to_list()
    assert served == converted.arrival_s.tolist()  # the same seed-0 arrivals in all three commands


def test_a_skipped_row_is_one_warning_line_and_a_one_replica_router_is_named(files, tmp_path, capsys):
    """Warnings are one line each, as errors are (no source path or code line); a router with one replica to
    send to runs (every router sends everything there) and says so."""
    bad = tmp_path / "one_bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,-3,5\n2,12,6\n")
    rc, _, err = run_cli(["simulate", "--trace", bad, "--skip-bad-rows", "--quiet", "--out", tmp_path / "a"], capsys)
    assert rc == 0 and err.strip().splitlines() == [
        f"warning: {bad}: skipped 1 bad row(s) of 3; first: {bad}: line 3, column 'prompt_tokens': got '-3', "
        "expected an integer >= 1"]
    rc, _, err = run_cli(SIM + ["--router", "jsq", "--out", tmp_path / "b"], capsys)
    assert rc == 0 and "router 'jsq' with one replica" in err and len(err.strip().splitlines()) == 1
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert any("router 'jsq' with one replica" in w for w in summary["warnings"])


@pytest.mark.parametrize("extra,needle", [(["--num-requests", "0"], "--num-requests"), (["--workers", "0"], "--workers"),
                                          (["--out", "{file}"], "is a file")])
def test_demo_refuses_before_its_banner(extra, needle, files, tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path / "d"), *[a.format(file=files["file"]) for a in extra]]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1
