"""The one tokenization of every prompt the tool runs: editor, evaluator, `ask`, `blame`.

The editor optimises a target after a prompt and the evaluator scores that same target
after that same prompt; if the two tokenized differently the editor could optimise one
sequence while the metrics measure another. So both build their ids here:
- the start of a sequence follows one named rule (`START_RULES`, recorded with every edit);
- a target is scored with a leading space, and its ids are those of the jointly tokenized
  `prompt + " " + target` past the prompt's own ids (what the model really sees after the
  prompt), falling back to the target tokenized alone when the joint ids do not extend the
  prompt's (a merge across the boundary);
- batches are right-padded, so real tokens keep positions 0..n-1, and every row carries its
  own true indices: nothing reads "position -1" of a padded row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import EditRequestError

#: "document": every prompt begins as a document did in pretraining. The tokenizer's own leading
#: special if it adds one (Llama's BOS); else its document separator "<|endoftext|>" when that is
#: one of its special tokens (GPT-2, GPT-J, GPT-NeoX, SmolLM2, Qwen); else its BOS, else its EOS.
#: Without a start token a subject-first prompt puts the subject at position 0, whose activations
#: are atypical (an attention sink): such edits fail. The separator is preferred to a declared BOS
#: because chat tokenizers declare a turn marker there: SmolLM2-Instruct's BOS is <|im_start|>,
#: after which a one-token subject still has position-0-like keys (‖k‖² ≈ 0.6 against ≈ 19 after
#: <|endoftext|>, layers 3–7; docs/method.md).
#: "tokenizer": whatever the tokenizer adds by default (often nothing): edits made before the
#: rule existed, replayed as they were made.
START_RULES = ("document", "tokenizer")
DOCUMENT_SEPARATOR = "<|endoftext|>"
DEFAULT_START = "document"


def tokenizer_lead(tokenizer) -> list[int]:
    """Specials the tokenizer puts *before* a text by default (a BOS, or nothing); trailing ones
    (an EOS) are never kept, since a continuation follows the text directly."""
    probe = "a b"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i]
    return []


def lead_ids(tokenizer, start: str = DEFAULT_START) -> list[int]:
    """The ids every sequence begins with under rule `start` (see `START_RULES`)."""
    if start not in START_RULES:
        raise EditRequestError(f"unknown prompt start rule {start!r} (expected one of {', '.join(START_RULES)})")
    lead = tokenizer_lead(tokenizer)
    if lead or start == "tokenizer":
        return lead
    if DOCUMENT_SEPARATOR in (getattr(tokenizer, "all_special_tokens", None) or []):
        return [int(tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR))]
    for tid in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return [int(tid)]
    return []


def pad_id(tokenizer) -> int:
    """Any id works under the attention mask; prefer pad, then eos, then bos, without mutating."""
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None:
            return int(tid)
    return 0


def spaced(target: str) -> str:
    """The target string as scored and as edited: one leading space, no surrounding blanks."""
    return " " + target.strip()


def plain_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def target_ids(tokenizer, prompt: str, target: str) -> list[int]:
    """Ids of `spaced(target)` as it follows `prompt` (the module docstring's rule)."""
    text = spaced(target)
    p_ids = plain_ids(tokenizer, prompt)
    joint = plain_ids(tokenizer, prompt + text)
    n = len(p_ids)
    ids = joint[n:] if len(joint) > n and joint[:n] == p_ids else plain_ids(tokenizer, text)
    if not ids:
        raise EditRequestError(f"target {target!r} tokenizes to nothing")
    return ids


def encode_pairs(tokenizer, prompts: Sequence[str], targets: Sequence[str],
                 start: str = DEFAULT_START) -> list[tuple[list[int], list[int]]]:
    """(context ids, target ids) per prompt/target pair: what the evaluator scores."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    return [(context_ids(tokenizer, p, start), target_ids(tokenizer, p, t))
            for p, t in zip(prompts, targets, strict=True)]


def context_ids(tokenizer, prompt: str, start: str = DEFAULT_START) -> list[int]:
    """Ids of a prompt as a context to continue (`lead_ids` + the prompt's own ids)."""
    ids = lead_ids(tokenizer, start) + plain_ids(tokenizer, prompt)
    if not ids:
        raise EditRequestError("cannot continue an empty prompt: the tokenizer has neither BOS nor EOS")
    return ids


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

    def select(self, idx: torch.Tensor) -> Batch:
        """Rows `idx`, cut to their own longest row."""
        width = int(self.lengths[idx].max())
        return Batch(
            input_ids=self.input_ids[idx, :width],
            attention_mask=self.attention_mask[idx, :width],
            lengths=self.lengths[idx],
            prompt_lengths=self.prompt_lengths[idx],
            subject_pos=self.subject_pos[idx],
        )

    def through_subject(self) -> Batch:
        """Every row ending at its subject's last token: in a causal model nothing after it
        changes what is read there (keys and hidden states at the subject), so it need not run."""
        if bool((self.subject_pos < 0).any()):
            raise ValueError("through_subject needs every row's subject position")
        lengths = self.subject_pos + 1
        width = int(lengths.max())
        keep = torch.arange(width)[None, :] < lengths[:, None]
        return Batch(
            input_ids=self.input_ids[:, :width],
            attention_mask=self.attention_mask[:, :width] * keep.to(self.attention_mask.dtype),
            lengths=lengths,
            prompt_lengths=torch.minimum(self.prompt_lengths, lengths),
            subject_pos=self.subject_pos,
        )


def _encode_one(tokenizer, text: str, subject_end: int | None) -> tuple[list[int], int]:
    """Token ids of `text` (no specials) and the index of the token holding char subject_end − 1."""
    if subject_end is None:
        return plain_ids(tokenizer, text), -1
    last_char = subject_end - 1
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        pos = -1
        for j, (begin, end) in enumerate(offsets):
            if end > begin and begin <= last_char:
                pos = j
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizer: no offsets
        ids = plain_ids(tokenizer, text)
        pos = min(len(plain_ids(tokenizer, text[:subject_end])) - 1, len(ids) - 1)
    if pos < 0:
        raise EditRequestError(f"cannot locate the subject in the tokenized prompt {text!r}")
    return ids, pos


def encode(
    tokenizer,
    texts: Sequence[str],
    subject_ends: Sequence[int | None] | None = None,
    suffixes: Sequence[Sequence[int]] | None = None,
    max_length: int | None = None,
    start: str = DEFAULT_START,
) -> Batch:
    """Tokenize texts (each begun by `lead_ids(start)`, optionally followed by raw suffix ids,
    e.g. the target) into one right-padded batch.

    `max_length` truncates rows on the right (only for plain text such as statistics corpora)."""
    if not texts:
        raise EditRequestError("nothing to tokenize")
    lead = lead_ids(tokenizer, start)
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
    return pad_rows(tokenizer, rows, plen, spos)


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Id rows right-padded with `pad` to the longest: (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        attention[i, : len(r)] = 1
    return input_ids, attention


def pad_rows(tokenizer, rows: Sequence[Sequence[int]], prompt_lengths: Sequence[int] | None = None,
             subject_pos: Sequence[int] | None = None) -> Batch:
    """Right-pad id rows into a Batch (prompt length = row length, no subject, unless given)."""
    input_ids, attention = right_pad(rows, pad_id(tokenizer))
    lengths = [len(r) for r in rows]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        lengths=torch.tensor(lengths, dtype=torch.long),
        prompt_lengths=torch.tensor(lengths if prompt_lengths is None else list(prompt_lengths), dtype=torch.long),
        subject_pos=torch.tensor([-1] * len(rows) if subject_pos is None else list(subject_pos), dtype=torch.long),
    )
