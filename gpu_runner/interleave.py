"""The profile's grid measured again, interleaved with a real run: the simulator calibrated on the machine
as it was during that run.

On a shared machine the speed of every step changes by up to 2x within minutes, and not alike for every
shape: in one run (load average 7) decode steps were 2.28x their profile time, prefill-only batches of
16 prompts 1.43x, the probe's four small steps 1.65-2.43x. One machine factor cannot follow that. So
``validate`` times the grid points of the profile (the same grid, the same procedure, the same fit) on
a bench of their own in between the run's steps, paced so that the sweeps spread over the whole run,
and fits a profile to them: the *interleaved profile*, which has seen the machine that the run saw,
shape by shape. The cost model is still on trial: the run's steps are not grid points, and the model
must price them from the fit, as it prices any workload.

Grid points are timed the profiler's way (:func:`gpu_runner.profiler._time_case`, the fastest of the
run's k back-to-back runs of each step's compute; with k >= 2 every step, the run's and the grid's, is
the warm repeat, so the interleaving does not change what the run's steps cost). Kinds the run never
runs are not measured (left-padded groups only once the run pads a group, prefill and mixed points
once it runs a loose chunk): the grid is costly, and a fit without them prices those kinds at 0, which
no step of the run asks for. Interleaved time is off the run's virtual clock.
"""
from __future__ import annotations

import numpy as np

from gpu_runner.fit import fit
from gpu_runner.profiler import FULL, QUICK, Bench, _sample, _time_case, bench_tokens, grid_cases, grid_slots

LOOSE = ("prefill", "mixed")


