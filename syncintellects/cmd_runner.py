"""``syncintellects models | profile | run | validate``: the real runner's commands.

torch and transformers are imported inside the handlers: the simulator's commands (and
``models``) work without them.
"""
from __future__ import annotations

import sys

from syncintellects.cmd_simulate import add_run_arguments, print_warnings, spec_from_args, workload_line
from syncintellects.errors import UsageError, check_out_dir, check_out_file

# flag -> (args attribute, smallest accepted value, what is expected); None values are defaults
_MINIMA = (("--threads", "threads", 1, "an integer >= 1"), ("--block-size", "block_size", 1, "an integer >= 1"),
           ("--max-context", "max_context", 2, "an integer >= 2 (tokens)"),
           ("--kv-blocks", "kv_blocks", 1, "an integer >= 1"), ("--kv-tokens", "kv_tokens", 1, "an integer >= 1"),
           ("--max-new-tokens", "max_new_tokens", 1, "an integer >= 1"),
           ("--temperature", "temperature", 0.0, "a number >= 0 (0: greedy)"),
           ("--tolerance", "tolerance", 0.0, "a number >= 0 (a relative error, e.g. 0.1)"),
           ("--memory-gb", "memory_gb", 1e-9, "a number > 0"), ("--step-repeats", "step_repeats", 1, "an integer >= 1"))


def check_runner_args(args) -> None:
    """Refuse runner flags that make no sense (UsageError naming the flag), and a device this machine lacks."""
    import math

    for flag, attr, low, expected in _MINIMA:
        v = getattr(args, attr, None)
        if v is not None and not (math.isfinite(v) and v >= low):
            raise UsageError(f"{flag}: got {v}, expected {expected}")
    if args.dtype is not None and args.dtype not in ("fp32", "fp16", "bf16"):
        raise UsageError(f"--dtype: got {args.dtype!r}, expected fp32, fp16 or bf16")
    # two flags for one setting, or a flag nothing would use: refused, never one of them dropped
    if getattr(args, "kv_blocks", None) is not None and getattr(args, "kv_tokens", None) is not None:
        raise UsageError(f"--kv-blocks {args.kv_blocks} and --kv-tokens {args.kv_tokens}: both size the KV cache; "
                         "give one")
    if getattr(args, "memory_gb", None) is not None and getattr(args, "kv_tokens", None) is not None:
        raise UsageError(f"--memory-gb {args.memory_gb} and --kv-tokens {args.kv_tokens}: both set the profile's "
                         "KV budget; give one")
    if getattr(args, "max_new_tokens", None) is not None and getattr(args, "length_mode", "natural") == "forced":
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: forced lengths (--length-mode forced, the "
                         "default) generate each request's trace length; the cap applies with --length-mode natural")
    if getattr(args, "clock", None) == "cpu" and (getattr(args, "threads", 1) or 1) > 1:
        raise UsageError(f"--clock cpu with --threads {args.threads}: the CPU clock counts the main thread's time "
                         "only, while every thread computes; use --clock wall (or auto)")
    if getattr(args, "name", None) is not None and not str(args.name).strip():
        raise UsageError("--name: empty; give a profile name or omit the flag (default: device-model-dtype)")
    dev = args.device
    if dev != "cpu":
        import torch  # the runner extra; an ImportError is reported as such

        try:
            d = torch.device(dev)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {dev!r}: not a device name; expected cpu, cuda or cuda:N") from None
        if d.type != "cuda":
            raise UsageError(f"--device {dev!r}: the runner supports cpu and cuda devices")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {dev}: torch {torch.__version__} finds no CUDA device on this machine; "
                             f"use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UsageError(f"--device {dev}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")


def _model_arguments(p) -> None:
    p.add_argument("--model", default="tiny-llama", help="named shape (see `syncintellects models`) or a local "
                   "Hugging Face checkpoint directory")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default: fp32 on CPU, fp16 on GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (recorded; 1 is steadiest when the "
                   "machine is shared)")
    p.add_argument("--max-context", type=int, default=None, help="shorten the model context (tokens)")
    p.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    p.add_argument("--model-seed", type=int, default=0, help="seed of a named shape's random weights")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto", help="what measures step time: wall "
                   "time, or the thread's CPU time (auto: cpu on a CPU with --threads 1, else wall)")
    p.add_argument("--step-repeats", type=int, default=None, metavar="K", help="run each step's compute K times "
                   "back to back and count the fastest (a minimum-of-K timer that filters a shared machine's "
                   "interruptions; default 1, and for validate the profile's K); see docs/validation.md")


