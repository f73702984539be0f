"""Sweeps: many simulations in parallel, one flat result row per run, resumable.

A sweep is a list of :class:`~syncintellects.spec.RunSpec` (usually the cartesian product
of a base spec and a grid). Runs execute in worker processes on this machine
(``backend="local"``), in this process (``"serial"``) or as tasks on a Ray cluster
(``"ray"``). With an output directory ``OUT``:

- every spec is checked before the first run (a bad arm stops the sweep with nothing run);
- ``OUT/sweep.json`` records the sweep; a different sweep into the same ``OUT`` is refused
  (``fresh=True`` removes the old runs first), and so is a resume after an input the runs read
  (a trace file, a profile, a predictor model; bundled ones too) changed content
  (:mod:`syncintellects.inputs`);
- each finished run is written at once to ``OUT/runs/<run key>/`` (``summary.json`` last,
  atomically), so a rerun of the same sweep runs only what is missing, after a crash, a
  ``kill -9`` or a Ctrl-C;
- ``keep_runs`` is not part of a run's key: it changes no figure of a run (the same spec
  gives the same summary byte for byte), only which files are kept. A resume with
  ``keep_runs`` reruns each done run that lacks its ``requests.parquet`` / ``steps.parquet``
  (so every run it reports has them); a resume without it leaves the tables of earlier runs
  where they are;
- ``results.parquet`` is rebuilt from the completed runs, in spec order, so the same sweep
  always writes the same table (all but ``sim_wall_s``, the wall-clock seconds of each run).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import fields
from pathlib import Path

import polars as pl
from tqdm import tqdm

from syncintellects.spec import RunSpec, prepare, run_simulation
from syncintellects.errors import check_out_dir
from syncintellects.workers import parallel, write_atomic

SPEC_FIELDS = tuple(f.name for f in fields(RunSpec))
BACKENDS = ("local", "serial", "ray")
SWEEP_FILE = "sweep.json"
TABLES = ("requests.parquet", "steps.parquet")  # what keep_runs keeps besides summary.json and config.json


def expand(base: RunSpec, grid: dict[str, list]) -> list[RunSpec]:
    """Cartesian product of ``grid`` (RunSpec field -> values) over ``base``, in a stable order."""
    for key in grid:
        if key not in SPEC_FIELDS:
            raise ValueError(f"sweep grid: unknown field {key!r}; RunSpec fields are {', '.join(SPEC_FIELDS)}")
        if not isinstance(grid[key], (list, tuple)) or not grid[key]:
            raise ValueError(f"sweep grid: field {key!r} needs a non-empty list of values")
    keys = list(grid)
    return [base.with_(**dict(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))]


def flatten(summary: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in summary.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "_"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[name] = v
    return out


def run_key(spec: RunSpec) -> str:
    """A directory name that is a function of the spec alone: readable parts and a short hash."""
    d = spec.key_dict()
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]
    rate = "trace" if spec.rate is None else f"{spec.rate:g}"
    policy = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(spec.policy))[:40]
    return f"{policy}_r{rate}_s{spec.seed}_{digest}"


def describe(spec: RunSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.to_dict().items()
                     if v not in (None, {}, ()) and v != getattr(RunSpec, k, object()))


def check_spec(spec: RunSpec) -> None:
    """Build everything a run needs (trace selection, policy, predictor, profile) without running it;
    a ValueError names the arm."""
    from simulator.profile import load_profile

    try:  # prepare() checks every field first (spec.check_spec), then reads the trace and builds the policy
        load_profile(spec.profile)
        prepare(spec)
    except (ValueError, TypeError, KeyError, FileNotFoundError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"sweep arm ({describe(spec) or 'defaults'}): {msg}; nothing was run") from None


def row_of(spec: RunSpec, key: str, index: int, summary: dict) -> dict:
    row = spec.to_dict()
    for k in ("policy_params", "predictor_params", "trace_options"):  # nested settings as JSON text columns
        row[k] = json.dumps(row[k], sort_keys=True)
    row["run_index"] = index
    row["run_key"] = key
    summary = dict(summary)
    summary.pop("reject_reasons", None)
    warnings = summary.pop("warnings", None)
    row.update(flatten(summary))
    if isinstance(warnings, list):
        row["warnings"] = "; ".join(map(str, warnings))
    return row


def execute(job: tuple[int, RunSpec, bool]) -> tuple[int, dict | None, str | None]:
    """One run in a worker: ``(index, {file name: bytes}, None)``, or ``(index, None, error)``.
    The files are the run's ``summary.json`` and ``config.json`` (and with ``keep_runs`` its
    ``requests.parquet`` / ``steps.parquet``), serialised exactly as ``simulate`` writes them."""
    index, spec, keep_runs = job
    try:
        result = run_simulation(spec)
    except (ValueError, FileNotFoundError) as e:
        return index, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    except Exception:  # a bug: keep the worker's traceback
        return index, None, traceback.format_exc()
    with tempfile.TemporaryDirectory(prefix="sweep-run-") as tmp:
        result.write(tmp)
        names = ("summary.json", "config.json") + (TABLES if keep_runs else ())
        files = {n: (Path(tmp) / n).read_bytes() for n in names if (Path(tmp) / n).exists()}
    return index, files, None


class RunStore:
    """``OUT/sweep.json`` and ``OUT/runs/<key>/``: what is done, and writing what gets done."""

    def __init__(self, out: str | Path, specs: list[RunSpec], keys: list[str], fresh: bool):
        self.out = check_out_dir(out)
        self.runs = self.out / "runs"
        from syncintellects.inputs import check_unchanged, fingerprints

        inputs = fingerprints(specs)
        record = {"version": 1, "runs": [{"key": k, "spec": s.to_dict()} for k, s in zip(keys, specs)],
                  "inputs": inputs}
        text = json.dumps(record, indent=1, sort_keys=True, default=str) + "\n"
        old_file = self.out / SWEEP_FILE
        self.fresh = fresh
        if fresh:
            pass
        elif old_file.exists():
            try:
                old = json.loads(old_file.read_text())
                old_keys = [r["key"] for r in old["runs"]]
            except (ValueError, KeyError, TypeError):
                old, old_keys = {}, None
            if old_keys != keys:
                common = len(set(old_keys or ()) & set(keys))
                raise ValueError(f"--out {self.out} holds a different sweep ({len(old_keys or ())} runs, {common} in "
                                 f"common with this one); use another --out, or --fresh to delete its runs")
            check_unchanged(old.get("inputs"), inputs, f"--out {self.out}")  # older sweeps have none to check
        elif self.runs.exists() or (self.out / "results.parquet").exists():
            raise ValueError(f"--out {self.out} holds results of an earlier sweep that this one cannot check "
                             f"(no {SWEEP_FILE}); use another --out, or --fresh to delete them")
        self.record_text = text

    def begin(self) -> None:
        """Record the sweep in ``OUT`` (after every arm passed its check); ``fresh``: remove the old runs first."""
        if self.fresh:
            for name in ("runs", "results.parquet", "dashboard.html", SWEEP_FILE):
                p = self.out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        self.runs.mkdir(exist_ok=True)
        write_atomic(self.out / SWEEP_FILE, self.record_text)

    def summary(self, key: str, keep_runs: bool = False) -> dict | None:
        """The finished run's summary, or None (an unfinished run's directory is removed; with
        ``keep_runs``, so is a finished run's that lacks its tables: it is run again)."""
        d = self.runs / key
        tables = not keep_runs or all((d / n).exists() for n in TABLES)
        if (d / "summary.json").exists() and tables:
            return json.loads((d / "summary.json").read_text())
        if d.exists():
            shutil.rmtree(d)
        return None

    def write(self, key: str, files: dict[str, bytes]) -> None:
        d = self.runs / key
        d.mkdir(exist_ok=True)
        for name, data in files.items():
            if name != "summary.json":
                (d / name).write_bytes(data)
        write_atomic(d / "summary.json", files["summary.json"])  # last: its presence means "done"


