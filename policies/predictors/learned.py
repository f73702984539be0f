"""The learned predictors: MiniLM prompt predictor and the progressive (re-predicting) one.

Both run for real whenever they have text (the prompt, and for the progressive one the
answer so far or its MiniLM embedding from the runner). Where text is missing (Azure-style
traces, or the simulator, which generates no text) they fall back to the calibrated
error model of :mod:`policies.predictors.errors`, applied to the truth the simulator binds.
"""
from __future__ import annotations

import sys

import numpy as np

from policies.contract import RequestView
from policies.predictors import errors
from policies.predictors.errors import RequestNoise
from policies.predictors.head import RidgeHead
from policies.predictors.oracle import _TruthBound
from policies.predictors.text import DATA_DIR, EMBED_DIM, load_records, prefix_texts, shared_encoder, token_counts


SHIPPED = DATA_DIR / "models"  # small trained models committed with the repo (docs/predictors.md says how)
BUNDLED_MODELS = ("prompt-lora",)  # bundled models a user may name in --predictor-model (prompt, progressive: defaults)


def model_path(model_dir):
    """``--predictor-model``'s value as a directory: a path, or the name of a bundled model (``prompt-lora``)."""
    from pathlib import Path

    if model_dir is None or Path(model_dir).exists() or str(model_dir) not in BUNDLED_MODELS:
        return model_dir
    return SHIPPED / str(model_dir)


def _train_bundled(kind: str, seed: int):
    from policies.predictors.train import load_model, train

    shipped = SHIPPED / kind
    if (shipped / "model.json").exists():
        return load_model(shipped)
    # No shipped model: fit on every bundled answer (seeded), in memory. Train once with
    # `syncintellects train-predictor` and pass --predictor-model to skip this.
    print(f"training a {kind} predictor on the bundled AlpacaEval answers (no --predictor-model given)", file=sys.stderr)
    return train(kind, load_records("alpaca-eval"), None, seed=seed, source="alpaca-eval (all 805)")


class _Learned(_TruthBound):
    kind = ""

    def __init__(self, trace=None, seed: int = 0, model_dir=None, embedding_cache=None):
        super().__init__()
        self.seed = int(seed)
        self.model_dir = model_dir = model_path(model_dir)
        self.trace = trace
        from policies.predictors.train import load_model

        self._head = load_model(model_dir) if model_dir is not None else None
        if self._head is not None and self._head.meta.get("kind") != self.kind:
            raise ValueError(f"predictor model {model_dir} is a {self._head.meta.get('kind')!r} model, "
                             f"expected {self.kind!r}")
        self._encoder = shared_encoder(embedding_cache)
        self._noise = RequestNoise(seed, stream=2)
        outputs = getattr(trace, "output_tokens", None)
        # Centre of the error model: the workload's own mean log length (see errors.py).
        self.mu = float(np.log(np.maximum(outputs, 1)).mean()) if outputs is not None and len(outputs) else \
            float((self._head.meta if self._head else {}).get("mu_log_tokens", errors.TRAIN_MU_LOG_TOKENS))
        self._trace_embedded = False

    @property
    def head(self) -> RidgeHead:
        if self._head is None:
            self._head = _train_bundled(self.kind, self.seed)
        return self._head

    def _prompt_log(self, head: RidgeHead, prompt: str) -> np.ndarray:
        """The prompt head's ln-length prediction (its own feature set)."""
        from policies.predictors.cues import cue_features

        if head.meta.get("head") == "lora":  # a fine-tuned encoder reads the text itself (lora.py)
            prompts = getattr(self.trace, "prompt", None)
            if prompts is not None and not self._trace_embedded:
                self._trace_embedded = True  # the whole trace in one batched pass
                head.predict_log_prompts([p for p in prompts if p], progress=len(prompts) > 256)
            return head.predict_log_prompts([prompt])
        n = token_counts([prompt])
        extra = np.log1p(n) if head.meta.get("features", "minilm+ln_len") == "minilm+ln_len" else \
            cue_features([prompt], n)[0]
        return head.predict_log(np.hstack([self._embed_prompt(prompt), extra]))

    def _embed_prompt(self, prompt: str) -> np.ndarray:
        prompts = getattr(self.trace, "prompt", None)
        if prompts is not None and not self._trace_embedded:
            self._trace_embedded = True  # embed the whole trace in one batched pass
            self._encoder.embed([p for p in prompts if p], progress=len(prompts) > 256)
        return self._encoder.embed([prompt])[0]

    def _measured(self, key: str, error_model: str):
        """This model directory's own held-out error parameters for ``error_model``, if it has them
        (a split by prompt measures in-distribution errors, a split by source unseen-source ones), or the
        ``error_models`` a bundled model carries for both (measured by other runs of its recipe)."""
        meta = self._head.meta if self._head is not None else {}
        stored = (meta.get("error_models") or {}).get(error_model)
        if stored is not None and key == "error_model":
            return stored
        split = (meta.get("split") or {}).get("by", "prompt")
        if (split == "source") != (error_model == "unseen-source"):
            return None
        return (meta.get("heldout") or {}).get(key)


