"""Versioned calibration profiles: the data behind the step-time model.

A profile is a JSON file, not code. It records where its numbers came from (GPU, dtype,
model shape, software versions, date, a derivation note), the raw samples, and the
fitted coefficients of one step-time model::

    step_ms = fixed_step_ms                                     # LM head, sampling, framework
            + linear_ops(N)                                   # all non-attention work for N tokens
            + [B > 0] * (d_step + d_seq * B + d_ctx * sum_K)  # decode attention, B rows, K cached each
            + sum over prefill chunks (p_chunk + p_sq * C**2 + p_ctx * C * K0)

where N = B + (padded) prefill tokens of the step, C = a chunk's new tokens and K0 the
tokens that request already had cached. A left-padded prefill group (static batching; C =
the padded length) may have its own ``prefill_attn.padded_sq_token_ms`` in place of
``p_sq`` (the runner runs it as one masked attention call, not one causal call per chunk),
a chunk on a cached prefix (K0 > 0) its own ``prefill_attn.cached_sq_token_ms`` (the runner
runs it as one masked call too), and a step with both decode rows and prefill chunks may pay ``prefill_attn.mixed_step_ms``
once, ``prefill_attn.mixed_row_ms`` per decode row and ``prefill_attn.mixed_row_ktoken_ms`` per decode
row and 1,000 prompt tokens of the step (measured: such a step costs more than the sum of its parts,
the more so the more decode rows it carries beside the more prompt tokens), and every loose chunk of a
step after its first ``prefill_attn.per_extra_chunk_ms``. ``linear_ops`` is a
piecewise-linear table in N (linear extrapolation past its last point). A profile may carry
the measured decode-attention grid instead of the linear decode term
(``coefficients.decode_attn_grid``: ``batch`` sizes, ``context`` lengths, ``ms[context][batch]``
per step): see :mod:`simulator.cost_model`.

Optional top-level fields: ``tensor_parallel`` (GPUs the model is sharded over; memory
figures are per GPU), ``engine`` (kernel class: ``vllm``, ``hf``, ``runner``), ``source``
(one line for ``syncintellects profiles``) and ``checks``.

The runner's profiler writes profiles in this format; :func:`load_profile` checks it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SCHEMA_VERSION = 1
DEFAULT_PROFILE = "a100-llama-2-7b"
ALIASES = {"a100-llama-2-7b-fp16": "a100-llama-2-7b"}  # the default's name before the zoo

REQUIRED = {
    "schema_version": int,
    "name": str,
    "gpu": dict,
    "model": dict,
    "dtype": str,
    "memory": dict,
    "coefficients": dict,
    "created": str,
    "derivation": str,
}
REQUIRED_MODEL = ("name", "n_layers", "hidden", "n_heads", "n_kv_heads", "intermediate", "vocab", "max_context")
REQUIRED_MEMORY = ("gpu_memory_bytes", "weights_bytes", "kv_bytes_per_token", "gpu_memory_utilization",
                   "activation_reserve_bytes", "block_size")
REQUIRED_COEFF = ("fixed_step_ms", "linear_ops", "decode_attn", "prefill_attn")


class ProfileError(ValueError):
    """A profile file is malformed; the message names the file and field."""


@dataclass(frozen=True)
class Profile:
    data: dict
    path: str

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def coefficients(self) -> dict:
        return self.data["coefficients"]

    @property
    def memory(self) -> dict:
        return self.data["memory"]

    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def tensor_parallel(self) -> int:
        return int(self.data.get("tensor_parallel", 1))

    @property
    def engine(self) -> str:
        return self.data.get("engine", "runner")

    @property
    def floor_ms(self) -> float:
        """The physical floor of a decode step: every weight (per GPU) read once from memory."""
        bw = self.data["gpu"].get("hbm_bandwidth_bytes_per_s")
        return self.memory["weights_bytes"] / bw * 1e3 if bw else 0.0

    def kv_blocks(self, block_size: int | None = None, gpu_memory_utilization: float | None = None) -> int:
        """Number of KV blocks: (memory x utilisation - weights - activation reserve) / block bytes."""
        m = self.memory
        bs = int(block_size or m["block_size"])
        util = float(gpu_memory_utilization if gpu_memory_utilization is not None else m["gpu_memory_utilization"])
        free = m["gpu_memory_bytes"] * util - m["weights_bytes"] - m["activation_reserve_bytes"]
        blocks = int(free // (m["kv_bytes_per_token"] * bs))
        if blocks < 1:
            raise ProfileError(
                f"profile {self.path}: no memory left for the KV cache ({m['gpu_memory_bytes']} B x {util} "
                f"- weights {m['weights_bytes']} B - reserve {m['activation_reserve_bytes']} B)"
            )
        return blocks


def _check(data: dict, path: str) -> None:
    for key, typ in REQUIRED.items():
        if key not in data:
            raise ProfileError(f"profile {path}: missing field {key!r}")
        if not isinstance(data[key], typ):
            raise ProfileError(f"profile {path}: field {key!r} should be {typ.__name__}, got {type(data[key]).__name__}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ProfileError(f"profile {path}: schema_version {data['schema_version']} is not supported (expected {SCHEMA_VERSION})")
    for section, keys in (("model", REQUIRED_MODEL), ("memory", REQUIRED_MEMORY), ("coefficients", REQUIRED_COEFF)):
        for k in keys:
            if k not in data[section]:
                raise ProfileError(f"profile {path}: missing field {section}.{k}")
    coeff = data["coefficients"]
    table = coeff["linear_ops"]
    if not isinstance(table, list) or len(table) < 2 or any(not isinstance(p, list) or len(p) != 2 for p in table):
        raise ProfileError(f"profile {path}: coefficients.linear_ops must be a list of >= 2 [num_tokens, ms] pairs")
    for i, (x, y) in enumerate(table):
        _number(x, f"coefficients.linear_ops[{i}][0] (num_tokens)", path, positive=True)
        _number(y, f"coefficients.linear_ops[{i}][1] (ms)", path)
    xs = [p[0] for p in table]
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ProfileError(f"profile {path}: coefficients.linear_ops num_tokens must be strictly increasing")
    _number(coeff["fixed_step_ms"], "coefficients.fixed_step_ms", path)
    for sec, keys in (("decode_attn", ("per_step_ms", "per_seq_ms", "per_ctx_token_ms")),
                      ("prefill_attn", ("per_chunk_ms", "per_sq_token_ms", "per_ctx_token_ms"))):
        if not isinstance(coeff[sec], dict):
            raise ProfileError(f"profile {path}: coefficients.{sec} must be an object with {', '.join(keys)}")
        for k in keys:
            _number(coeff[sec].get(k), f"coefficients.{sec}.{k}", path)
        for k in (("padded_sq_token_ms", "cached_sq_token_ms", "mixed_step_ms", "mixed_row_ms", "mixed_row_ktoken_ms",
                   "per_extra_chunk_ms")
                  if sec == "prefill_attn" else ()):  # optional
            if k in coeff[sec]:
                _number(coeff[sec][k], f"coefficients.prefill_attn.{k}", path)
    if "decode_attn_grid" in coeff:
        _check_grid(coeff["decode_attn_grid"], path)
    tp = data.get("tensor_parallel", 1)
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ProfileError(f"profile {path}: tensor_parallel must be an integer >= 1, got {tp!r}")
    for k in ("engine", "source"):
        if not isinstance(data.get(k, ""), str):
            raise ProfileError(f"profile {path}: field {k!r} should be str")
    d, grid = coeff["decode_attn"], coeff.get("decode_attn_grid")
    attention_ms = min(min(row) for row in grid["ms"]) if grid else d["per_step_ms"] + d["per_seq_ms"]
    if coeff["fixed_step_ms"] + min(y for _, y in table) + attention_ms <= 0:
        # a decode step would take no time: the simulated clock could not advance
        raise ProfileError(f"profile {path}: the coefficients give a one-row decode step of 0 ms (fixed_step_ms, "
                           f"linear_ops and decode attention are all 0); expected a step time > 0")
    for k in ("gpu_memory_bytes", "kv_bytes_per_token", "gpu_memory_utilization", "block_size"):
        _number(data["memory"][k], f"memory.{k}", path, positive=True)
    for k in ("weights_bytes", "activation_reserve_bytes"):
        _number(data["memory"][k], f"memory.{k}", path)


def _check_grid(g, path: str) -> None:
    f = "coefficients.decode_attn_grid"
    if not isinstance(g, dict) or not all(isinstance(g.get(k), list) for k in ("batch", "context", "ms")):
        raise ProfileError(f"profile {path}: {f} must be an object with lists batch, context, ms")
    for key, positive in (("batch", True), ("context", False)):
        xs = g[key]
        for i, x in enumerate(xs):
            _number(x, f"{f}.{key}[{i}]", path, positive=positive)
        if len(xs) < 2 or any(b <= a for a, b in zip(xs, xs[1:])):
            raise ProfileError(f"profile {path}: {f}.{key} must hold >= 2 strictly increasing values")
    if len(g["ms"]) != len(g["context"]):
        raise ProfileError(f"profile {path}: {f}.ms must have one row per context ({len(g['context'])})")
    for i, row in enumerate(g["ms"]):
        if not isinstance(row, list) or len(row) != len(g["batch"]):
            raise ProfileError(f"profile {path}: {f}.ms[{i}] must have one value per batch size ({len(g['batch'])})")
        for j, v in enumerate(row):
            _number(v, f"{f}.ms[{i}][{j}]", path)


def _number(v, field: str, path: str, positive: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        raise ProfileError(f"profile {path}: {field} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")


def profile_source(name_or_path: str | Path | None = None):
    """``(name, file, bundled)`` of ``--profile``'s value: a bundled profile's name (aliases resolved) and its
    resource, or a profile file's path (which may not exist; :func:`load_profile` says so)."""
    name_or_path = str(name_or_path or DEFAULT_PROFILE)
    name_or_path = ALIASES.get(name_or_path, name_or_path)
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        return name_or_path, p, False
    return name_or_path, resources.files("simulator") / "profiles" / f"{name_or_path}.json", True


