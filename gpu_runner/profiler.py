"""Measure a model's step times on this machine and fit the simulator's step-time model.

Every sample is timed through the real executor (:class:`gpu_runner.executor.RealExecutor`),
so a profile includes exactly the per-step Python work the engine does. Grids:

* decode: batch size x mean context per row; the rows' contexts are spread uniformly over
  [K/2, 3K/2] as in a real batch;
* prefill: chunk length with nothing cached, and chunks on top of a cached prefix;
* padded prefill (static batching): R prompts left-padded to P tokens in one step;
* mixed (continuous batching): decode rows plus one or more prefill chunks in the same step.

Each grid point is the median over repeats after warm-up (see :func:`measure` for the order).
The fit (:mod:`gpu_runner.fit`) is one non-negative least-squares problem over the model of
:mod:`simulator.profile`. The profile records the
raw samples, the fit's errors and where everything came from.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from policies.contract import PrefillChunk, StepPlan
from policies.kv_cache import KVCache
from simulator.metrics import Recorder
from gpu_runner.fit import fit
from gpu_runner.probe import Probe
from simulator.profile import SCHEMA_VERSION
from traces.schema import make_trace

GIB = 1 << 30


@dataclass(frozen=True)
class Grid:
    decode_batch: tuple[int, ...]
    decode_ctx: tuple[int, ...]
    prefill: tuple[int, ...]
    prefill_cached: tuple[tuple[int, int], ...]   # (chunk, cached)
    padded: tuple[tuple[int, int], ...]           # (rows, padded length)
    mixed: tuple[tuple, ...]  # (decode rows, context, chunk, chunks); chunk may be a tuple of sizes (chunks = its length)
    warmup: int
    repeats: int


# Continuous batching with the default 256-sequence limit runs 100+ decode rows on a 32k-token
# cache, often with several chunks admitted in one step (up to 16 when a burst of ~250-token prompts
# fills the 4096-token budget; vllm-v0 runs 10-24 whole prompts alone in one step), static batches pad 4-16 prompts to up to 1024 tokens and length-grouped
# batches of short answers pad 40-100, syncintellects up to 118 of a 150-request burst (one such step takes
# seconds on this CPU): the grid
# reaches there (no extrapolation), with padded groups of several sizes at the same length so that
# the fit can tell the padded attention (r x P^2) from the linear work (r x P).
# A burst's first steps pack prompts of very unequal sizes (the first 24 of azure-conv x 1/4: 23 to 1021
# tokens, sum of squares 1.84M against 0.69M for 24 equal chunks of the same total): with equal-size points
# only, such a step was priced 9% low (the quadratic attention term fitted on single chunks and equal
# chunks), which was the TTFT of the continuous family. Two points with these sizes, one with decode rows.
UNEVEN = (1024, 512, 384, 320, 256, 192, 160, 128, 128, 96, 96, 96, 64, 64, 48, 48, 32, 32, 24, 24)


def burst_points(seed: int, rows: tuple[int, ...], budget: int = 4096) -> tuple[tuple, ...]:
    """Mixed steps as a burst of chat prompts makes them, one per decode-row count in ``rows``: chunk sizes
    drawn lognormal (median 100 tokens, sigma 1.2, clipped to 8-1024) until the step's token budget less the
    decode rows is full (the last chunk cut to fit), beside decode rows whose contexts are drawn lognormal
    (median 120, sigma 1.0, clipped to 4-1030), every row's context given. Seeded: the grid is fixed."""
    rng = np.random.default_rng(seed)
    out = []
    for b in rows:
        ctx = tuple(int(x) for x in np.clip(np.rint(np.exp(rng.normal(np.log(120), 1.0, b))), 4, 1030))
        sizes, left = [], budget - b
        while left > 8:
            c = min(int(np.clip(np.rint(np.exp(rng.normal(np.log(100), 1.2))), 8, 1024)), left)
            sizes.append(c)
            left -= c
        out.append((b, ctx, tuple(sizes), len(sizes)))
    return tuple(out)


