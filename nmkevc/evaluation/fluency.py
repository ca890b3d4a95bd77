"""Fluency as ROME measures it: n-gram entropy of generated text.

An edit that breaks a model tends to make it repeat itself ("Paris Paris Paris"), which
drives the entropy of its bigrams and trigrams down. Per text: the arithmetic mean of
(2/3 · H2, 4/3 · H3), entropies in bits over the text's word n-gram frequencies; over
texts: the arithmetic mean. Words are split by a regex (runs of word characters, or
single punctuation marks), standing in for ROME's `nltk.word_tokenize`, so figures are
close to, not identical with, the published ones.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch

from .scoring import greedy_continuation

_WORD = re.compile(r"\w+|[^\w\s]")

NS = (2, 3)
WEIGHTS = (2 / 3, 4 / 3)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def text_ngram_entropy(
    text: str, ns: Sequence[int] = NS, weights: Sequence[float] = WEIGHTS
) -> float:
    """Weighted n-gram entropy of one text (0 for a text shorter than n words)."""
    toks = words(text)
    parts = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
        parts.append(w * _entropy_bits(grams))
    return sum(parts) / len(parts)


def ngram_entropy(
    texts: Sequence[str], ns: Sequence[int] = NS, weights: Sequence[float] = WEIGHTS
) -> float:
    """Mean weighted n-gram entropy over texts (ROME's fluency figure)."""
    if not texts:
        raise ValueError("no texts")
    return sum(text_ngram_entropy(t, ns, weights) for t in texts) / len(texts)


def generation_entropy(
    model: torch.nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 100
) -> float:
    """Fluency of greedy generations from `prompts`, scored on prompt + continuation.

    ROME samples (top-k) and scores the full generated text; we decode greedily so the
    figure is deterministic, which makes repetition loops count somewhat more.
    """
    texts = [p + greedy_continuation(model, tokenizer, p, max_new_tokens) for p in prompts]
    return ngram_entropy(texts)