class Interleaver:
    """``tick(dt, work)`` after every step of the run: times grid points until the share of the grid done
    matches the share of the run done (``expected_steps`` from the simulator); ``finish()`` completes the
    sweeps after the run and fits."""

    def __init__(self, lm, clock, *, sweeps: int, expected_steps: int, step_repeats: int, quick: bool = False,
                 seed: int = 0):
        grid = QUICK if quick else FULL
        tokens = bench_tokens(grid)
        self.slots = grid_slots(grid)
        self.bench = Bench(lm, self.slots, tokens, seed=seed, clock=clock, repeats=step_repeats)
        self.all_cases = grid_cases(lm, grid, tokens)
        self.grid = grid
        self.sweeps = int(sweeps)
        self.expected = max(int(expected_steps), 1)
        self.kinds = {"decode"}
        self.times: dict[tuple, list[float]] = {c: [] for c in self.all_cases}
        self.works: dict[tuple, dict] = {}
        self.steps = 0
        self.interleaved = 0  # grid timings made during the run (the rest: after it)
        self.rewarms = 0  # the run's last step recomputed after grid points, off the clock
        self.busy_s = 0.0
        self.warm: set[tuple] = set()  # cases timed once already: a case's first timing is a discarded warm-up

    def warm_up(self) -> None:
        """Before the run: every decode, prefill and mixed case once, discarded. A fresh process's first steps
        of a shape page-fault their temporaries into the heap (2-3x slower); this warms the heap for the
        run's steps too. Padded cases warm up (their first timing discarded) when the run first pads."""
        for c in self.all_cases:
            if self._group(c) != "padded":
                _time_case(self.bench, c, self.slots)
                self.warm.add(c)
    def _group(self, case) -> str:
        return "padded" if case[0] == "padded" else ("decode" if case[0] == "decode" else "loose")

    def _pending(self) -> list[tuple]:
        """Cases in rotation with fewer than ``sweeps`` timings, the least-timed first (round-robin)."""
        live = [c for c in self.all_cases if self._group(c) in self.kinds and len(self.times[c]) < self.sweeps]
        return sorted(live, key=lambda c: len(self.times[c]))

    def _time_next(self) -> bool:
        todo = self._pending()
        if not todo:
            return False
        case = todo[0]
        t, self.works[case] = _time_case(self.bench, case, self.slots)
        if case not in self.warm:
            self.warm.add(case)
            return self._time_next()
        self.times[case].append(t)
        self.busy_s += t
        return True

    def tick(self, dt: float, work=None, rewarm=None) -> None:
        """After a step of the run: time the grid points now due; then, if any was timed, ``rewarm()`` (the
        run's last step computed again, off the clock) so that the run's next step follows run work, not a
        grid step: a grid step in between slowed the run's next step although it is the fastest of k repeats
        (a 1-row decode step of a validation run: 1.70 ms after grid points, 1.30 ms without interleaving,
        1.29 ms on the bench)."""
        if work is not None:  # (decode rows, chunks, pad) of the step just run: its kinds join the rotation
            _, chunks, pad = work
            if chunks:
                self.kinds.add("padded" if pad else "loose")
        self.steps += 1
        live = [c for c in self.all_cases if self._group(c) in self.kinds]
        target = min(self.steps / self.expected, 1.0) * len(live) * self.sweeps
        done = sum(min(len(self.times[c]), self.sweeps) for c in live)
        timed = 0
        while done < target and self._time_next():
            done += 1
            timed += 1
            self.interleaved += 1
        if timed and rewarm is not None:
            rewarm()
            self.rewarms += 1

    def complete(self) -> None:
        """Time the grid points the run did not reach, up to ``sweeps`` timings each."""
        while self._time_next():
            pass

    def finish(self, others: tuple = ()) -> tuple[dict, dict, list[dict]]:
        """Complete the sweeps, fit; returns (coefficients, fit report, samples). ``others``: interleavers of
        repeated runs of the same workload, whose timings are pooled with these (a point's median over all)."""
        runs = (self, *others)
        for it in runs:
            it.complete()
        times = {c: [t for it in runs for t in it.times[c]] for c in self.all_cases}
        works = {c: next(it.works[c] for it in runs if c in it.works) for c in self.all_cases if times[c]}
        samples = [_sample(c[0], times[c], works[c]["batch"], works[c]["sum_ctx"], works[c]["chunks"],
                           works[c].get("pad", 0))
                   for c in self.all_cases if times[c]]
        coeff, report = fit(samples)
        return coeff, report, samples

    def profile(self, stored, others: tuple = ()) -> dict:
        """The interleaved profile: the stored profile's data with this run's grid samples and their fit
        (pooled with ``others``, the interleavers of repeated runs, when given)."""
        import copy

        coeff, report, samples = self.finish(others)
        runs = (self, *others)
        data = copy.deepcopy(stored.data)
        data.pop("probe", None)
        total = sum(len(v) for it in runs for v in it.times.values())
        data.update(name=f"{stored.name} (grid re-measured interleaved with the run)", coefficients=coeff,
                    samples=samples, fit=report,
                    interleaved={"sweeps": self.sweeps * len(runs), "runs": len(runs),
                                 "kinds": sorted(set().union(*(it.kinds for it in runs))), "points": len(samples),
                                 "timings": total, "timed_during_run": sum(it.interleaved for it in runs),
                                 "rewarms": sum(it.rewarms for it in runs),
                                 "grid_busy_s": sum(it.busy_s for it in runs), "run_steps": self.steps,
                                 "step_repeats": self.bench.ex.repeats,
                                 "median_ms_vs_stored": _ratio_to(stored, samples)})
        return data


def _ratio_to(stored, samples: list[dict]) -> float | None:
    """Median over grid points of (interleaved median / stored median): how the machine moved, per point."""
    ref = {(s["kind"], s["decode_rows"], round(s["sum_ctx"]), tuple(map(tuple, s["chunks"])), s["pad_to"]): s["median_ms"]
           for s in stored.data.get("samples", [])}
    r = [s["median_ms"] / ref[k] for s in samples
         if (k := (s["kind"], s["decode_rows"], round(s["sum_ctx"]), tuple(map(tuple, s["chunks"])), s["pad_to"])) in ref]
    return float(np.median(r)) if r else None
