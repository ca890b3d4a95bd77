"""Perplexity on held-out text: the cheap check that an edit left the model's general
language ability alone.

Each text is cut into non-overlapping windows of `seq_len` tokens, each begun as every
prompt is (`models.tokens.lead_ids`: the tokenizer's own leading special, else its
<|endoftext|> separator, else BOS, else EOS), every window scored independently (texts never see each other).
A window's first text token is predicted from that start token; a tokenizer with neither
start token leaves it without context, unscored. The result is token-weighted:
exp(total NLL / number of scored tokens) over all windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..models.tokens import lead_ids, pad_id
from .scoring import score_spans


def perplexity_windows(
    tokenizer, texts: Sequence[str], max_tokens: int | None = None, seq_len: int = 256
) -> tuple[list[list[int]], list[int]]:
    """(windows, first scored index per window), as `perplexity` scores them.

    `max_tokens` caps the text tokens taken, in order (the last text is truncated), so
    a large corpus gives a fixed, deterministic workload.
    """
    prefix = lead_ids(tokenizer)
    body = seq_len - len(prefix)
    if body < 2:
        raise ValueError(f"seq_len {seq_len} leaves no room for text")
    start = len(prefix) if prefix else 1
    windows, starts = [], []
    budget = max_tokens
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    for ids in encoded:
        if budget is not None:
            if budget <= 0:
                break
            ids = ids[:budget]
            budget -= len(ids)
        for i in range(0, len(ids), body):
            window = prefix + list(ids[i : i + body])
            if len(window) > start:
                windows.append(window)
                starts.append(start)
    return windows, starts


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    max_tokens: int | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
) -> float:
    """Token-weighted perplexity of `texts` (see the module docstring)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        seq_len = min(seq_len, limit)
    windows, starts = perplexity_windows(tokenizer, texts, max_tokens, seq_len)
    if not windows:
        raise ValueError("no scorable tokens: texts are empty or one token each")
    scored = score_spans(
        model, windows, starts, pad_id(tokenizer), batch_size, share_prefixes=False
    )
    total = sum(sum(lp) for lp, _ in scored)
    count = sum(len(lp) for lp, _ in scored)
    return math.exp(-total / count)