# Burst-like steps: 14-36 chunks of long-tailed sizes beside 0-128 decode rows. With the grid's regular points
# only, such steps (held out) were priced 5% low, and so were a real burst's first steps (srpt's and
# continuous's, replayed on the bench in the same session): chunks of unequal sizes cost more than equal ones
# beyond what the quadratic term gives, and no regular point has many of them beside decode rows. Fitted with
# one half of these points, the other half went from 1.053-1.057 to 1.029 and the real bursts' first five steps
# from 1.046-1.061 to 1.018-1.034 (docs/validation.md, "What was mispriced"). Where a model's context is too
# short for a point, grid_cases leaves it out.
BURST = (burst_points(1, (0, 16, 48, 96, 128)) + burst_points(2, (8, 32, 64, 112))
         + burst_points(3, (0, 16, 48, 96, 128)) + burst_points(4, (8, 32, 64, 112)))
FULL = Grid(decode_batch=(1, 2, 4, 8, 16, 32, 64, 128), decode_ctx=(32, 128, 384, 768, 1280),
            prefill=(8, 32, 64, 128, 256, 512, 1024, 1792),
            prefill_cached=((64, 256), (128, 1024), (256, 512), (512, 1024), (1024, 128), (768, 32)),
            padded=((4, 64), (8, 128), (16, 256), (16, 512), (4, 1024), (8, 1024), (12, 768), (16, 768),
                    (16, 1024), (40, 1024), (128, 1024)),
            mixed=((8, 256, 64, 1), (16, 512, 256, 1), (32, 256, 512, 1), (32, 1024, 128, 1), (64, 256, 256, 2),
                   (96, 384, 256, 3), (128, 256, 512, 2), (0, 0, 256, 16), (64, 256, 192, 12), (128, 384, 96, 8),
                   (0, 0, 128, 8), (0, 0, 384, 10), (0, 0, 160, 24), (0, 0, UNEVEN, len(UNEVEN)),
                   (32, 128, UNEVEN, len(UNEVEN)), (64, 256, UNEVEN[2:], len(UNEVEN) - 2),
                   (128, 256, UNEVEN[1:], len(UNEVEN) - 1),
                   # many small chunks (the per-chunk cost apart from the per-token table), and a full token
                   # budget of chunks beside 32-128 decode rows (a burst's mixed steps: N past 4,096)
                   (0, 0, 16, 64), (0, 0, 32, 128), (64, 256, 32, 48), (32, 128, 256, 16), (64, 256, 256, 16),
                   (128, 128, 128, 32), (96, 128, UNEVEN, len(UNEVEN))) + BURST,
            warmup=3, repeats=7)
QUICK = Grid(decode_batch=(1, 4, 16, 32), decode_ctx=(64, 384, 1024), prefill=(16, 128, 512, 1024),
             prefill_cached=((128, 512),), padded=((8, 128),), mixed=((16, 256, 128, 1), (32, 256, 64, 2)),
             warmup=2, repeats=5)


