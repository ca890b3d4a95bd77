"""Context-templated prompts: filling a template with a request and its subject.

How a filled prompt becomes ids (start rule, target ids, padding, the subject's last token)
is `models.tokens`, shared with the evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import EditRequestError
from ..models.tokens import Batch  # noqa: F401  (attribution reads `tokens.Batch`)

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


def template_weights(templates: Sequence[str], rule: str) -> torch.Tensor:
    """Each template's weight (T, summing to 1) where keys are averaged over templates.

    "groups" (the reference code): the two groups, the bare prompt "{}" and the prefixed
    templates, weigh 1/2 each, split evenly within a group (a group that is absent gives its
    share to the other); "templates": a plain mean, 1/T each."""
    n = len(templates)
    if rule == "templates":
        return torch.full((n,), 1.0 / n)
    bare = torch.tensor([t == PLACEHOLDER for t in templates])
    groups = [g for g in (bare, ~bare) if bool(g.any())]
    w = torch.zeros(n)
    for g in groups:
        w[g] = 1.0 / (len(groups) * int(g.sum()))
    return w
