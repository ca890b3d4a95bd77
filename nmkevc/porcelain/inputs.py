"""Checks of what a user types, made before any model weights load.

Text is first capped in characters (free), then counted with the base's tokenizer
(which loads in a moment, without the weights) against the model's context, so a
300k-character prompt is refused at once instead of costing minutes and gigabytes.
"""

from __future__ import annotations

from ..errors import UsageError
from ..facts import MAX_TEXT_CHARS
from ..models.tokens import context_ids, plain_ids
from ..workbench import Workbench


def context_of(bench: Workbench, base_id: str) -> int | None:
    """The base's context length in tokens, from its recorded config (None if unknown)."""
    return bench.adapter(base_id).context_length(bench.repo.manifest(base_id).config)


def token_count(bench: Workbench, base_id: str, text: str) -> int:
    return len(plain_ids(bench.tokenizer(base_id), text))


def prompt_tokens(bench: Workbench, base_id: str, prompt: str) -> int:
    """Tokens of a prompt as the model runs it (with its start token, `models.tokens`)."""
    return len(context_ids(bench.tokenizer(base_id), prompt))


def check_prompt(bench: Workbench, base_id: str, prompt: str, room: int = 1, what: str = "prompt") -> None:
    """A prompt the model can read with `room` tokens to spare after it."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f"{what} is empty")
    if len(prompt) > MAX_TEXT_CHARS:
        raise UsageError(f"{what} is {len(prompt)} characters long; the limit is {MAX_TEXT_CHARS}")
    ctx = context_of(bench, base_id)
    if ctx is None:
        return
    n = prompt_tokens(bench, base_id, prompt) + room
    if n > ctx:
        raise UsageError(f"{what} needs {n} tokens (with {room} to generate); the model's context is {ctx}")


def check_count(value, name: str, low: int, high: int | None = None) -> int:
    """An integer option within [low, high], refused with one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{name} must be {bound}, not {value!r}")
    return value