class PromptPredictor(_Learned):
    """One-shot prediction from the prompt (MiniLM embedding + task cues -> ln tokens); without text, its measured errors.

    The model directory's head is ridge, or ridge + boosted trees (the shipped model; docs/predictors.md).
    Without prompt text the truth is perturbed by the measured error model ``error_model``
    (``unseen-source``, the default, or ``in-distribution``), or by an explicit ``error`` {b, c, sigma}.
    """

    name = "prompt"
    kind = "prompt"
    refresh_every = None

    def __init__(self, trace=None, seed: int = 0, model_dir=None, embedding_cache=None, error: dict | None = None,
                 error_model: str = "unseen-source"):
        super().__init__(trace, seed, model_dir, embedding_cache)
        base = errors.default_errors("prompt", error_model)
        em = self._measured("error_model", error_model)
        self.error_model = error_model
        self.error = dict(error or (em and {k: em[k] for k in ("b", "c", "sigma")}) or base)
        self._by_text: dict[str, float] = {}

    def predict(self, request: RequestView, generated: int = 0, embedding=None) -> float:
        if request.prompt is not None:
            pred = self._by_text.get(request.prompt)
            if pred is None:
                pred = self._by_text[request.prompt] = float(np.exp(self._prompt_log(self.head, request.prompt)[0]))
        else:
            pred = errors.modelled_remaining(self._true(request), 0, self.mu, self.error,
                                             self._noise(request.request_id))
        return float(max(pred, generated + 1))


