"""Tokenising context-templated prompts and locating the subject's last token.

Every step of the method reads hidden states at two places: the subject's last token
and the prompt's last real token. Both must be exact under padding, so batches are
always right-padded (positions of real tokens are then unchanged) and every row carries
its own true indices; nothing ever reads "position -1" of a padded row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import EditRequestError

PLACEHOLDER = "{}"


def split_template(template: str) -> tuple[str, str]:
    """A context template ('{}' placeholder, literal braces escaped as '{{' '}}') → (before, after)."""
    marker = "\x00"
    try:
        filled = template.format(marker)
    except (IndexError, KeyError, ValueError):
        raise EditRequestError(f"context template {template!r} is not a valid '{{}}' template") from None
    if filled.count(marker) != 1:
        raise EditRequestError(f"context template {template!r} must contain '{{}}' exactly once")
    before, after = filled.split(marker)
    return before, after


def escape_braces(text: str) -> str:
    """Make free text safe to embed in a template."""
    return text.replace("{", "{{").replace("}", "}}")


def fill(template: str, prompt: str, subject: str) -> tuple[str, int]:
    """Context template ∘ request prompt ∘ subject → (text, index one past the subject's last char).

    The request prompt is split on its single raw '{}' (never `str.format`), so other
    braces a user typed in a prompt stay literal."""
    before, after = split_template(template)
    p_before, _, p_after = prompt.partition(PLACEHOLDER)
    head = before + p_before + subject
    return head + p_after + after, len(head)


@dataclass(frozen=True)
class Batch:
    """A right-padded batch with the true per-row indices the method reads."""

    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64
    lengths: torch.Tensor  # (B,) real tokens per row (prompt + suffix)
    prompt_lengths: torch.Tensor  # (B,) tokens of the text alone (before any suffix)
    subject_pos: torch.Tensor  # (B,) index of the subject's last token, -1 where none was given

    @property
    def last(self) -> torch.Tensor:
        """Index of each row's last real token."""
        return self.lengths - 1

    @property
    def rows(self) -> torch.Tensor:
        return torch.arange(self.input_ids.shape[0])

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def pad_id(tokenizer) -> int:
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def leading_special_ids(tokenizer) -> list[int]:
    """Specials the tokenizer puts *before* a text (BOS); trailing ones (EOS) are dropped,
    since the method reads the prompt's last token, which must be the prompt's own."""
    probe = "a b"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i]
    return []


def target_ids(tokenizer, target: str) -> list[int]:
    """Token ids of the target, scored with a leading space."""
    ids = list(tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise EditRequestError(f"target {target!r} tokenizes to nothing")
    return ids


def _encode_one(tokenizer, text: str, subject_end: int | None) -> tuple[list[int], int]:
    """Token ids of `text` (no specials) and the index of the token holding char subject_end − 1."""
    if subject_end is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), -1
    last_char = subject_end - 1
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        pos = -1
        for j, (start, end) in enumerate(offsets):
            if end > start and start <= last_char:
                pos = j
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizer: no offsets
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        pos = len(tokenizer(text[:subject_end], add_special_tokens=False)["input_ids"]) - 1
        pos = min(pos, len(ids) - 1)
    if pos < 0:
        raise EditRequestError(f"cannot locate the subject in the tokenized prompt {text!r}")
    return ids, pos


def encode(
    tokenizer,
    texts: Sequence[str],
    subject_ends: Sequence[int | None] | None = None,
    suffixes: Sequence[Sequence[int]] | None = None,
    max_length: int | None = None,
) -> Batch:
    """Tokenize texts (optionally followed by raw suffix ids, e.g. the target) into one batch.

    `max_length` truncates rows on the right (only for plain text such as statistics corpora)."""
    if not texts:
        raise EditRequestError("nothing to tokenize")
    lead = leading_special_ids(tokenizer)
    rows, plen, spos = [], [], []
    for i, text in enumerate(texts):
        ids, pos = _encode_one(tokenizer, text, None if subject_ends is None else subject_ends[i])
        ids = lead + ids
        plen.append(len(ids))
        spos.append(pos + len(lead) if pos >= 0 else -1)
        if suffixes is not None:
            ids = ids + list(suffixes[i])
        if max_length is not None:
            ids = ids[:max_length]
            plen[-1] = min(plen[-1], max_length)
        if not ids:
            raise EditRequestError(f"text {text!r} tokenizes to nothing")
        rows.append(ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, : len(r)] = 1
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        lengths=torch.tensor([len(r) for r in rows], dtype=torch.long),
        prompt_lengths=torch.tensor(plen, dtype=torch.long),
        subject_pos=torch.tensor(spos, dtype=torch.long),
    )


def templated(requests: Sequence, templates: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every request under every context template, row r·T + t (request-major).

    Row r·T + 0 (the first template, normally the bare '{}') is the request's rewrite prompt."""
    texts, ends = [], []
    for req in requests:
        for tpl in templates:
            text, end = fill(tpl, req.prompt, req.subject)
            texts.append(text)
            ends.append(end)
    return texts, ends