class Bench:
    """A RealExecutor whose requests are placed directly in a chosen state (contexts are never computed:
    timing does not depend on the cache's values, and skipping the prefills keeps profiling quick)."""

    def __init__(self, lm, slots: int, kv_tokens: int, block_size: int = 16, seed: int = 0, clock=None, repeats: int = 1):
        from gpu_runner.executor import RealExecutor

        self.kv = KVCache(max(1, kv_tokens // block_size), block_size)
        trace = make_trace("profile", np.zeros(slots), np.ones(slots, dtype=np.int64), np.ones(slots, dtype=np.int64))
        self.rec = Recorder(trace, self.kv.num_blocks, block_size)
        big = np.full(slots, 1 << 40, dtype=np.int64)
        self.ex = RealExecutor(lm, self.kv, self.rec, np.ones(slots, dtype=np.int64), big, forced=True, seed=seed,
                               repeats=repeats, **({"clock": clock} if clock else {}))
        self.vocab = lm.shape["vocab"]
        self.rng = np.random.default_rng(seed)

    def place(self, r: int, cached: int, to_prefill: int) -> None:
        """Request r holds ``cached`` tokens of K/V and has ``to_prefill`` more (0: it is decoding)."""
        ex = self.ex
        total = cached + to_prefill
        ex.prompt_tokens[r] = total if to_prefill else max(cached - 1, 1)
        gen = 0 if to_prefill else cached + 1 - ex.prompt_tokens[r]
        ex.ctx[r] = self.rng.integers(1000, min(self.vocab, 30000), size=total + 1).tolist()[: ex.prompt_tokens[r] + gen]
        self.rec.generated[r] = gen
        ex.pending[r] = to_prefill
        ex.cached[r] = cached
        ex.started[r] = True
        ex.remaining[r] = 1 << 40
        if not self.kv.allocate(r, total):
            raise ValueError(f"profiling grid point needs {total} tokens of KV; raise --kv-tokens")
        ex.pool.ensure(r, cached)

    def clear(self) -> None:
        for r in list(self.kv._slot):
            self.kv.free(r)
            self.ex.pool.release(r)

    def time_plan(self, plan: StepPlan) -> list[float]:
        ex = self.ex
        before = len(ex.step_s)
        ex.run(plan, 0.0, float("inf"))
        return ex.step_s[before:]


def _spread(b: int, k: int) -> list[int]:
    """Contexts of ``b`` rows with mean ``k``, spread over [k/2, 3k/2] as in a real batch."""
    return [k] if b == 1 else np.rint(np.linspace(k * 0.5, k * 1.5, b)).astype(int).tolist()


def _time_case(bench: Bench, case: tuple, slots: int) -> tuple[float, dict]:
    """Time one step of a grid point (requests placed, one plan run, requests cleared)."""
    kind, b, k, c, pad = case
    if kind == "decode":
        ctx = _spread(b, k)
        for r in range(b):
            bench.place(r, ctx[r], 0)
        # decode runs repeat a batch step after step: time the second step of a two-step run
        plan = StepPlan(decode=tuple(range(b)), max_steps=2, wake_on_arrival=False)
        work = dict(batch=b, sum_ctx=sum(ctx) + b, chunks=[])
    elif kind == "padded":
        for r in range(b):
            bench.place(r, 0, pad)
        plan = StepPlan(prefill=tuple(PrefillChunk(r, pad) for r in range(b)), prefill_pad_to=pad)
        work = dict(batch=0, sum_ctx=0, chunks=[(pad, 0)] * b, pad=pad)
    else:  # prefill (pad = 0, one chunk on a cached prefix of k) or mixed (pad = number of chunks; c: their
        # size, or a tuple of unequal sizes; context: the rows' mean, or a tuple of every row's context)
        ctx = list(k) if isinstance(k, tuple) else _spread(b, k) if b else []
        for r in range(b):
            bench.place(r, ctx[r], 0)
        k0 = k if kind == "prefill" else 0
        sizes = list(c) if isinstance(c, tuple) else [c] * max(pad, 1)
        ids = [slots - 1 - j for j in range(len(sizes))]
        for r, size in zip(ids, sizes):
            bench.place(r, k0, size)
        plan = StepPlan(decode=tuple(range(b)), prefill=tuple(PrefillChunk(r, size) for r, size in zip(ids, sizes)))
        work = dict(batch=b, sum_ctx=sum(ctx), chunks=[(size, k0) for size in sizes])
    t = bench.time_plan(plan)[-1]
    bench.clear()
    return t, work


def grid_slots(grid: Grid) -> int:
    return max(max(grid.decode_batch), max(r for r, _ in grid.padded), max(b + n for b, _, _, n in grid.mixed)) + 2


def grid_cases(lm, grid: Grid, kv_tokens: int) -> list[tuple]:
    """The grid's points that fit the model's context and the bench's KV, as (kind, rows, context, chunk, pad)."""
    max_ctx = lm.shape["max_context"]
    cases = []
    for b in grid.decode_batch:
        for k in grid.decode_ctx:
            if k * 1.5 + 2 < max_ctx and b * (k * 1.5 + 64) <= kv_tokens:
                cases.append(("decode", b, k, 0, 0))
    cases += [("prefill", 0, 0, c, 0) for c in grid.prefill if c < max_ctx]
    cases += [("prefill", 0, k0, c, 0) for c, k0 in grid.prefill_cached if c + k0 < max_ctx]
    cases += [("padded", r, 0, p, p) for r, p in grid.padded if p < max_ctx]
    cases += [("mixed", b, k, c, n) for b, k, c, n in grid.mixed
              if (max(k, default=0) if isinstance(k, tuple) else k * 1.5) + max(c if isinstance(c, tuple) else (c,)) < max_ctx]
    return cases


def bench_tokens(grid: Grid) -> int:
    return max(max(grid.decode_batch) * int(max(grid.decode_ctx) * 1.5 + 64), max(r * p for r, p in grid.padded),
               4096) + 4096


def measure(lm, grid: Grid, kv_tokens: int, block_size: int = 16, progress: bool = True, clock=None,
            rounds: int = 1, probe=None, step_repeats: int = 1) -> list[dict]:
    """Time every grid point; returns raw samples (all timings in ms, and their median).

    The grid is swept round-robin, one step per point per sweep (``warmup`` discarded sweeps, then
    ``repeats x rounds`` measured ones): every measured step follows a step of another shape, as in
    a real run where batches change from step to step, rather than a warm repeat of itself (which
    was measured ~10-20% faster on CPU); and a point's median spans the whole profiling time, so
    background load that comes and goes on a shared machine weighs on every point alike."""
    slots = grid_slots(grid)
    bench = Bench(lm, slots, kv_tokens, block_size, clock=clock, repeats=step_repeats)
    cases = grid_cases(lm, grid, kv_tokens)
    times: list[list[float]] = [[] for _ in cases]
    works: list[dict] = [{} for _ in cases]
    sweeps = grid.warmup + grid.repeats * rounds
    bar = tqdm(total=len(cases) * sweeps, desc="profile", unit="step", disable=not progress)
    for sweep in range(sweeps):
        for j, case in enumerate(cases):
            t, works[j] = _time_case(bench, case, slots)
            if sweep >= grid.warmup:
                times[j].append(t)
                if probe is not None:  # the run-time probe's reference, measured as a run measures it
                    probe.tick(t)
            bar.update(1)
    bar.close()
    return [_sample(case[0], t, w["batch"], w["sum_ctx"], w["chunks"], w.get("pad", 0))
            for case, t, w in zip(cases, times, works)]


def _describe_mixed(mixed) -> str:
    """The mixed points as (decode rows, context, chunk, chunks), a point with every row's context given
    (burst_points) as (rows, 'drawn', chunks) so that the derivation stays readable."""
    plain = [m for m in mixed if not isinstance(m[1], tuple)]
    drawn = [(m[0], "drawn", m[3]) for m in mixed if isinstance(m[1], tuple)]
    return f"{plain}" + (f" and {len(drawn)} burst-like points (burst_points) {drawn}" if drawn else "")


def _sample(kind, times, batch, sum_ctx, chunks, pad=0) -> dict:
    ms = [round(t * 1e3, 5) for t in times]
    return {"kind": kind, "decode_rows": int(batch), "sum_ctx": float(sum_ctx),
            "chunks": [[int(c), int(k)] for c, k in chunks], "pad_to": int(pad),
            "ms": ms, "median_ms": float(np.median(ms))}


def device_info(lm, threads: int | None) -> dict:
    if str(lm.device).startswith("cuda"):
        import torch

        p = torch.cuda.get_device_properties(torch.device(lm.device))
        return {"name": p.name, "memory_bytes": int(p.total_memory), "device": str(lm.device)}
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return {"name": f"CPU {name}", "memory_bytes": None, "device": "cpu", "torch_threads": threads,
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}


def memory_section(lm, block_size: int, kv_tokens: int | None, memory_gb: float | None) -> dict:
    """KV budget: ``kv_tokens`` exactly (CPU default), a memory size, or the GPU's memory."""
    bpt = lm.kv_bytes_per_token
    weights = lm.weights_bytes
    if kv_tokens is not None or (memory_gb is None and not str(lm.device).startswith("cuda")):
        tokens = int(kv_tokens or 32768)
        return {"gpu_memory_bytes": weights + tokens * bpt, "gpu_memory_utilization": 1.0, "weights_bytes": weights,
                "activation_reserve_bytes": 0, "kv_bytes_per_token": bpt, "block_size": block_size,
                "budget": f"--kv-tokens {tokens}"}
    if memory_gb is not None:
        return {"gpu_memory_bytes": int(memory_gb * GIB), "gpu_memory_utilization": 0.9, "weights_bytes": weights,
                "activation_reserve_bytes": 0, "kv_bytes_per_token": bpt, "block_size": block_size,
                "budget": f"--memory-gb {memory_gb}"}
    import torch

    total = torch.cuda.get_device_properties(torch.device(lm.device)).total_memory
    return {"gpu_memory_bytes": int(total), "gpu_memory_utilization": 0.9, "weights_bytes": weights,
            "activation_reserve_bytes": 2 * GIB, "kv_bytes_per_token": bpt, "block_size": block_size,
            "budget": "device memory x 0.9 - weights - 2 GiB"}


def build_profile(lm, *, quick: bool = False, block_size: int = 16, kv_tokens: int | None = None,
                  memory_gb: float | None = None, threads: int | None = 1, name: str | None = None,
                  progress: bool = True, grid: Grid | None = None, clock: str = "auto", rounds: int | None = None,
                  step_repeats: int = 1) -> dict:
    """Measure, fit and return a profile dict in the simulator's schema (save with ``save_profile``)."""
    import torch
    import transformers

    from gpu_runner.engine import set_threads, steady_allocator, step_clock

    threads = set_threads(threads) if lm.device == "cpu" else None
    steady = steady_allocator()
    clock_kind, clock_fn = step_clock(clock, lm.device, threads)
    grid = grid or (QUICK if quick else FULL)
    memory = memory_section(lm, block_size, kv_tokens, memory_gb)
    tokens = bench_tokens(grid)
    # With the fastest of k runs per timing (k > 1), one round of sweeps costs as much as the three of k = 1,
    # and each probe times every case once (the run's steps are single fastest-of-k timings too).
    rounds = rounds or (1 if quick or step_repeats > 1 else 3)
    probe = Probe(lm, clock_fn, every_s=0.1 if quick else 0.5, repeats=1 if step_repeats > 1 else 3,
                  step_repeats=step_repeats)
    samples = measure(lm, grid, tokens, block_size, progress, clock_fn, rounds, probe, step_repeats)
    if not probe.times[probe.cases[0]]:
        probe.measure()
    coeff, report = fit(samples)
    dev = device_info(lm, threads)
    model = dict(lm.shape)
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name or f"{dev['device'].split(':')[0]}-{lm.name}-{lm.dtype}",
        "gpu": dev,
        "model": model,
        "dtype": lm.dtype,
        "memory": memory,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "created": created,
        "runner": {"torch_threads": threads, "block_size": block_size, "grid": "quick" if quick else "full",
                   "warmup_sweeps": grid.warmup, "measured_sweeps": grid.repeats * rounds, "clock": clock_kind,
                   "steady_allocator": steady, "step_repeats": step_repeats,
                   "timer": f"{clock_fn.__name__} around each executor step "
                            "(pack + forward + sampling + bookkeeping)"},
        "fit": report,
        "probe": probe.reference(),
        "derivation": (
            f"Measured by gpu_runner/profiler.py on {dev['name']} ({lm.dtype}, torch threads {threads}): decode steps "
            f"over batch {list(grid.decode_batch)} x context {list(grid.decode_ctx)}, prefill chunks "
            f"{list(grid.prefill)} (and on cached prefixes {list(grid.prefill_cached)}), padded prefill "
            f"{list(grid.padded)}, mixed steps {_describe_mixed(grid.mixed)}; grid swept round-robin one step per point, "
            f"{grid.warmup} warm-up sweeps then {grid.repeats * rounds} measured, each timing the fastest of "
            f"{step_repeats} back-to-back runs of the step's compute; medians. Coefficients: one "
            f"non-negative least-squares fit weighted by "
            f"relative error; linear_ops knots at the measured token counts, fixed_step_ms 0 (the table holds "
            f"the constant). Fit: median |relative error| {report['median_abs_rel_error']:.3f}, "
            f"max {report['max_abs_rel_error']:.3f}. Memory: {memory['budget']}."),
        "coefficients": coeff,
        "samples": samples,
    }
