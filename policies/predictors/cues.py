"""Hand-made prompt features: length and task cues that say how long an answer should be.

Each cue is a regular expression (case-insensitive) over the prompt; the feature is 1 when it
matches. Together with ln(1 + prompt tokens), the number of lines and the share of non-ASCII
characters (a proxy for the language) they give a predictor something that transfers
between prompt collections, where the MiniLM embedding alone tends to learn the topics of
its training set. Whether they help is measured in docs/predictors.md.
"""
from __future__ import annotations

import re

import numpy as np

CUES = {
    "list": r"\b(list|enumerate|bullet|top \d+|\d+ (ways|tips|ideas|examples|reasons|steps))\b",
    "long_form": r"\b(essay|article|story|blog|report|letter|speech|script|chapter|outline|paper|proposal)\b",
    "short": r"\b(one sentence|one word|single word|briefly|brief|short|concise|yes or no|in \d+ words|one line|tl;?dr)\b",
    "code": r"```|\b(code|function|python|javascript|java|sql|c\+\+|program|regex|bash|html|css|api|class|implement)\b",
    "explain": r"\b(explain|describe|detail|elaborate|discuss|analy[sz]e|compare|pros and cons)\b",
    "transform": r"\b(translate|rewrite|paraphrase|rephrase|correct|fix|summari[sz]e|shorten|edit|proofread)\b",
    "factoid": r"^\s*(what|who|when|where|which|is|are|does|do|can|how many|how much)\b",
    "howto": r"\b(how (to|do|can)|step by step|steps|guide|tutorial|plan)\b",
    "creative": r"\b(poem|haiku|song|lyrics|joke|rap|limerick)\b",
    "classify": r"\b(classify|categori[sz]e|identify|choose|select|rate|true or false|which of)\b",
}
_COMPILED = {k: re.compile(v, re.IGNORECASE) for k, v in CUES.items()}
NAMES = ("ln_prompt_tokens", "ln_lines", "non_ascii_share", "question_marks", *CUES)


def cue_features(prompts: list[str], prompt_tokens: np.ndarray) -> np.ndarray:
    """One row per prompt: the :data:`NAMES` features."""
    rows = []
    for p, n in zip(prompts, np.asarray(prompt_tokens).tolist()):
        head = p[:2000]
        non_ascii = sum(ord(c) > 127 for c in head) / max(len(head), 1)
        rows.append([np.log1p(n), np.log1p(p.count("\n")), non_ascii, min(p.count("?"), 5),
                     *(1.0 if rx.search(head) else 0.0 for rx in _COMPILED.values())])
    return np.asarray(rows, dtype=np.float64).reshape(len(prompts), len(NAMES))
