"""Tokeniser, vocabulary and encoding of texts to fixed-length id rows (pad id 0)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["PAD_ID", "UNK_ID", "build_vocab", "characters", "encode", "tokenize"]

PAD_ID, UNK_ID = 0, 1

_EN_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def tokenize(text: str, language: str = "en") -> list[str]:
    """Deterministic word tokeniser. "en": lowercase, HTML line breaks removed, words = runs of
    [a-z0-9] with inner apostrophes. "zh": every non-whitespace character is a token."""
    if language == "zh":
        return [ch for ch in text if not ch.isspace()]
    return _EN_TOKEN.findall(_HTML_BREAK.sub(" ", text).lower())


def characters(text: str, language: str = "en") -> list[str]:
    """Character tokens. "en": lowercase, HTML line breaks removed, whitespace runs become one
    space, ends stripped; every other character is kept. "zh": the non-whitespace characters."""
    if language == "zh":
        return tokenize(text, "zh")
    return list(_SPACES.sub(" ", _HTML_BREAK.sub(" ", text).lower()).strip())


def build_vocab(token_lists: Sequence[list[str]], max_vocab: int, min_freq: int) -> list[str]:
    """Most frequent tokens first (ties alphabetical), capped at max_vocab including pad/unk."""
    if max_vocab < 3:
        raise ValueError(f"max_vocab must be >= 3 (pad, unk and one token), got {max_vocab}")
    counts = Counter(t for toks in token_lists for t in toks)
    ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return ["<pad>", "<unk>", *ranked[: max_vocab - 2]]


def encode(
    token_lists: Sequence[list[str]], index: dict[str, int], max_len: int
) -> tuple[np.ndarray, int, int]:
    """Ids (N, max_len) int64, right-padded; returns (ids, n_truncated, n_unk_tokens)."""
    out = np.zeros((len(token_lists), max_len), dtype=np.int64)
    truncated = unk = 0
    for i, toks in enumerate(token_lists):
        ids = [index.get(t, UNK_ID) for t in toks[:max_len]]
        truncated += len(toks) > max_len
        unk += ids.count(UNK_ID)
        out[i, : len(ids)] = ids
    return out, truncated, unk
