"""Capacity search: the highest offered rate at which SLO attainment stays at or above a target.

For each policy and each seed, a *chain* of probes brackets and then bisects the rate:
start at ``start_rate``; double while attainment >= target (halve while below) until one
rate passes and a higher one fails; then bisect until the bracket is within ``tolerance``
(relative to the passing rate). The capacity of a chain is its highest passing rate. A
policy's capacity is the mean over its seeds, with the spread (min, max, standard
deviation) saying how confident the figure is.

A probe is one simulation (the run spec with ``rate`` and ``seed`` set); chains advance
in parallel, one probe per chain at a time. Each finished probe is written at once to
``OUT/probes/<key>.json`` (atomically) and never rerun: re-running the same search into
the same ``OUT`` reuses them (so Ctrl-C loses only the probes in flight); a different
search into the same ``OUT`` is refused (``fresh=True`` starts over).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from syncintellects.spec import RunSpec, run_simulation

MIN_RATE, MAX_RATE = 1e-3, 1e5  # a chain that leaves this range reports 0 / a lower bound


def round_rate(r: float) -> float:
    """Probe rates with 6 significant digits, so a resumed search asks for the very same probes."""
    return float(f"{r:.6g}")


@dataclass
class Chain:
    """One policy and seed: bracket, then bisect the rate."""

    policy: str
    seed: int
    target: float
    tolerance: float
    start: float
    lo: float | None = None      # highest rate that passed
    hi: float | None = None      # lowest rate that failed
    lo_attainment: float | None = None
    probes: list = field(default_factory=list)  # (rate, attainment) in probe order

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the chain is done."""
        lo, hi = self.lo, self.hi
        if lo is None and hi is None:
            return round_rate(self.start)
        if lo is None:
            return None if hi <= MIN_RATE else round_rate(max(hi / 2, MIN_RATE))
        if hi is None:
            return None if lo >= MAX_RATE else round_rate(min(lo * 2, MAX_RATE))
        if hi - lo <= self.tolerance * lo:
            return None
        mid = round_rate((lo + hi) / 2)
        return None if mid in (lo, hi) else mid

    def record(self, rate: float, attainment: float) -> None:
        self.probes.append((rate, attainment))
        if attainment >= self.target:
            if self.lo is None or rate > self.lo:
                self.lo, self.lo_attainment = rate, attainment
        elif self.hi is None or rate < self.hi:
            self.hi = rate

    @property
    def capacity(self) -> float:
        return self.lo if self.lo is not None else 0.0


def probe_key(policy: str, seed: int, rate: float) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in policy)
    return f"{safe}__seed{seed}__rate{rate:.6g}"


def run_probe(job: tuple) -> dict:
    """One probe (in a worker): simulate, write OUT/probes/<key>.json atomically, return its figures."""
    spec, path = job
    result = run_simulation(spec)
    s, arr = result.summary, result.requests["arrival_s"]
    rec = {"policy": spec.policy, "seed": spec.seed, "rate": spec.rate, "slo_attainment": s["slo_attainment"],
           "goodput_requests_per_s": s["goodput_requests_per_s"], "num_requests": s["num_requests"],
           "num_rejected": s["num_rejected"], "ttft_s_p99": s["ttft_s"]["p99"], "tpot_s_mean": s["tpot_s"]["mean"],
           "realised_rate_requests_per_s": (len(arr) - 1) / (arr.max() - arr.min()) if len(arr) > 1 else None}
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return rec


def _worker_init() -> None:
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not a multiprocessing semaphore, which a terminated worker would leak
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process decides; it terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _prepare_out(out: Path, record: dict, fresh: bool, inputs: dict[str, str] | None = None) -> Path:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a directory")
    spec_file = out / "capacity_search.json"
    if fresh and out.exists():
        shutil.rmtree(out / "probes", ignore_errors=True)
        spec_file.unlink(missing_ok=True)
    probes = out / "probes"
    try:
        probes.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if spec_file.exists() and spec_file.read_text() != text:
        raise ValueError(f"--out {out} holds a different capacity search (see {spec_file}); "
                         f"use another --out or --fresh to start over")
    inputs_file = out / "capacity_inputs.json"  # the content of the files its probes read (syncintellects.inputs)
    if fresh:
        inputs_file.unlink(missing_ok=True)
    if inputs is not None:
        from syncintellects.inputs import check_unchanged

        if inputs_file.exists():  # older searches have none to check
            check_unchanged(json.loads(inputs_file.read_text()), inputs, f"--out {out}")
        inputs_file.write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    spec_file.write_text(text)
    return probes


