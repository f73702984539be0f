"""The served model's own hidden states as the progressive predictor's embedding source.

In the runner the forward pass already computes, for every row it samples, the last
layer's hidden state after the final norm (:func:`gpu_runner.paged.forward` returns it next
to the logits); the executor hands it to the policy as ``StepResult.embeddings`` when the
predictor asks for it (``wants_embeddings``): no extra model runs.

To *train* a progressive model on those states, :class:`HiddenStateSource` replays real
answers through the same model (teacher forcing, one forward pass per answer) and reads the
same vector (last layer, post-norm) at the prompt's last token and after every k generated
tokens. ``syncintellects train-predictor --kind progressive --head transformer
--record-hidden MODEL`` uses it (MODEL: a local Hugging Face checkpoint directory, or a named
random-weight shape such as ``tiny-llama`` for tests).

Cuts are counted in the lab's length unit (WordPiece tokens of the answer); each cut is
mapped to the served model's token position by encoding the answer's text up to that cut
(identical for the bundled-tokenizer shapes, an approximation to within a token for a real
checkpoint's tokenizer).
"""
from __future__ import annotations

import numpy as np


class HiddenStateSource:
    """States = the served model's last-layer (post-norm) hidden state at the prompt's end and at each cut."""

    name = "hidden"

    def __init__(self, lm):
        self.lm = lm
        self.dim = int(lm.shape["hidden"])
        self.max_context = int(lm.shape["max_context"])

    def _positions(self, prompt: str, answer: str, cuts: list[int]) -> tuple[list[int], list[int]]:
        lm = self.lm
        p_ids = lm.encode(prompt) if prompt else []
        a_ids = _encode_plain(lm, answer)
        pos = []
        inner = [c for c in cuts if c > 0]
        full = _prefixes(answer, inner) if inner else []
        it = iter(full)
        for c in cuts:
            n = 0 if c == 0 else len(_encode_plain(lm, next(it)))
            pos.append(max(len(p_ids) + n - 1, 0))
        return p_ids + a_ids, pos

    def states_many(self, items: list[tuple[str, str, list[int]]], progress: bool = False) -> list[np.ndarray]:
        import torch

        out = []
        model = self.lm.model
        for prompt, answer, cuts in items:
            ids, pos = self._positions(prompt, answer, cuts)
            last = min(max(pos) + 1, self.max_context)
            ids = ids[:last] or [self.lm.eos_token_id]
            with torch.no_grad():
                x = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
                hs = model(input_ids=x, output_hidden_states=True).hidden_states[-1][0]
            rows = torch.tensor([min(p, len(ids) - 1) for p in pos], device=hs.device)
            out.append(hs.index_select(0, rows).float().cpu().numpy().astype(np.float32))
        return out


def _encode_plain(lm, text: str) -> list[int]:
    """The served model's token ids of ``text`` without special tokens (a continuation, not a prompt)."""
    tok = lm.tokenizer
    if tok is None:
        raise ValueError(f"model {lm.name!r} has no tokenizer; recording hidden states needs one")
    if hasattr(tok, "no_padding"):
        ids = tok.encode(text, add_special_tokens=False).ids
    else:
        ids = list(tok.encode(text, add_special_tokens=False))
    return [i for i in ids if i < lm.shape["vocab"]]


def _prefixes(text: str, cuts: list[int]) -> list[str]:
    """The full text of the answer's first ``c`` WordPiece tokens, for each cut."""
    from policies.predictors.text import tokenizer

    off = tokenizer().encode(text, add_special_tokens=False).offsets
    return [text[:off[min(c, len(off)) - 1][1]] if off else "" for c in cuts]
