"""Token counts for text traces, with a small bundled WordPiece tokenizer.

The tokenizer is all-MiniLM-L6-v2's BERT WordPiece vocabulary (uncased, 30,522 entries),
bundled as ``traces/data/minilm_wordpiece_tokenizer.json.gz`` and run with the
``tokenizers`` package (no torch). **These are WordPiece counts, not the Llama
SentencePiece counts a Llama model would see**: they track length well but differ per
request (typically within tens of percent). Use them as a stand-in when a trace has text
but no token counts; do not mix them with Llama-tokenized counts in one comparison.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

TOKENIZER_FILE = Path(__file__).parent / "data" / "minilm_wordpiece_tokenizer.json.gz"
TOKENIZER_NAME = "WordPiece (all-MiniLM-L6-v2 vocabulary; not Llama SentencePiece)"


@lru_cache(maxsize=1)
def wordpiece_tokenizer():
    """The bundled tokenizer, with the file's truncation (128) and padding switched off."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(gzip.decompress(TOKENIZER_FILE.read_bytes()).decode("utf-8"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(texts: list[str]) -> np.ndarray:
    """WordPiece token count of each text, without [CLS]/[SEP] (0 for an empty text)."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    enc = wordpiece_tokenizer().encode_batch(list(texts), add_special_tokens=False)
    return np.array([len(e.ids) for e in enc], dtype=np.int64)
