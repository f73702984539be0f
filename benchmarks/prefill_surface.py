"""Measurement (run by hand): how rough is the CPU cost of prefill-only steps, shape by shape?

    python benchmarks/prefill_surface.py [--model tiny-llama] [--sweeps 8] [--out surface.json]

What it answers (docs/validation.md, "What is left"): vllm-v0's prefill-only batches (10-23 whole
prompts filling ~4,000 tokens, then 3-4 long prompts) are priced 3-5% low by the profile's fit,
offline. The decode side got a measured grid (``decode_attn_grid``) when its linear term was off;
would a measured grid of prefill-only steps do the same for prefill?

It times, on the profiler's bench (``gpu_runner.profiler.Bench``, the profile's timer: the fastest of
2 back-to-back runs of each step), in random order each sweep (the first 2 sweeps discarded, medians
of the rest):

* an equal-chunk grid: n chunks x c tokens from an empty cache, n in 1..32, c in 16..1,024, n c <= 4,608;
* 20 unequal prefill-only steps: 16 drawn as vLLM v0 fills a step with whole prompts (lognormal
  sizes, medians 60-300 tokens, sigma 0.9, up to 4,096 tokens; seeded) and 4 of a few long prompts.

It then prints (1) the equal grid's leave-one-out error when each point is interpolated from the
others (linear on a triangulation of (ln n, ln c), in ln time): how smooth the surface is; and (2)
each unequal step against the grid interpolated at its effective shape (n_eff = N^2 / sum c^2
equal chunks of c_eff = sum c^2 / N tokens: the same tokens and the same sum of squares, so the same
linear and quadratic work) and (3) against the profile's own cost model (``gpu_runner.fit``) fitted to
the equal grid alone. Needs the ``runner`` extra (torch) and scipy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
CS = (16, 32, 64, 128, 256, 384, 512, 768, 1024)


def unequal_steps(seed: int = 7) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(16):
        sizes, left, med = [], 4096, (60, 100, 180, 300)[i % 4]
        while True:
            c = int(np.clip(np.rint(np.exp(rng.normal(np.log(med), 0.9))), 8, 1024))
            if c > left:
                break
            sizes.append(c)
            left -= c
        out.append(tuple(sizes))
    return out + [(770, 700, 650, 570), (720, 600, 580), (650, 610), (900, 300, 120, 60, 30)]


def measure(model: str, sweeps: int, seed: int = 0) -> list[dict]:
    import torch
    from tqdm import tqdm

    from gpu_runner.models import load_model
    from gpu_runner.profiler import Bench, _time_case

    torch.set_num_threads(1)
    lm = load_model(model, device="cpu")
    bench = Bench(lm, 200, 200_000, 16, repeats=2)
    grid = [("mixed", 0, 0, c, n) for n in NS for c in CS if n * c <= 4608]
    cases = grid + [("mixed", 0, 0, s, len(s)) for s in unequal_steps()]
    rng = np.random.default_rng(seed)
    times: list[list[float]] = [[] for _ in cases]
    with tqdm(total=sweeps * len(cases), desc="prefill steps", unit="step") as bar:
        for sweep in range(sweeps):
            for j in rng.permutation(len(cases)):
                t, _ = _time_case(bench, cases[j], 200)
                if sweep >= 2:
                    times[j].append(t * 1e3)
                bar.update(1)
    return [{"sizes": list(c[3]) if isinstance(c[3], tuple) else [c[3]] * c[4], "ms": float(np.median(t)),
             "all_ms": [round(x, 4) for x in t], "grid": j < len(grid)} for j, (c, t) in enumerate(zip(cases, times))]


def analyse(samples: list[dict]) -> dict:
    from scipy.interpolate import LinearNDInterpolator

    g = [s for s in samples if s["grid"]]
    pts = np.array([[np.log(len(s["sizes"])), np.log(s["sizes"][0])] for s in g])
    y = np.log([s["ms"] for s in g])
    loo = []
    for i in range(len(g)):
        keep = np.arange(len(g)) != i
        v = LinearNDInterpolator(pts[keep], y[keep])(pts[i:i + 1])[0]
        if np.isfinite(v):
            loo.append(float(np.exp(y[i] - v)))
    f = LinearNDInterpolator(pts, y)
    unequal = []
    for s in samples:
        if s["grid"]:
            continue
        c = np.array(s["sizes"], float)
        big_n, sq = c.sum(), (c * c).sum()
        n_eff, c_eff = big_n * big_n / sq, sq / big_n
        v = f([[np.log(n_eff), np.log(c_eff)]])[0]
        unequal.append({"chunks": len(c), "tokens": int(big_n), "n_eff": round(n_eff, 2), "c_eff": round(c_eff, 1),
                        "ms": round(s["ms"], 3), "ratio": round(float(s["ms"] / np.exp(v)), 3) if np.isfinite(v) else None})
    # (3) the profile's own cost model (gpu_runner.fit) fitted to the equal grid, pricing the unequal steps
    from gpu_runner.fit import fit
    from simulator.cost_model import CostModel
    from simulator.profile import Profile

    def as_sample(s):
        return {"kind": "prefill" if len(s["sizes"]) == 1 else "mixed", "decode_rows": 0, "sum_ctx": 0.0,
                "chunks": [[c, 0] for c in s["sizes"]], "pad_to": 0, "median_ms": s["ms"]}

    coeff, report = fit([as_sample(s) for s in g])
    cost = CostModel(Profile(data={"coefficients": coeff}, path="fit"))
    for u, s in zip(unequal, [s for s in samples if not s["grid"]]):
        u["ratio_fit"] = round(float(s["ms"] / (cost.step_s(0, 0, [(c, 0) for c in s["sizes"]], 0) * 1e3)), 3)
    err = np.abs(np.array(loo) - 1)
    cv = [float(np.std(s["all_ms"]) / np.mean(s["all_ms"])) for s in samples]
    return {"grid_points": len(g), "loo_inside": len(loo), "loo_median_abs": float(np.median(err)),
            "loo_p90_abs": float(np.quantile(err, 0.9)), "loo_max_abs": float(err.max()),
            "median_cv_of_timings": float(np.median(cv)), "fit_median_abs": report["median_abs_rel_error"],
            "fit_max_abs": report["max_abs_rel_error"], "unequal_fit_mean": float(np.mean([u["ratio_fit"] for u in unequal])),
            "unequal": unequal}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--sweeps", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the samples and the analysis as JSON")
    a = ap.parse_args(argv)
    samples = measure(a.model, a.sweeps)
    res = analyse(samples)
    print(f"equal-chunk grid, {res['grid_points']} points: leave-one-out |error| median {res['loo_median_abs']:.3f}, "
          f"p90 {res['loo_p90_abs']:.3f}, max {res['loo_max_abs']:.3f} ({res['loo_inside']} inside the hull); "
          f"median CV of a point's timings {res['median_cv_of_timings']:.3f}")
    for u in res["unequal"]:
        print(f"  {u['chunks']:2d} chunks, {u['tokens']:4d} tokens (n_eff {u['n_eff']:5.2f} x c_eff {u['c_eff']:6.1f}): "
              f"{u['ms']:6.2f} ms, measured / grid {u['ratio'] if u['ratio'] is not None else 'outside the grid'}, "
              f"measured / the profile's model fitted to the grid {u['ratio_fit']}")
    print(f"the profile's model fitted to the equal grid: median |error| {res['fit_median_abs']:.3f} (max "
          f"{res['fit_max_abs']:.3f}) on it; the unequal steps came out {res['unequal_fit_mean']:.3f}x its price on average")
    if a.out:
        Path(a.out).write_text(json.dumps({"samples": samples, "analysis": res}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