def _serving_arguments(p) -> None:
    add_run_arguments(p)
    _model_arguments(p)
    p.add_argument("--kv-blocks", type=int, default=None, help="KV cache size in blocks")
    p.add_argument("--kv-tokens", type=int, default=None, help="KV cache size in tokens (CPU default 32768)")
    p.add_argument("--length-mode", choices=("forced", "natural"), default="forced",
                   help="forced: exactly the trace's output lengths (default); natural: stop at EOS or the cap")
    p.add_argument("--max-new-tokens", type=int, default=None, help="natural mode: cap on generated tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sampling, seeded by --seed")
    p.add_argument("--length-scale", type=float, default=1.0, help="multiply prompt and output lengths (fit a long "
                   "trace to a small model)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")


def register(sub) -> None:
    p = sub.add_parser("models", help="list the runner's named model shapes")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="measure step times of a model on this machine; write a simulator profile",
                       description="Measure prefill, decode and mixed step times through the real executor, fit "
                                   "the simulator's step-time model and write a versioned profile JSON.")
    _model_arguments(p)
    p.add_argument("--quick", action="store_true", help="a small grid (CI)")
    p.add_argument("--kv-tokens", type=int, default=None, help="KV budget in tokens written to the profile's memory "
                   "section (CPU default 32768)")
    p.add_argument("--memory-gb", type=float, default=None, help="memory budget instead of --kv-tokens")
    p.add_argument("--name", default=None, help="profile name (default: device-model-dtype)")
    p.add_argument("--out", required=True, help="profile JSON path")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("run", help="serve a trace for real under a policy (same outputs as simulate)",
                       description="Serve a trace with a real model under any policy; writes summary.json, "
                                   "requests.parquet, steps.parquet and config.json to --out.")
    _serving_arguments(p)
    p.add_argument("--profile", default=None, help="size the KV cache from this profile's memory section")
    p.add_argument("--server-time", choices=("clock", "off"), default="clock",
                   help="clock (default): the server's own time between steps (arrivals, the policy's planning) "
                        "advances the run's clock, as on a server whose scheduling does not overlap the device; "
                        "off: measured and reported (summary runner.policy_s) but not on the clock")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="run a trace through the real runner and the calibrated simulator; compare",
                       description="Real vs simulated TTFT, TPOT, E2E latency and throughput; writes "
                                   "validation.json and validation.html to --out; exit status 1 when the error "
                                   "of the mean E2E latency or the throughput exceeds --tolerance.")
    _serving_arguments(p)
    p.add_argument("--profile", required=True, help="profile JSON measured on this machine (syncintellects profile)")
    p.add_argument("--tolerance", type=float, default=0.10, help="largest accepted |relative error|")
    p.add_argument("--probe-every", type=float, default=0.3, metavar="SECONDS",
                   help="time the profile's probe steps every SECONDS of measured run time and price the "
                        "simulator's steps on the machine as it was during the run (0: off); see docs/validation.md")
    p.add_argument("--interleave", type=int, default=3, metavar="SWEEPS",
                   help="measure the profile's grid SWEEPS times in between the real run's steps and calibrate the "
                        "verdict's simulator with that fit (default 3; 0: off, the probe's machine factor instead); "
                        "see docs/validation.md")
    p.add_argument("--real-runs", type=int, default=1, metavar="N",
                   help="run the real side N times and combine them: every step counts its median time over the N "
                        "runs (they must make the same decisions: a burst, e.g. --rate 1e6); see docs/validation.md")
    p.add_argument("--server-time", choices=("clock", "off"), default="off",
                   help="the real run's own time between steps (arrivals, the policy's planning): off (default) "
                        "keeps it off the run's clock, as the simulator models no such time, and reports the "
                        "metrics with it put back (metrics_with_server_time); clock puts it on the clock (then "
                        "metrics_without_server_time); see docs/validation.md")
    p.set_defaults(func=cmd_validate)


def cmd_models(args) -> int:
    from gpu_runner.models import SHAPES, list_models

    for name, note in list_models():
        s = SHAPES[name]
        print(f"{name:<12} {s['num_hidden_layers']:>2} layers x {s['hidden_size']:>4} hidden, {s['num_attention_heads']} "
              f"heads ({s['num_key_value_heads']} KV), context {s['max_position_embeddings']}: {note}")
    print("--model also takes a local Hugging Face checkpoint directory (Llama architecture)")
    return 0


def _load(args):
    from gpu_runner.engine import set_threads
    from gpu_runner.models import load_model

    if args.device == "cpu":
        set_threads(args.threads)
    return load_model(args.model, device=args.device, dtype=args.dtype, seed=args.model_seed,
                      max_context=args.max_context)


def _runner_config(args, kv_blocks=None):
    from gpu_runner.engine import RunnerConfig

    return RunnerConfig(block_size=args.block_size, kv_blocks=args.kv_blocks or kv_blocks, kv_tokens=args.kv_tokens,
                        max_context=args.max_context, length_mode=args.length_mode, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, seed=args.seed, threads=args.threads, clock=args.clock,
                        step_repeats=args.step_repeats or 1, server_time=getattr(args, "server_time", "clock"),
                        progress=not args.quiet)