def run_sweep(specs: list[RunSpec], *, backend: str = "local", workers: int | None = None, out: str | Path | None = None,
              keep_runs: bool = False, fresh: bool = False, progress: bool = True,
              ray_address: str | None = None) -> pl.DataFrame:
    """Run every spec not already done in ``out``; return (and write) the table of all completed runs.

    An exception (including :class:`~syncintellects.workers.Interrupted`) stops the workers at
    once; the runs finished before it stay in ``out`` and ``results.parquet`` is rebuilt from them.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown sweep backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not specs:
        raise ValueError("the sweep has no runs")
    keys = [run_key(s) for s in specs]
    if len(set(keys)) < len(keys):
        dup = next(s for s, k in zip(specs, keys) if keys.count(k) > 1)
        raise ValueError(f"the sweep lists the same run twice ({describe(dup)}); remove the repeated value")
    if backend == "ray" and ray_address:
        check_ray_address(ray_address)
    store = RunStore(out, specs, keys, fresh) if out is not None else None
    for spec in specs:
        check_spec(spec)
    summaries: dict[int, dict] = {}
    if store is not None:
        store.begin()
        for i, k in enumerate(keys):
            s = store.summary(k, keep_runs)
            if s is not None:
                summaries[i] = s
    todo = [i for i in range(len(specs)) if i not in summaries]
    if summaries and progress:
        print(f"resuming: {len(summaries)} of {len(specs)} runs already done in {store.out}", file=sys.stderr)
    bar = tqdm(total=len(specs), initial=len(summaries), desc="sweep", unit="run", disable=not progress)
    jobs = [(i, specs[i], keep_runs) for i in todo]
    if backend == "ray":
        results = _run_ray(jobs, ray_address)
    else:
        n = 1 if backend == "serial" else (workers or os.cpu_count() or 1)
        results = parallel(execute, jobs, n)
    try:
        for i, files, error in results:
            if error is not None:
                head = error if "\n" not in error.strip() else error.strip().splitlines()[-1]
                if error.startswith(("ValueError", "FileNotFoundError")):
                    raise ValueError(f"run {keys[i]} failed: {head}")
                raise RuntimeError(f"run {keys[i]} failed in its worker:\n{error}")
            if store is not None:
                store.write(keys[i], files)
            summaries[i] = json.loads(files["summary.json"])
            bar.update()
    finally:
        results.close()
        bar.close()
        df = table(specs, keys, summaries)
        if store is not None:
            df.write_parquet(store.out / ".results.parquet.tmp", statistics=False)
            os.replace(store.out / ".results.parquet.tmp", store.out / "results.parquet")
    return df


def table(specs: list[RunSpec], keys: list[str], summaries: dict[int, dict]) -> pl.DataFrame:
    rows = [row_of(specs[i], keys[i], i, summaries[i]) for i in sorted(summaries)]
    if not rows:
        return pl.DataFrame({"run_index": [], "run_key": []}, schema={"run_index": pl.Int64, "run_key": pl.Utf8})
    return pl.DataFrame(rows, infer_schema_length=None)


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """Fail within seconds, with one line, when nothing answers at a Ray address (``ray.init`` would wait minutes)."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: expected HOST:PORT (or ray://HOST:PORT, auto, local)")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ValueError(f"--ray-address {address}: nothing answers there ({e.strerror or e})") from None


def _run_ray(jobs, address):
    """Yield results as Ray tasks finish; closing the generator cancels the rest."""
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install -e '.[ray]' (or use --backend local)") from None
    import logging
    import signal
    import threading

    started = not ray.is_initialized()
    main = threading.current_thread() is threading.main_thread()
    ours = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
    for s, h in ours.items():  # Ray installs its own handlers; Ctrl-C / SIGTERM must still stop the sweep cleanly
        signal.signal(s, h)
    remote = ray.remote(execute)
    pending = [remote.remote(job) for job in jobs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started and pending:
            ray.shutdown()
