"""The machine's speed during a real run, measured by steps of fixed shapes interleaved with it.

On a shared machine every step of a run can be slower (or faster) than when the profile was
measured: other processes hold the sibling hyperthread, the shared caches, the memory bus.
The thread-CPU-time clock does not see that, and neither does the cost model. A *probe* is a
few steps of fixed shapes (decode, prefill, mixed), timed exactly as the profiler
timed them (:func:`gpu_runner.profiler._time_case`, on a bench of its own, so the run's KV cache
and requests are untouched), every ``every_s`` seconds of the run's measured step time. The
profiler runs the same probe between its grid sweeps. Their time now over their time in the
profile is the machine factor: an estimate of the run's
slowdown that is independent of the run's own steps, so it cannot hide an error of the cost
model (the replay drift of :mod:`gpu_runner.validate` can: it is measured on the very steps
being priced). Probe time is not on the run's virtual clock.
"""
from __future__ import annotations

import numpy as np

# (kind, decode rows, mean context, chunk, chunks or pad): two decode, two prefill and a mixed shape
# of the kinds the profiler measures. The 64-row decode is as large as a run's decode steps: under load,
# large steps were slowed more than the small probes (a run's decode steps by 2.06x, the 16-row probe 1.5x).
PROBE_CASES = (("decode", 16, 384, 0, 0), ("decode", 64, 384, 0, 0), ("prefill", 0, 0, 128, 0),
               ("prefill", 0, 0, 512, 0), ("mixed", 32, 256, 512, 1))


def profile_reference(profile) -> dict[tuple, float] | None:
    """The probe's median time (ms) per case when the profile was measured (None: an older profile)."""
    sec = profile.data.get("probe")
    if not sec:
        return None
    return {tuple(c): float(ms) for c, ms in zip(sec["cases"], sec["median_ms"])}


class Probe:
    """Probe steps interleaved with other work (a real run, or the profiler's grid sweeps).

    ``tick(dt)`` is called with the duration of every step of that work; every ``every_s`` of it the
    probe times each case ``repeats`` times (round-robin) and keeps each case's minimum. The profiler
    runs the same procedure between its grid sweeps and stores the medians of those minima
    (``profile["probe"]``), so a run's factor compares like with like."""

    def __init__(self, lm, clock, every_s: float = 0.3, seed: int = 0, cases=PROBE_CASES, repeats: int = 3,
                 step_repeats: int = 1):
        from gpu_runner.profiler import Bench

        self.cases = [tuple(c) for c in cases]
        slots = max(b + max(n, 1) for _, b, _, _, n in self.cases) + 2
        tokens = max(b * int(k * 1.5 + 64) + c * max(n, 1) for _, b, k, c, n in self.cases) + 4096
        self.bench = Bench(lm, slots, tokens, seed=seed, clock=clock, repeats=step_repeats)
        self.step_repeats = int(step_repeats)
        self.slots = slots
        self.every_s = float(every_s)
        self.repeats = int(repeats)
        self.since = 0.0
        self.times: dict[tuple, list[float]] = {c: [] for c in self.cases}

    def tick(self, dt: float) -> None:
        self.since += dt
        if self.since >= self.every_s:
            self.since = 0.0
            self.measure()

    def measure(self) -> None:
        """``repeats`` sweeps over the cases; each case's minimum is this probe's time for it. The minimum
        of k filters what hits one step and not the next (the run's last giant step evicting the bench
        from the caches, an interrupt, another process's burst) and keeps what lasts (a busy sibling
        hyperthread): single timings varied +-20% between probes here, minima of 3 much less."""
        from gpu_runner.profiler import _time_case

        best = {c: float("inf") for c in self.cases}
        for _ in range(self.repeats):
            for c in self.cases:
                t, _ = _time_case(self.bench, c, self.slots)
                best[c] = min(best[c], t)
        for c in self.cases:
            self.times[c].append(best[c] * 1e3)

    def reference(self) -> dict:
        """The profile's ``probe`` section: the procedure and the median time of every case."""
        return {"cases": [list(c) for c in self.cases], "median_ms": [float(np.median(self.times[c])) for c in self.cases],
                "every_s": self.every_s, "probes": min(len(v) for v in self.times.values()),
                "repeats": self.repeats, "step_repeats": self.step_repeats,
                "procedure": f"gpu_runner/probe.py: the minimum of {self.repeats} round-robin timings of each case "
                             f"(each the fastest of {self.step_repeats} back-to-back runs of its compute), "
                             f"every {self.every_s} s of measured work"}

    def report(self, ref: dict[tuple, float]) -> dict:
        """``factor``: the probes' total time over the same probes' total time in the profile."""
        cases = [c for c in self.cases if c in ref and self.times[c]]
        if not cases:
            return {"factor": None, "probes": 0}
        meas = sum(sum(self.times[c]) for c in cases)
        base = sum(ref[c] * len(self.times[c]) for c in cases)
        per_case = {"/".join(map(str, c)): {"profile_ms": ref[c], "run_median_ms": float(np.median(self.times[c])),
                                            "ratio": float(np.median(self.times[c]) / ref[c])} for c in cases}
        return {"factor": meas / base, "probes": min(len(self.times[c]) for c in cases), "every_s": self.every_s,
                "probe_busy_s": meas / 1e3, "cases": per_case}