class ProgressivePredictor(_Learned):
    """Re-predicts the remaining length every ``refresh_every`` tokens from the answer so far.

    ``embedding`` is the answer so far as text (its last 200 tokens are re-embedded with the
    prompt) or its MiniLM embedding (a 384-vector). Without either, after the first token the
    simulator's error-vs-progress model stands in (interpolated from the 0/25/50/75% fits).
    """

    name = "progressive"
    kind = "progressive"

    def __init__(self, trace=None, seed: int = 0, model_dir=None, embedding_cache=None, refresh_every: int = 32,
                 error: dict | None = None, error_model: str = "unseen-source"):
        super().__init__(trace, seed, model_dir, embedding_cache)
        base = errors.default_errors("progressive", error_model)
        self.error_model = error_model
        if refresh_every < 1:
            raise ValueError(f"progressive predictor: refresh_every must be >= 1, got {refresh_every}")
        self.refresh_every = int(refresh_every)
        self._states: dict[int, dict[int, np.ndarray]] = {}  # request -> {generated: state} (sequence models)
        by_f = self._measured("by_fraction", error_model)
        measured = by_f and {float(f): {k: m["error_model"][k] for k in ("b", "c", "sigma")} for f, m in by_f.items()}
        self.error = dict(error or measured or base)

    def _real(self, request: RequestView, generated: int, text_vec: np.ndarray | None) -> float:
        """The trained model: the prompt head before the first token, the progressive head after."""
        from policies.predictors.train import progressive_features

        if self.head.stage0 is None:
            raise ValueError(f"progressive model {self.model_dir} has no prompt/ head (retrain it)")
        m0 = self._prompt_log(self.head.stage0, request.prompt)
        if text_vec is None:
            return float(np.exp(m0[0]))
        x = progressive_features(text_vec[None, :], np.array([generated]), m0, self.head.arrays)
        return float(np.exp(self.head.predict_log(x)[0]))

    @property
    def wants_embeddings(self) -> bool:
        """True for a model trained on the served model's hidden states (the runner then hands them over)."""
        return self._head is not None and self._head.meta.get("states") == "hidden"

    def _predict_sequence(self, request: RequestView, generated: int, embedding) -> float | None:
        """A transformer model over the request's states so far; None when it has nothing to read."""
        model = self.head
        rid = request.request_id
        hist = self._states.setdefault(rid, {})
        if isinstance(embedding, str):
            if model.meta.get("states", "minilm") != "minilm":
                return None  # a hidden-state model cannot read text
            from policies.predictors.sequence import WINDOW_TOKENS

            vec = self._encoder.embed(prefix_texts(embedding, [10**9], WINDOW_TOKENS))[0] if generated > 0 else None
        elif embedding is not None:
            vec = np.asarray(embedding, dtype=np.float32).ravel()
            if vec.size != model.seq.config["dim"]:
                raise ValueError(f"progressive model {self.model_dir} reads {model.seq.config['dim']}-d "
                                 f"{model.meta.get('states')} states, got a {vec.size}-d embedding")
        else:
            vec = None
        m0 = self._prompt_log(model.stage0, request.prompt)
        if vec is not None:
            hist[int(generated)] = vec
        if generated == 0 or not hist:
            return float(np.exp(m0[0])) if generated == 0 else None
        if 0 not in hist:  # the prompt's state: MiniLM of the prompt, or the first state the engine gave
            hist[0] = (self._embed_prompt(request.prompt) if model.meta.get("states", "minilm") == "minilm"
                       else hist[min(hist)])
        cuts = sorted(g for g in hist if g <= generated)[-model.seq.config["max_len"]:]
        states = np.stack([hist[g] for g in cuts]).astype(np.float32)
        return float(np.exp(model.seq.predict_log([states], m0, [cuts])[0]))

    def _predict_cues(self, request: RequestView, generated: int, embedding) -> float | None:
        """The ``cues`` head (progress_head.py): reads the answer's text so far; None without it."""
        m0 = self._prompt_log(self.head.stage0, request.prompt)
        if generated == 0:
            return float(np.exp(m0[0]))
        if not isinstance(embedding, str):
            return None
        from policies.predictors.answer_cues import answer_features_many

        cues = answer_features_many([request.prompt], [embedding], [generated])
        return float(np.exp(self.head.predict_remaining_log(m0, [generated], cues)[0]))

    def predict(self, request: RequestView, generated: int = 0, embedding=None) -> float:
        if request.prompt is not None and self.head.meta.get("head") == "cues":
            rem = self._predict_cues(request, generated, embedding)
            if rem is None:
                return self._modelled(request, generated)
            return float(generated + max(rem, 1.0))
        if request.prompt is not None and getattr(self.head, "seq", None) is not None:
            rem = self._predict_sequence(request, generated, embedding)
            if rem is not None:
                return float(generated + max(rem, 1.0))
            return self._modelled(request, generated)
        has_state = isinstance(embedding, str) or (embedding is not None and np.size(embedding) == EMBED_DIM)
        if request.prompt is not None and (has_state or generated == 0):
            if isinstance(embedding, str):
                vec = self._encoder.embed(prefix_texts(embedding, [10**9]))[0]
            elif has_state:
                vec = np.asarray(embedding, dtype=np.float64).ravel()
            else:
                vec = None
            rem = self._real(request, generated, vec)
        else:
            return self._modelled(request, generated)
        return float(generated + max(rem, 1.0))

    def _modelled(self, request: RequestView, generated: int) -> float:
        true = self._true(request)
        rem = errors.modelled_remaining(true, generated, self.mu, errors.params_at(self.error, generated / max(true, 1)),
                                        self._noise(request.request_id))
        return float(generated + max(rem, 1.0))
