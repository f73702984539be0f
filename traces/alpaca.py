"""Alpaca-style JSON: prompts and responses as text, token counts from a WordPiece tokenizer.

Accepted: a JSON list (optionally ``.json.gz``) of objects with ``instruction``, optional
``input`` and ``output`` — the Alpaca data set and AlpacaEval ``model_outputs`` files
(which add ``dataset`` and ``generator``). The prompt is the instruction, followed by a
blank line and the input when the input is non-empty. Token counts are WordPiece counts
(see :mod:`traces.tokenize`), not Llama SentencePiece counts. The files carry no arrival
times, so ``load_trace`` requires synthetic arrivals (``arrivals=``, ``rate=``, ``seed=``).
Rows are located by record number (1-based position in the JSON list).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from traces._parse import RowChecker, open_bytes
from traces.schema import TraceError


def read_alpaca(path: Path, skip_bad_rows: bool, **opts):
    from traces.formats import Parsed, no_options
    from traces.tokenize import TOKENIZER_NAME, count_tokens

    if opts:
        no_options("alpaca", opts, path)
    try:
        records = json.loads(open_bytes(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not valid JSON ({e}); expected a list of {{instruction, input?, output}} objects") from None
    if not isinstance(records, list):
        raise TraceError(f"{path}: top-level JSON is a {type(records).__name__}, expected a list of "
                         f"{{instruction, input?, output}} objects")
    n = len(records)
    if n == 0:
        raise TraceError(f"{path}: the JSON list is empty, expected at least one {{instruction, input?, output}} object")
    checker = RowChecker(path, np.arange(1, n + 1), skip_bad_rows, line_word="record")
    fields: dict[str, list] = {"instruction": [], "input": [], "output": []}
    for rec in records:
        for f, vals in fields.items():
            v = rec.get(f, "" if f == "input" else None) if isinstance(rec, dict) else None
            vals.append(v)
    for f in ("instruction", "output"):
        vals = fields[f]
        checker.flag(np.array([not isinstance(v, str) for v in vals], dtype=bool), f,
                     [v if v is None or isinstance(v, str) else repr(v)[:80] for v in vals], "a string")
    bad_input = np.array([v is not None and not isinstance(v, str) for v in fields["input"]], dtype=bool)
    checker.flag(bad_input, "input", [repr(v)[:80] for v in fields["input"]], "a string (or absent)")
    as_text = (lambda vals: [v if isinstance(v, str) else "" for v in vals])
    instruction, inp, output = as_text(fields["instruction"]), as_text(fields["input"]), as_text(fields["output"])
    prompt = [i + ("\n\n" + x if x.strip() else "") for i, x in zip(instruction, inp)]
    prompt_tokens = count_tokens(prompt)
    output_tokens = count_tokens(output)
    # Counts go through the checker as strings so an empty text is reported like any bad value.
    p_tok = checker.integers(pl.Series([str(v) for v in prompt_tokens]), "instruction (WordPiece tokens)", 1,
                               " (the prompt text is empty)")
    o_tok = checker.integers(pl.Series([str(v) for v in output_tokens]), "output (WordPiece tokens)", 1,
                               " (the response text is empty)")
    notes = {"tokenizer": TOKENIZER_NAME}
    gens = {rec.get("generator") for rec in records if isinstance(rec, dict)} - {None}
    if len(gens) == 1:
        notes["generator"] = gens.pop()
    return Parsed("alpaca", checker, prompt_tokens=p_tok, output_tokens=o_tok, prompt=prompt, response=output,
                  notes=notes)
