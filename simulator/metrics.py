"""Run records and metrics, one module for every engine.

An engine fills a :class:`Recorder` (per-request and per-step records); after the run
:func:`summarize` computes the summary from those records alone, so a simulated run and
a real run are scored by the same code and can be compared column by column.

Per-step records are stored per *segment*: a run of consecutive steps with the same
batch (``num_steps`` > 1 only for decode-only steps), with the segment's start and end
time, batch size (decode rows + prefill chunks), padded rows, prefill tokens (padded), useful
output tokens made (decode rows and prefills that completed), and the KV blocks in use at its end (the segment's
maximum, since decode only grows the cache).
"""
from __future__ import annotations

import copy
import json
import math
from array import array
from pathlib import Path

import numpy as np
import polars as pl

from simulator.served_load import load_warnings, offered_rate, reject_reason_counts
from simulator.step_records import CHUNK, Spill, StepRecords, StepTotals

NAN = float("nan")
# (recorder column, steps.parquet column, dtype)
STEP_COLUMNS = (("seg_start", "start_s", np.float64), ("seg_end", "end_s", np.float64),
                ("seg_steps", "num_steps", np.int64), ("seg_batch", "batch_size", np.int64),
                ("seg_padded", "padded_rows", np.int64), ("seg_prefill_tokens", "prefill_tokens", np.int64),
                ("seg_output_tokens", "output_tokens", np.int64), ("seg_kv_blocks", "kv_blocks_used", np.int64))
_SEGMENT_COLUMNS = tuple(attr for attr, _, _ in STEP_COLUMNS)


