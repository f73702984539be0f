"""The progressive predictor as the paper builds it: a small transformer over the embeddings
produced during generation.

Every ``k`` generated tokens the engine has a state vector for a request: its *embedding
source* (:class:`MiniLMSource` over the text so far, any engine; or the served model's own
hidden state, :mod:`gpu_runner.hidden`, in the runner). The sequence
``[s(0), s(k), s(2k), ..., s(g)]`` (``s(0)`` the prompt's state) goes through a two-layer
causal transformer; the output at each position predicts ln(remaining tokens) after that
many tokens, with the prompt head's ln prediction ``m0`` and ln(1 + position) as extra
inputs. One forward pass over a whole answer trains every prefix at once (causal mask), so
training on the checkpoints of real answers costs one pass per answer.

torch is imported only here (training, and the progressive predictor's real path); the
simulator never imports this module.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STEP_TOKENS = 32  # k: one state every k generated tokens (the runner's default refresh)


WINDOW_TOKENS = 64  # a MiniLM state reads the answer's last 64 tokens: the new k plus the k before


class MiniLMSource:
    """State after ``c`` tokens = MiniLM embedding of the answer's last :data:`WINDOW_TOKENS` tokens; s(0) = the
    prompt's. Each state sees a short window (cheap to embed every k tokens on a CPU); the transformer
    reads the whole sequence of windows."""

    name = "minilm"
    dim = 384

    def __init__(self, encoder=None):
        from policies.predictors.text import shared_encoder

        self.encoder = encoder or shared_encoder()

    def texts(self, prompt: str, answer: str, cuts: list[int]) -> list[str]:
        from policies.predictors.text import prefix_texts

        inner = [c for c in cuts if c > 0]
        pref = iter(prefix_texts(answer, inner, WINDOW_TOKENS))
        return [prompt if c == 0 else next(pref) for c in cuts]

    def states_many(self, items: list[tuple[str, str, list[int]]], progress: bool = False) -> list[np.ndarray]:
        """One ``[len(cuts), dim]`` array per (prompt, answer, cuts), embedded in one batched pass."""
        texts = [self.texts(p, a, c) for p, a, c in items]
        flat = self.encoder.embed([t for ts in texts for t in ts], progress=progress).astype(np.float32)
        out, i = [], 0
        for ts in texts:
            out.append(flat[i:i + len(ts)])
            i += len(ts)
        return out


def cuts_for(total: int, k: int = STEP_TOKENS, upto: int | None = None) -> list[int]:
    """0, k, 2k, ... below ``upto`` (default the whole answer), and ``upto`` itself."""
    end = total - 1 if upto is None else upto
    cuts = list(range(0, max(end, 0) + 1, k))
    if upto is not None and cuts[-1] != upto:
        cuts.append(upto)
    return cuts


def _torch_model(dim: int, width: int, layers: int, heads: int, max_len: int):
    import torch
    from torch import nn

    class SeqHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(dim + 3, width)
            self.pos = nn.Embedding(max_len, width)
            block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
            self.body = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
            self.out = nn.Linear(width, 1)
            self.max_len = max_len

        def forward(self, states, extra, pad_mask):
            # states [B, L, dim], extra [B, L, 3] = (m0, ln(1 + g), prior), pad_mask [B, L] True where padding
            n = states.shape[1]
            pos = torch.clamp(torch.arange(n, device=states.device), max=self.max_len - 1)
            scaled = torch.stack([extra[..., 0] - 5.5, extra[..., 1] / 4.0, extra[..., 2] - 5.0], -1)
            h = self.inp(torch.cat([states * 8.0, scaled], -1)) + self.pos(pos)[None]
            causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=states.device), 1)
            h = self.body(h, mask=causal, src_key_padding_mask=pad_mask)
            return self.out(h)[..., 0] + extra[..., 2]  # a correction to the prior

    return SeqHead()


@dataclass
class SequenceHead:
    """A trained sequence model: torch weights + how to build its inputs."""

    state_dict: dict
    config: dict
    meta: dict = field(default_factory=dict)
    _model: object = None

    def model(self):
        if self._model is None:
            c = self.config
            m = _torch_model(c["dim"], c["width"], c["layers"], c["heads"], c["max_len"])
            m.load_state_dict(self.state_dict)
            m.eval()
            self._model = m
        return self._model

    def predict_log(self, states: list[np.ndarray], m0: np.ndarray, cuts: list[list[int]]) -> np.ndarray:
        """ln(remaining) predicted at the *last* position of each sequence."""
        import torch

        out = np.zeros(len(states))
        for lo in range(0, len(states), 256):
            b = _batch(states[lo:lo + 256], m0[lo:lo + 256], cuts[lo:lo + 256], self.config["dim"])
            with torch.no_grad():
                y = self.model()(*b[:3]).numpy()
            last = np.array([len(c) - 1 for c in cuts[lo:lo + 256]])
            out[lo:lo + 256] = y[np.arange(len(last)), last]
        return out

    def save(self, d: Path) -> None:
        import torch

        d.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in self.state_dict.items()},
                   d / "sequence.pt")
        (d / "sequence.json").write_text(json.dumps({"config": self.config, "meta": self.meta}, indent=2,
                                                    sort_keys=True) + "\n")

    @staticmethod
    def load(d: Path) -> "SequenceHead":
        import torch

        cfg = json.loads((d / "sequence.json").read_text())
        sd = torch.load(d / "sequence.pt", map_location="cpu", weights_only=True)
        return SequenceHead({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, cfg["config"],
                            cfg["meta"])


PRIOR_SIGMA = 0.6  # spread of ln(length) around the prompt head's prediction (its held-out errors: 0.5-0.7)


def prior_remaining_log(m0: float, cuts) -> np.ndarray:
    """ln of the median remaining length if T ~ lognormal(m0, PRIOR_SIGMA) and T > g: what the
    length so far alone says (the closed form of :func:`progress_head.prior_remaining_log` at an
    assumed spread). The transformer learns a correction to it from the states."""
    from policies.predictors.progress_head import prior_remaining_log as survival_prior

    return survival_prior(m0, cuts, PRIOR_SIGMA)


def _batch(states, m0, cuts, dim):
    import torch

    n = max(len(s) for s in states)
    x = np.zeros((len(states), n, dim), np.float32)
    extra = np.zeros((len(states), n, 3), np.float32)
    pad = np.ones((len(states), n), bool)
    for i, (s, c) in enumerate(zip(states, cuts)):
        x[i, :len(s)] = s
        extra[i, :len(s), 0] = m0[i]
        extra[i, :len(s), 1] = np.log1p(np.asarray(c, np.float32))
        extra[i, :len(s), 2] = prior_remaining_log(float(m0[i]), c)
        pad[i, :len(s)] = False
    return torch.from_numpy(x), torch.from_numpy(extra), torch.from_numpy(pad)


def fit_sequence(states: list[np.ndarray], m0: np.ndarray, cuts: list[list[int]], totals: np.ndarray, *, seed: int,
                 width: int = 64, layers: int = 2, heads: int = 4, epochs: int = 60, lr: float = 1e-3,
                 max_len: int = 64, val_share: float = 0.15, log=None) -> SequenceHead:
    """Train on whole answers: every position's target is ln(total - cut); L1 loss in log space (a median).

    The output layer starts at zero, so the untrained model *is* the prior (:func:`prior_remaining_log`);
    a seeded ``val_share`` of the answers is held out and the weights of the epoch with the lowest
    validation error are kept (epoch 0, the prior, included): the transformer only replaces the
    prior where it measurably does better on answers it did not train on.
    """
    import torch

    torch.manual_seed(seed)
    dim = states[0].shape[1]
    model = _torch_model(dim, width, layers, heads, max_len)
    torch.nn.init.zeros_(model.out.weight)
    torch.nn.init.zeros_(model.out.bias)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    tgt = [np.log(np.maximum(t - np.asarray(c), 1)).astype(np.float32) for c, t in zip(cuts, totals)]
    order0 = rng.permutation(len(states))
    n_val = int(round(val_share * len(states))) if len(states) >= 10 else 0
    val, fit = order0[:n_val], order0[n_val:]
    t0 = time.process_time()
    batch = 32

    def batch_loss(ii):
        x, extra, pad = _batch([states[i] for i in ii], m0[ii], [cuts[i] for i in ii], dim)
        y = torch.zeros(pad.shape)
        for j, i in enumerate(ii):
            y[j, :len(tgt[i])] = torch.from_numpy(tgt[i])
        return ((model(x, extra, pad) - y).abs() * (~pad)).sum() / (~pad).sum()

    def val_loss():
        if not len(val):
            return 0.0
        model.eval()
        with torch.no_grad():
            v = float(batch_loss(val))
        model.train()
        return v

    best = (val_loss(), 0, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.train()
    for ep in range(epochs):
        order = fit[rng.permutation(len(fit))]
        for lo in range(0, len(order), batch):
            loss = batch_loss(order[lo:lo + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = val_loss()
        if len(val) and v < best[0]:
            best = (v, ep + 1, {k: t.detach().clone() for k, t in model.state_dict().items()})
        if log:
            log(f"epoch {ep + 1}/{epochs}: validation mean |ln error| {v:.4f}")
    if len(val):
        model.load_state_dict(best[2])
    model.eval()
    cfg = {"dim": int(dim), "width": width, "layers": layers, "heads": heads, "max_len": max_len,
           "step_tokens": STEP_TOKENS, "epochs": epochs, "lr": lr, "prior_sigma": PRIOR_SIGMA}
    head = SequenceHead({k: v.detach().clone() for k, v in model.state_dict().items()}, cfg,
                        {"train_cpu_s": round(time.process_time() - t0, 1), "n_answers": len(states),
                         "best_epoch": best[1] if len(val) else epochs, "val_abs_ln_error": round(best[0], 4)})
    head._model = model
    return head


# -- a progressive model directory with a sequence head --------------------------------
class SequenceModel:
    """``kind = progressive``, ``head = transformer``: the prompt ridge head (``prompt/``) before the
    first token, the sequence head after; ``source`` names the embedding source it was trained on."""

    def __init__(self, stage0, seq: SequenceHead, meta: dict):
        self.stage0, self.seq, self.meta = stage0, seq, meta

    def save(self, d) -> None:
        d = Path(d)
        self.seq.save(d)
        self.stage0.save(d / "prompt")
        (d / "model.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def load(d) -> "SequenceModel":
        from policies.predictors.head import RidgeHead

        d = Path(d)
        return SequenceModel(RidgeHead.load(d / "prompt"), SequenceHead.load(d),
                             json.loads((d / "model.json").read_text()))


def answer_items(records: list[dict], fractions=None, k: int = STEP_TOKENS, max_len: int = 64):
    """(prompt, answer, cuts, total) per record: every k-th cut of the whole answer (training, capped at
    ``max_len`` states), or for each fraction f the cuts up to g = floor(f T) (evaluation)."""
    from policies.predictors.text import token_counts

    totals = np.maximum(token_counts([r["output"] for r in records]), 1)
    items = []
    for r, t in zip(records, totals.tolist()):
        if fractions is None:
            items.append((r["instruction"], r["output"], cuts_for(t, k)[:max_len], t))
        else:
            for f in fractions:
                items.append((r["instruction"], r["output"], cuts_for(t, k, int(np.floor(f * t)))[-max_len:], t))
    return items


def train_sequence(records: list[dict], stage0, m0_of: dict, source, *, seed: int, progress: bool = False,
                   log=None, **fit) -> SequenceHead:
    """Fit the sequence head on every k-th checkpoint of each record's real answer."""
    items = answer_items(records)
    states = source.states_many([(p, a, c) for p, a, c, _ in items], progress=progress)
    m0 = np.array([m0_of[p] for p, *_ in items])
    head = fit_sequence(states, m0, [c for _, _, c, _ in items], np.array([t for *_, t in items]), seed=seed,
                        log=log, **fit)
    head.meta["source"] = source.name
    return head


def predict_after(model: SequenceModel, records: list[dict], fraction: float, source, *, encoder=None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true totals, predicted totals, generated) after ``fraction`` of each real answer."""
    from policies.predictors.train import head_features, prompt_features
    from policies.predictors.text import shared_encoder

    enc = encoder or shared_encoder()
    items = answer_items(records, (fraction,))
    m0 = model.stage0.predict_log(prompt_features(enc, [p for p, *_ in items], progress,
                                                  head_features(model.stage0)))
    t = np.array([x[3] for x in items])
    g = np.array([x[2][-1] for x in items])
    if fraction == 0.0:
        return t, np.maximum(np.exp(m0), 1.0), g
    states = source.states_many([(p, a, c) for p, a, c, _ in items], progress=progress)
    rem = np.exp(model.seq.predict_log(states, m0, [x[2] for x in items]))
    return t, g + np.maximum(rem, 1.0), g
