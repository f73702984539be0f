"""Cheap features of the answer so far: where in its own structure an answer is.

A chat answer announces and closes its structure in plain text: "Here are 5 tips:" and three
numbered items so far, a code block still open, "In conclusion," or "I hope this helps" near
the end. These features read that from the text of the first g tokens (regular expressions,
no model), so they cost microseconds and can be computed for tens of thousands of training
answers. The progressive ``cues`` head (:mod:`.progress_head`) feeds them, with the prompt
head's prediction and the length so far, to gradient-boosted trees.

Every feature is a float; "not there" is -1 for counts that may be absent (an announced
number), so the trees can split on it.
"""
from __future__ import annotations

import re

import numpy as np

_NUM_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
              "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20}
_NUM = r"(\d{1,2}|" + "|".join(_NUM_WORDS) + r")"
# "5 tips", "ten creative ways", "3 main reasons" (a number, up to two words, then a plural noun)
ANNOUNCED = re.compile(r"\b" + _NUM + r"\s+(?:[a-z'-]+\s+){0,2}?[a-z'-]{3,}s\b", re.IGNORECASE)
LIST_ITEM = re.compile(r"^[ \t]*(?:(\d{1,2})[.)]|[-*\u2022]|[a-zA-Z][.)])[ \t]+", re.MULTILINE)
HEADING = re.compile(r"^[ \t]*(?:#{1,6} |\*\*[^*\n]{2,80}\*\*:?[ \t]*$|[A-Z][^\n.!?]{2,60}:[ \t]*$)", re.MULTILINE)
CONCLUDE = re.compile(r"\b(in conclusion|in summary|to summari[sz]e|to conclude|overall,|in short,|all in all|"
                      r"ultimately,|to sum up|by following these|remember,? (?:that|to))", re.IGNORECASE)
SIGN_OFF = re.compile(r"(i hope (?:this|that)|hope this helps|let me know|feel free|good luck|best of luck|"
                      r"happy (?:coding|cooking|writing)|enjoy)", re.IGNORECASE)
CAVEAT = re.compile(r"\b(however, it'?s important|it'?s important to (?:note|remember)|please note|note that|"
                    r"keep in mind)", re.IGNORECASE)

NAMES = ("ln_generated", "ln_chars_per_token", "ln_lines", "ln_paragraphs", "ln_items", "max_number",
         "announced", "announced_left", "ln_est_left", "ln_headings", "code_fences", "code_open",
         "conclude", "ln_since_conclude", "sign_off", "caveat", "ln_since_newline", "ln_last_paragraph",
         "in_list", "ends_colon", "ln_chars_per_item", "ln_since_last_item")


def _num(s: str) -> int:
    return int(s) if s.isdigit() else _NUM_WORDS[s.lower()]


def announced_count(prompt: str, opening: str) -> int:
    """A number of items the answer's opening (or else the prompt) announces: "Here are 5 tips" -> 5; -1 if none."""
    for text in (opening, prompt[:600]):
        for m in ANNOUNCED.finditer(text):
            n = _num(m.group(1))
            if 2 <= n <= 30:
                return n
    return -1


def answer_features(prompt: str, text: str, generated: int) -> list[float]:
    """One row of :data:`NAMES` for the answer's first ``generated`` tokens, whose text is ``text``."""
    g = max(int(generated), 0)
    n_chars = len(text)
    cpt = n_chars / g if g else 4.0
    lines = text.count("\n")
    paragraphs = len([p for p in re.split(r"\n\s*\n", text) if p.strip()])
    items = list(LIST_ITEM.finditer(text))
    numbers = [int(m.group(1)) for m in items if m.group(1)]
    max_number = max(numbers) if numbers else 0
    announced = announced_count(prompt, text[:300])
    seen = max(max_number, len(items))
    left = announced - seen if announced > 0 else -1
    per_item = (n_chars - items[0].start()) / len(items) if items else 0.0
    est_left = left * per_item / cpt if left >= 0 and items else -1.0
    conc = list(CONCLUDE.finditer(text))
    since_conc = (n_chars - conc[-1].start()) / cpt if conc else -1.0
    fences = text.count("```")
    last_nl = text.rfind("\n")
    last_par = max(text.rfind("\n\n"), 0)
    tail_line = text[last_nl + 1:] if last_nl >= 0 else text
    prev_line = text[:last_nl].rsplit("\n", 1)[-1] if last_nl >= 0 else ""
    in_list = 1.0 if LIST_ITEM.match(tail_line) or (not tail_line.strip() and LIST_ITEM.match(prev_line)) else 0.0
    since_item = (n_chars - items[-1].start()) / cpt if items else -1.0
    return [np.log1p(g), np.log(max(cpt, 0.5)), np.log1p(lines), np.log1p(paragraphs), np.log1p(len(items)),
            float(max_number), float(announced), float(left), np.log1p(est_left) if est_left >= 0 else -1.0,
            np.log1p(len(HEADING.findall(text))), float(fences), float(fences % 2),
            1.0 if conc else 0.0, np.log1p(since_conc) if conc else -1.0,
            1.0 if SIGN_OFF.search(text[-600:]) else 0.0, 1.0 if CAVEAT.search(text[-800:]) else 0.0,
            np.log1p((n_chars - last_nl - 1) / cpt if last_nl >= 0 else g), np.log1p((n_chars - last_par) / cpt),
            in_list, 1.0 if text.rstrip().endswith(":") else 0.0, np.log1p(per_item / cpt),
            np.log1p(since_item) if items else -1.0]


def answer_features_many(prompts: list[str], texts: list[str], generated) -> np.ndarray:
    """:func:`answer_features` for many (prompt, text so far, tokens so far) rows."""
    rows = [answer_features(p, t, g) for p, t, g in zip(prompts, texts, np.asarray(generated).tolist())]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(NAMES))