def load_profile(name_or_path: str | Path | None = None) -> Profile:
    """Load a bundled profile by name (default A100 / Llama-2-7B) or a profile file by path."""
    name_or_path, p, bundled = profile_source(name_or_path)
    if not bundled:
        if not p.exists():
            raise ProfileError(f"profile file {p} does not exist")
        text, path = p.read_text(), str(p)
    else:
        res = p
        if not res.is_file():
            raise ProfileError(f"unknown profile {name_or_path!r}: `syncintellects profiles` lists the "
                               f"{len(bundled_profiles())} bundled ones (or give a profile .json path)")
        text, path = res.read_text(), f"<bundled {name_or_path}>"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"profile {path}: not valid JSON ({e})") from None
    _check(data, path)
    return Profile(data=data, path=path)


def save_profile(data: dict, path: str | Path) -> None:
    _check(data, str(path))
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def bundled_profiles() -> list[str]:
    d = resources.files("simulator") / "profiles"
    return sorted(f.name[:-5] for f in d.iterdir() if f.name.endswith(".json"))


def profile_rows() -> list[dict]:
    """One row per bundled profile: what ``syncintellects profiles`` lists."""
    rows = []
    for name in bundled_profiles():
        p = load_profile(name)
        aliases = [a for a, n in ALIASES.items() if n == name]
        rows.append({"name": name, "gpu": p.data["gpu"].get("name", "?"), "model": p.model["name"],
                     "tp": p.tensor_parallel, "engine": p.engine, "kv_blocks": p.kv_blocks(),
                     "source": p.data.get("source", ""), "aliases": aliases})
    return rows