def cmd_profile(args) -> int:
    from gpu_runner.profiler import build_profile
    from simulator.profile import save_profile

    check_runner_args(args)
    check_out_file(args.out)
    lm = _load(args)
    prof = build_profile(lm, quick=args.quick, block_size=args.block_size, kv_tokens=args.kv_tokens,
                         memory_gb=args.memory_gb, threads=args.threads, name=args.name, progress=not args.quiet,
                         clock=args.clock, step_repeats=args.step_repeats or 1)
    save_profile(prof, args.out)
    if not args.quiet:
        f = prof["fit"]
        print(f"profile {prof['name']}: {len(prof['samples'])} grid points, fit median |error| "
              f"{f['median_abs_rel_error']:.1%} (max {f['max_abs_rel_error']:.1%}); wrote {args.out}")
    return 0


def cmd_run(args) -> int:
    from gpu_runner.engine import serve
    from simulator.metrics import format_summary
    from syncintellects.spec import add_warnings, length_response_model, prepare, seed_warnings

    spec = spec_from_args(args)
    check_runner_args(args)
    check_out_dir(args.out)
    trace, policy, _ = prepare(spec)  # lengths scaled before the policy's predictor sees the trace
    kv_blocks = None
    if args.profile and (args.kv_blocks or args.kv_tokens):
        raise UsageError(f"--profile {args.profile} with --{'kv-blocks' if args.kv_blocks else 'kv-tokens'}: run "
                         "reads only the profile's KV-cache size, which that flag sets instead; give one")
    lm = _load(args)
    if args.profile:
        from simulator.profile import load_profile

        prof = load_profile(args.profile)
        check_profile_matches(prof, lm, args.profile)
        kv_blocks = prof.kv_blocks(args.block_size)
    result = serve(trace, policy, lm, _runner_config(args, kv_blocks), length_response=length_response_model(spec))
    result.config["spec"] = spec.to_dict()
    add_warnings(result.summary, seed_warnings(spec, trace))
    out = result.write(args.out)
    print_warnings(result.summary)
    if not args.quiet:
        print(f"{spec.policy} on {spec.trace} ({workload_line(spec, result.summary)}), real {lm.name} on "
              f"{lm.device} ({lm.dtype}):")
        print(format_summary(result.summary))
        r = result.summary["runner"]
        print(f"  runner: {r['steps']} steps, {r['step_ms_mean']:.2f} ms mean, Python overhead "
              f"{r['python_overhead_ms_per_step']:.3f} ms/step, policy {r['policy_ms_per_plan']:.3f} ms/plan")
        print(f"results in {out}/ (summary.json, requests.parquet, steps.parquet, config.json)")
    return 0


def check_profile_matches(prof, lm, path: str) -> None:
    """A profile measured for another model shape or dtype prices (and sizes) another server: refused."""
    want = prof.data.get("model") or {}
    keys = ("hidden", "n_layers", "n_heads", "n_kv_heads", "intermediate", "vocab")
    diff = [k for k in keys if k in want and k in lm.shape and want[k] != lm.shape[k]]
    if diff:
        raise UsageError(f"--profile {path}: measured for model {want.get('name', '?')!r} "
                         f"({', '.join(f'{k} {want[k]}' for k in diff)}), not --model {lm.name} "
                         f"({', '.join(f'{k} {lm.shape[k]}' for k in diff)}); profile this model first "
                         "(syncintellects profile)")
    dtype = prof.data.get("dtype")
    if dtype is not None and dtype != lm.dtype:
        raise UsageError(f"--profile {path}: measured in {dtype}, the model runs in {lm.dtype} (--dtype); "
                         "give the profile's dtype or profile this one")


def _profile_step_repeats(prof, path: str, given: int | None) -> int:
    """validate times steps as the profile's grid was timed: its K, and a different --step-repeats is refused."""
    k = int((prof.data.get("runner") or {}).get("step_repeats", 1))
    if given is not None and given != k:
        raise UsageError(f"--step-repeats {given}: the profile {path} was measured with {k}; a run compared with "
                         f"it must time its steps the same way (omit the flag, or measure a profile with {given})")
    return k


