"""Sweeps: many simulations in parallel, one flat result row per run.

A sweep is a list of :class:`~syncintellects.spec.RunSpec` (usually the cartesian product
of a base spec and a grid). Runs execute in worker processes on this machine
(``backend="local"``) or as tasks on a Ray cluster (``backend="ray"``, when one machine
is not enough); the rows come back in spec order whatever the completion order, so the
same sweep always writes the same ``results.parquet`` (all but ``sim_wall_s``, the wall-clock
seconds each run took, kept as a measurement).
"""
from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from multiprocessing import get_context
from pathlib import Path

import polars as pl
from tqdm import tqdm

from syncintellects.spec import RunSpec, run_simulation

SPEC_FIELDS = tuple(f.name for f in fields(RunSpec))
BACKENDS = ("local", "serial", "ray")


def expand(base: RunSpec, grid: dict[str, list]) -> list[RunSpec]:
    """Cartesian product of ``grid`` (RunSpec field -> values) over ``base``, in a stable order."""
    for key in grid:
        if key not in SPEC_FIELDS:
            raise ValueError(f"sweep grid: unknown field {key!r}; RunSpec fields are {', '.join(SPEC_FIELDS)}")
        if not grid[key]:
            raise ValueError(f"sweep grid: field {key!r} has no values")
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


def run_one(spec: RunSpec, runs_dir: str | None = None, index: int = 0) -> dict:
    """One simulation -> one flat row (spec fields + summary figures)."""
    result = run_simulation(spec)
    if runs_dir is not None:
        result.write(Path(runs_dir) / f"{index:04d}")
    row = spec.to_dict()
    for k in ("policy_params", "trace_options"):  # nested settings as JSON text columns
        row[k] = json.dumps(row[k], sort_keys=True)
    row["run_index"] = index
    summary = dict(result.summary)
    summary.pop("reject_reasons", None)
    row.update(flatten(summary))
    return row


def run_sweep(specs: list[RunSpec], *, backend: str = "local", workers: int | None = None, out: str | Path | None = None,
              keep_runs: bool = False, progress: bool = True, ray_address: str | None = None) -> pl.DataFrame:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sweep backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not specs:
        raise ValueError("the sweep has no runs")
    runs_dir = str(Path(out) / "runs") if (out is not None and keep_runs) else None
    bar = tqdm(total=len(specs), desc="sweep", unit="run", disable=not progress)
    rows: list[dict | None] = [None] * len(specs)
    if backend == "serial" or (backend == "local" and (workers or os.cpu_count() or 1) == 1):
        for i, s in enumerate(specs):
            rows[i] = run_one(s, runs_dir, i)
            bar.update()
    elif backend == "local":
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, s, runs_dir, i): i for i, s in enumerate(specs)}
            for fut in as_completed(futures):
                rows[futures[fut]] = fut.result()
                bar.update()
    else:
        rows = _run_ray(specs, runs_dir, bar, ray_address)
    bar.close()
    df = pl.DataFrame(rows, infer_schema_length=None)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df.write_parquet(out / "results.parquet", statistics=False)
        (out / "sweep.json").write_text(json.dumps({"backend": backend, "runs": [s.to_dict() for s in specs]},
                                                   indent=1, sort_keys=True) + "\n")
    return df


def _run_ray(specs, runs_dir, bar, address):
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install -e '.[ray]' (or use --backend local)") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(run_one)
    pending = {remote.remote(s, runs_dir, i): i for i, s in enumerate(specs)}
    rows: list[dict | None] = [None] * len(specs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            rows[pending.pop(ref)] = ray.get(ref)
            bar.update()
    return rows