class Recorder:
    def __init__(self, trace, kv_blocks: int, block_size: int):
        n = len(trace)
        self.trace = trace
        self.kv_blocks = kv_blocks
        self.block_size = block_size
        self.admitted_s = np.full(n, NAN)
        self.first_token_s = np.full(n, NAN)
        self.last_token_s = np.full(n, NAN)
        self.finish_s = np.full(n, NAN)
        self.output_tokens = np.zeros(n, dtype=np.int64)  # tokens the request was to produce (after capping/control)
        self.generated = np.zeros(n, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.output_capped = np.zeros(n, dtype=bool)
        self.qos = np.ones(n)
        self.target_tokens = np.zeros(n, dtype=np.int64)  # 0: no length directive
        self.instruction_tokens = np.zeros(n, dtype=np.int64)  # prompt tokens the length instruction added
        self.predicted_tokens = np.full(n, NAN)
        self.instruction: dict[int, str] = {}
        self.reject_reason: dict[int, str] = {}
        self.released = np.zeros(n, dtype=bool)
        # segment columns: typed arrays (8 bytes a value, not a Python object each), so a run's
        # per-step records take 64 bytes per segment
        self.seg_start = array("d")
        self.seg_end = array("d")
        self.seg_steps = array("q")
        self.seg_batch = array("q")
        self.seg_padded = array("q")
        self.seg_prefill_tokens = array("q")
        self.seg_output_tokens = array("q")
        self.seg_kv_blocks = array("q")
        self.spill: Spill | None = None  # set: every CHUNK segments go to a part file (simulator/step_records.py)

    def replica_copy(self, kv_blocks: int) -> "Recorder":
        """A recorder for one replica of a cluster: the per-request arrays are this one's (each
        request lives on one replica), the per-step records its own."""
        rec = copy.copy(self)
        rec.kv_blocks = kv_blocks
        for name in _SEGMENT_COLUMNS:
            setattr(rec, name, array(getattr(self, name).typecode))
        rec.spill = None
        return rec

    def segment(self, start: float, end: float, steps: int, batch: int, padded: int, prefill_tokens: int,
                output_tokens: int, kv_blocks: int) -> None:
        self.seg_start.append(start)
        self.seg_end.append(end)
        self.seg_steps.append(steps)
        self.seg_batch.append(batch)
        self.seg_padded.append(padded)
        self.seg_prefill_tokens.append(prefill_tokens)
        self.seg_output_tokens.append(output_tokens)
        self.seg_kv_blocks.append(kv_blocks)
        if self.spill is not None and len(self.seg_start) >= CHUNK:
            self.flush_steps()

    def record_predictions(self, policy) -> None:
        """Policies that predict lengths expose their first prediction per request
        (``initial_predictions``): it goes into the records for prediction-error metrics."""
        for r, v in getattr(policy, "initial_predictions", {}).items():
            self.predicted_tokens[r] = v

    def flush_steps(self) -> None:
        """Write the segments held to the next part file and let go of them."""
        self.spill.write(self.steps_frame())
        for name in _SEGMENT_COLUMNS:
            setattr(self, name, array(getattr(self, name).typecode))

    def step_piece(self) -> tuple:
        """After the run: (this recorder's per-step table or part files, its totals)."""
        if self.spill is not None and self.spill.parts:
            if len(self.seg_start):
                self.flush_steps()
            return list(self.spill.parts), self.spill.totals
        frame = self.steps_frame()
        return frame, StepTotals.of(frame)

    # -- tables ------------------------------------------------------------------
    def requests_frame(self) -> pl.DataFrame:
        t = self.trace
        n = len(t)
        rejected = np.zeros(n, dtype=bool)
        reasons = [None] * n
        for i, why in self.reject_reason.items():
            rejected[i] = True
            reasons[i] = why
        return pl.DataFrame({
            "request_id": t.request_id,
            "arrival_s": t.arrival_s,
            "admitted_s": self.admitted_s,
            "first_token_s": self.first_token_s,
            "last_token_s": self.last_token_s,
            "finish_s": self.finish_s,
            "prompt_tokens": t.prompt_tokens,
            "trace_output_tokens": t.output_tokens,
            "output_tokens": self.output_tokens,
            "generated_tokens": self.generated,
            "output_capped": self.output_capped,
            "preemptions": self.preemptions,
            "predicted_tokens": self.predicted_tokens,
            "target_tokens": self.target_tokens,
            "instruction_tokens": self.instruction_tokens,
            "instruction": pl.Series([self.instruction.get(i) for i in range(n)], dtype=pl.Utf8),
            "qos": self.qos,
            "rejected": rejected,
            "reject_reason": pl.Series(reasons, dtype=pl.Utf8),
        }).pipe(with_latency_columns)

    def steps_frame(self) -> pl.DataFrame:
        return pl.DataFrame({col: np.asarray(getattr(self, attr), dtype=dtype) for attr, col, dtype in STEP_COLUMNS})


def with_latency_columns(requests: pl.DataFrame) -> pl.DataFrame:
    """The per-request latencies, from the timestamps: E2E, TTFT, queueing, TPOT, normalized latency."""
    return requests.with_columns(
        e2e_latency_s=pl.col("finish_s") - pl.col("arrival_s"),
        ttft_s=pl.col("first_token_s") - pl.col("arrival_s"),
        queue_s=pl.col("admitted_s") - pl.col("arrival_s"),
        tpot_s=pl.when(pl.col("generated_tokens") > 1)
        .then((pl.col("last_token_s") - pl.col("first_token_s")) / (pl.col("generated_tokens") - 1))
        .otherwise(None),
    ).with_columns(
        normalized_latency_s=pl.col("e2e_latency_s") / pl.col("generated_tokens"),
    )


_SUMMARY_COLUMNS = ("rejected", "admitted_s", "finish_s", "prompt_tokens", "output_tokens", "generated_tokens",
                    "predicted_tokens", "target_tokens", "qos", "e2e_latency_s", "ttft_s", "tpot_s",
                    "normalized_latency_s", "queue_s")


def _stats(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {
        "mean": float(x.mean()),
        "p50": float(np.percentile(x, 50)),
        "p90": float(np.percentile(x, 90)),
        "p99": float(np.percentile(x, 99)),
    }


def summarize(requests: pl.DataFrame, steps: pl.DataFrame | StepTotals, kv_blocks: int) -> dict:
    """The run summary, from the per-request table and the per-step table (or its totals) only."""
    t = steps if isinstance(steps, StepTotals) else StepTotals.of(steps)
    done = (requests.select(_SUMMARY_COLUMNS)  # only what the figures need: a million-row copy is not small
            .filter(~pl.col("rejected") & pl.col("finish_s").is_not_null() & pl.col("finish_s").is_not_nan()))
    n_fin = done.height
    out_tokens = int(done["generated_tokens"].sum()) if n_fin else 0
    if n_fin:
        t0 = float(requests["arrival_s"].min())
        t1 = float(done["finish_s"].max())
        span = max(t1 - t0, 1e-12)
    else:
        span = NAN
    busy, step_count, rows, padded = t.busy_s, t.steps, t.rows, t.padded
    kv_util = t.kv_block_s / max(t.dur_s, 1e-12) / kv_blocks if t.rows_in_table else 0.0
    col = lambda name: done[name].cast(pl.Float64).to_numpy() if n_fin else np.array([])
    qos = col("qos")
    summary = {
        "num_requests": requests.height,
        "num_finished": n_fin,
        "num_rejected": int(requests["rejected"].sum()),
        "num_output_capped": int(requests["output_capped"].sum()),
        "output_tokens": out_tokens,
        "prompt_tokens": int(done["prompt_tokens"].sum()) if n_fin else 0,
        "makespan_s": span,
        "throughput_requests_per_s": n_fin / span if n_fin else 0.0,
        "throughput_output_tokens_per_s": out_tokens / span if n_fin else 0.0,
        "e2e_latency_s": _stats(col("e2e_latency_s")),
        "ttft_s": _stats(col("ttft_s")),
        "tpot_s": _stats(col("tpot_s")),
        "normalized_latency_s": _stats(col("normalized_latency_s")),
        "queue_s": _stats(col("queue_s")),
        "preemptions": int(requests["preemptions"].sum()),
        "gpu_busy_fraction": busy / span if n_fin else 0.0,
        "num_steps": step_count,
        "mean_batch_size": rows / step_count if step_count else 0.0,
        "padding_waste": padded / rows if rows else 0.0,
        "kv_utilization_mean": kv_util,
        "kv_blocks_peak": t.kv_peak,
        "kv_blocks_capacity": kv_blocks,
        "qos_mean": float(qos.mean()) if len(qos) else None,
        "qos_p10": float(np.percentile(qos, 10)) if len(qos) else None,
    }
    summary.update(_prediction_and_batch_figures(done))
    if requests.height and requests["rejected"].any():
        summary["reject_reasons"] = reject_reason_counts(requests.filter(pl.col("rejected"))["reject_reason"])
    summary["offered_rate_requests_per_s"] = offered_rate(requests["arrival_s"].to_numpy())
    summary["warnings"] = load_warnings(summary)  # simulator/served_load.py
    return summary


def _prediction_and_batch_figures(done: pl.DataFrame) -> dict:
    """Predictor error, overruns, QoS spread and per-batch padding (for batch-at-a-time policies)."""
    out: dict = {}
    pred = done.filter(pl.col("predicted_tokens").is_not_nan())
    if pred.height:
        err = (pred["predicted_tokens"] - pred["output_tokens"]).to_numpy()
        out["prediction_mae_tokens"] = float(np.abs(err).mean())
        out["prediction_overrun_fraction"] = float((err < 0).mean())  # the answer ran past its first prediction
    out["controlled_fraction"] = float((done["target_tokens"] > 0).mean()) if done.height else 0.0
    if done.height:
        out["qos_p50"] = float(done["qos"].median())
    # A batch of a static policy = the requests prefilled in one step and released together.
    batches = (done.group_by(["admitted_s", "finish_s"], maintain_order=True)  # stable order: same sums every run
               .agg(pl.len().alias("n"), pl.col("generated_tokens").sum().alias("made"),
                    pl.col("generated_tokens").max().alias("longest"))
               .filter(pl.col("n") > 1))
    # Always present (null stats when no two requests shared a batch), so a summary's keys do not
    # depend on whether two requests happened to start and end together.
    waste = (1.0 - batches["made"] / (batches["n"] * batches["longest"])).to_numpy()
    out["batch_padding_waste"] = _stats(waste)
    out["num_batches"] = batches.height
    return out


def _clean(obj):
    """JSON-safe copy: NaN/inf become null so files are valid JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class RunResult:
    """A run's tables, summary and config. ``steps`` may be held as :class:`StepRecords` (part files
    of a run that streamed its per-step records); reading ``result.steps`` then loads the table."""

    def __init__(self, requests: pl.DataFrame, steps: pl.DataFrame | StepRecords, summary: dict, config: dict):
        self.requests, self.steps, self.summary, self.config = requests, steps, summary, config

    @property
    def steps(self) -> pl.DataFrame:
        return self._steps.frame() if isinstance(self._steps, StepRecords) else self._steps

    @steps.setter
    def steps(self, value) -> None:
        self._steps = value

    @property
    def num_segments(self) -> int:
        """Rows of the per-step table, without loading it."""
        return self._steps.height  # StepRecords and a DataFrame both know it

    def write(self, out_dir: str | Path) -> Path:
        """Write requests.parquet, steps.parquet, summary.json and config.json (deterministic bytes)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.requests.write_parquet(out / "requests.parquet", statistics=False)
        steps = self._steps
        if not isinstance(steps, StepRecords):
            steps = StepRecords([steps], [StepTotals(rows_in_table=steps.height)], replica_column=False)
        steps.write(out / "steps.parquet")
        (out / "summary.json").write_text(json.dumps(_clean(self.summary), indent=2, sort_keys=True) + "\n")
        (out / "config.json").write_text(json.dumps(_clean(self.config), indent=2, sort_keys=True) + "\n")
        return out


def format_summary(s: dict) -> str:
    """A human-readable table of the main figures."""
    def row(label, d, scale=1.0, unit="s"):
        if not d or d.get("mean") is None:
            return f"  {label:<22} -"
        return (f"  {label:<22} mean {d['mean'] * scale:9.3f}  p50 {d['p50'] * scale:9.3f}  "
                f"p90 {d['p90'] * scale:9.3f}  p99 {d['p99'] * scale:9.3f} {unit}")
    lines = [
        f"  requests               {s['num_requests']} ({s['num_finished']} finished, {s['num_rejected']} rejected, "
        f"{s.get('num_output_capped', 0)} capped at the model context)",
        f"  throughput             {s['throughput_requests_per_s']:.3f} req/s, {s['throughput_output_tokens_per_s']:.1f} output tok/s",
        row("end-to-end latency", s["e2e_latency_s"]),
        row("time to first token", s["ttft_s"]),
        row("time per output token", s["tpot_s"], 1000.0, "ms"),
        f"  GPU busy {s['gpu_busy_fraction']:.1%}, mean batch {s['mean_batch_size']:.1f}, padding waste "
        f"{s['padding_waste']:.1%}, KV utilisation {s['kv_utilization_mean']:.1%}, preemptions {s['preemptions']}",
    ]
    if s.get("qos_mean") is not None:
        lines.append(f"  QoS (share of natural answer kept) mean {s['qos_mean']:.3f}")
    if "slo_attainment" in s:
        lines.append(f"  SLO {s['slo']}: attainment {s['slo_attainment']:.1%} of offered requests, "
                     f"goodput {s['goodput_requests_per_s']:.3f} req/s")
    if "replicas" in s:
        lines.append(f"  {len(s['replicas'])} replicas ({s.get('router')}): requests "
                     f"{[r['num_requests'] for r in s['replicas']]}, GPU busy "
                     f"{[round(r['gpu_busy_fraction'], 2) for r in s['replicas']]}")
    if "sim_wall_s" in s:
        lines.append(f"  simulation wall time   {s['sim_wall_s']:.2f} s")
    return "\n".join(lines)