def cmd_validate(args) -> int:
    from gpu_runner.validate import run_validation

    if not args.probe_every >= 0:
        raise ValueError(f"--probe-every must be >= 0 seconds (0: off), got {args.probe_every}")
    if args.interleave < 0:
        raise UsageError(f"--interleave: got {args.interleave}, expected an integer >= 0 (0: off)")
    if args.real_runs < 1:
        raise UsageError(f"--real-runs: got {args.real_runs}, expected an integer >= 1")
    spec = spec_from_args(args)
    check_runner_args(args)
    check_out_dir(args.out)
    from simulator.profile import load_profile

    prof = load_profile(args.profile)
    args.step_repeats = _profile_step_repeats(prof, args.profile, args.step_repeats)
    lm = _load(args)
    check_profile_matches(prof, lm, args.profile)
    doc, status = run_validation(spec, lm, _runner_config(args), args.profile, args.out,
                                 tolerance=args.tolerance, probe_every_s=args.probe_every,
                                 interleave_sweeps=args.interleave, real_runs=args.real_runs)
    if not args.quiet:
        print(f"{doc['policy']} on {doc['trace']} ({doc['num_requests']} requests), tolerance {args.tolerance:.0%}:")
        print(f"  {'metric':<34} {'real':>10} {'sim':>10} {'error':>8}")
        for name, v in doc["metrics"].items():
            if v["real"] is None or v["sim"] is None:
                print(f"  {name:<34} {'-':>10} {'-':>10}")
                continue
            err = "-" if v["rel_error"] is None else f"{v['rel_error']:+.1%}"
            flag = "  FAIL" if name in doc["failed"] else ""
            print(f"  {name:<34} {v['real']:>10.4g} {v['sim']:>10.4g} {err:>8}{flag}")
        print(f"  verdict on: {doc['verdict_basis']}")
        if doc.get("real_runs"):
            rr = doc["real_runs"]
            print(f"  real side: {rr['n']} runs combined (every step's median time); the runs' own spread "
                  "(max - min) / median: " + ", ".join(f"{k} {v['spread']:.1%}" for k, v in rr.items()
                                                        if isinstance(v, dict) and v.get("spread") is not None))
        st = doc.get("server_time") or {}
        if st.get("total_s") is not None:
            other = st.get("metrics_with_server_time") or st.get("metrics_without_server_time")
            line = (f"  the server's own time between steps: {st['total_s'] * 1e3:.1f} ms over {st['steps']} steps "
                    f"({st['before_last_first_token_s'] * 1e3:.1f} ms before the last first token), "
                    + ("off the real run's clock (the simulator models none)" if st["mode"] == "off" else
                       "on the real run's clock (the simulator models none)"))
            if other:
                line += ("; with it on the clock" if st["mode"] == "off" else "; without it") + ": " + ", ".join(
                    f"{k} {v['rel_error']:+.1%}" for k, v in other.items() if k in doc["gated"] and v["rel_error"] is not None)
            print(line)
        inter = doc.get("interleaved") or {}
        if inter.get("median_ms_vs_stored") is not None:
            print(f"  the machine: the profile's grid points took {inter['median_ms_vs_stored']:.2f}x their time when the "
                  f"profile was measured ({doc.get('profile_created') or 'date not recorded'}; median over points); "
                  "the verdict is priced by the grid re-measured during the run")
        drift, f = doc["replay"]["drift"], (doc["machine_probe"] or {}).get("factor") or 1.0
        if drift is not None:  # beside the verdict, never in it: measured on the very steps being priced
            print(f"  the run's own replay drift (its steps' time / the verdict's price{' x factor' if f != 1 else ''}): "
                  f"{drift / f:.3f}; per step kind: "
                  + ", ".join(f"{k} {v['drift'] / f:.3f}" for k, v in doc["replay"]["by_kind"].items()
                              if v["drift"] is not None))
        noise = doc.get("one_run_out")
        if noise:
            print(f"  each of the {noise['runs']} real runs left out in turn, the error ranges over: "
                  + ", ".join(f"{k} [{v['range'][0]:+.1%}, {v['range'][1]:+.1%}] {v['decided']}"
                              for k, v in noise["by_metric"].items() if v["range"] is not None))
            if noise["verdict"] == "undecided":
                print(f"  inconclusive: one real run more or less flips the verdict on {', '.join(noise['undecided'])} "
                      "(the machine's noise; run again on a quieter machine, or with more --real-runs)")
            elif noise["undecided"]:
                print(f"  the verdict ({noise['verdict']}) holds with any one real run left out, though leaving one out "
                      f"flips {', '.join(noise['undecided'])}")
        if doc["conditioning"]["ill_conditioned"]:
            c = doc["conditioning"]
            print(f"  inconclusive: a {c['eps']:.0%} change of every step time moves "
                  + ", ".join(f"{k} by {c['elasticity'][k] * c['eps']:+.1%}" for k in c["ill_conditioned"])
                  + " in the simulator itself (the schedule changes); see docs/validation.md")
        print(f"wrote {args.out}/validation.json and validation.html")
    if status:  # said with --quiet too: the exit status alone does not say which metric
        print(f"error above tolerance: {', '.join(doc['failed'])}", file=sys.stderr if args.quiet else sys.stdout)
    return status