def search(base: RunSpec, policies: list[str], seeds: list[int], *, target: float, out: str | Path,
           tolerance: float = 0.02, start_rate: float = 1.0, workers: int = 1, fresh: bool = False,
           progress=None, backend: str = "local", ray_address: str | None = None) -> list[dict]:
    """Run the capacity search; returns (and writes to OUT/capacity.json) one record per policy."""
    if not base.slo:
        raise ValueError("capacity search needs --slo")
    if not 0 < target <= 1:
        raise ValueError(f"--target must be in (0, 1], got {target}")
    if not 0 < tolerance < 1:
        raise ValueError(f"--tolerance must be in (0, 1), got {tolerance}")
    if not start_rate > 0:
        raise ValueError(f"--start-rate must be > 0, got {start_rate}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if backend not in ("local", "ray"):
        raise ValueError(f"--backend must be local or ray, got {backend!r}")
    out = Path(out)
    record = {"base": base.with_(rate=None, seed=0, policy="").key_dict(), "policies": policies, "seeds": seeds,
              "target": target, "tolerance": tolerance, "start_rate": start_rate}
    from syncintellects.spec import build_policy, load_spec_trace

    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seed: expected distinct integers >= 0, got {seeds}")
    for p in policies:  # every arm is checked before the first probe runs
        spec = base.with_(policy=p, rate=start_rate, num_requests=min(base.num_requests or 2, 2))
        build_policy(spec, load_spec_trace(spec))
    load_spec_trace(base.with_(policy=policies[0], rate=start_rate, seed=max(seeds)))  # the last seed's requests exist
    from syncintellects.inputs import fingerprints

    probes_dir = _prepare_out(out, record, fresh, fingerprints([base.with_(policy=p) for p in policies]))
    chains = [Chain(p, s, target, tolerance, start_rate) for p in policies for s in seeds]
    _drive(chains, base, probes_dir, workers, progress, _ray_remote(ray_address) if backend == "ray" else None)
    results = summarize_chains(chains, policies, target, tolerance, base.slo)
    (out / "capacity.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


def _ray_remote(address: str | None):
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install -e '.[ray]' (or use --backend local)") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    return ray.remote(run_probe)


def _drive(chains: list[Chain], base: RunSpec, probes_dir: Path, workers: int, progress, remote=None) -> None:
    """Advance every chain until done: cached probes are read, missing ones run (in parallel: local
    processes, or Ray tasks when ``remote`` is given)."""
    done_q: queue.Queue = queue.Queue()
    pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init) if workers > 1 and remote is None else None
    refs: dict = {}  # Ray object ref -> chain index
    in_flight: dict[int, float] = {}
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    finished = False
    try:
        while True:
            for i, ch in enumerate(chains):
                while i not in in_flight:
                    rate = ch.next_rate()
                    if rate is None:
                        break
                    path = probes_dir / f"{probe_key(ch.policy, ch.seed, rate)}.json"
                    if path.exists():
                        ch.record(rate, json.loads(path.read_text())["slo_attainment"])
                        continue
                    job = (base.with_(policy=ch.policy, seed=ch.seed, rate=rate), str(path))
                    in_flight[i] = rate
                    if remote is not None:
                        refs[remote.remote(job)] = i
                    elif pool is None:
                        done_q.put((i, run_probe(job)))
                    else:
                        pool.apply_async(run_probe, (job,), callback=lambda r, i=i: done_q.put((i, r)),
                                         error_callback=lambda e, i=i: done_q.put((i, e)))
                    break
            if not in_flight:
                break
            while True:
                if refs:
                    i, res = _ray_next(refs)
                    if i is not None:
                        break
                    continue
                try:
                    i, res = done_q.get(timeout=0.2)
                    break
                except queue.Empty:
                    continue
            if isinstance(res, BaseException):
                raise res
            rate = in_flight.pop(i)
            chains[i].record(rate, res["slo_attainment"])
            if progress:
                progress(chains[i], rate, res)
        finished = True
    finally:
        if refs:  # interrupted: stop the probes in flight
            import ray

            for ref in refs:
                ray.cancel(ref, force=True)
        if pool is not None:
            if finished:
                pool.close()
            else:
                pool.terminate()
            pool.join()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _ray_next(refs: dict):
    import ray

    done, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
    if not done:
        return None, None
    i = refs.pop(done[0])
    try:
        return i, ray.get(done[0])
    except Exception as e:  # the probe's own error, re-raised by the caller
        return i, getattr(e, "cause", None) or e


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the finished probes are kept); exit status 143."""

    exit_status = 128 + signal.SIGTERM


def _raise_interrupt(signum, frame):
    raise Terminated()


def summarize_chains(chains: list[Chain], policies: list[str], target: float, tolerance: float, slo: str) -> list[dict]:
    out = []
    for p in policies:
        mine = sorted((c for c in chains if c.policy == p), key=lambda c: c.seed)
        caps = [c.capacity for c in mine]
        att = [c.lo_attainment for c in mine if c.lo_attainment is not None]
        mean = sum(caps) / len(caps)
        std = math.sqrt(sum((c - mean) ** 2 for c in caps) / (len(caps) - 1)) if len(caps) > 1 else 0.0
        out.append({
            "policy": p, "slo": slo, "target": target, "tolerance": tolerance,
            "capacity_requests_per_s": mean,
            "attainment_at_capacity": sum(att) / len(att) if att else None,
            "capacity_min": min(caps), "capacity_max": max(caps), "capacity_std": std,
            "capacity_is_lower_bound": any(c.hi is None for c in mine),
            "seeds": [{"seed": c.seed, "capacity_requests_per_s": c.capacity, "attainment_at_capacity": c.lo_attainment,
                       "lowest_failing_rate": c.hi, "probes": [list(x) for x in c.probes]} for c in mine],
        })
    return out
