"""Context templates: the bare prompt plus short model-sampled prefixes.

Editing a fact only at the bare prompt makes it brittle; the method averages keys and
the target loss over a few random-looking contexts. They are sampled once per base
model and stored, so the sampling here must be a pure function of (model, seed): a
private generator, no global RNG, no `generate()` defaults that drift between versions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.adapters import adapter_for
from ..models.tokens import Batch, encode, plain_ids
from .hooks import frozen_eval, run_base
from .hparams import EditHparams
from .tokens import escape_braces


@torch.no_grad()
def generate_context_templates(  # the defaults are an edit's, EditHparams' (its class attributes)
    model,
    tokenizer,
    seed: int = EditHparams.seed,
    n_tokens: int = EditHparams.context_n_tokens,
    prefixes: Sequence[str] = EditHparams.context_prefixes,
    top_k: int = 5,
    count: str = EditHparams.context_count,
    start: str = EditHparams.prompt_start,
) -> list[str]:
    """["{}"] + one "<prefix + sampled tokens>. {}" per prefix (braces escaped).

    `count` "total" (the reference code): prefix word and sampled tokens together are
    `n_tokens` tokens (the start token of rule `start` is not counted); "sampled": `n_tokens`
    sampled after the prefix. Sampling is top-k (k=5) from the model's next-token distribution
    with special tokens excluded, so the prefixes are plain, fluent-ish text."""
    if count not in ("total", "sampled"):
        raise ValueError(f"count must be 'total' or 'sampled', got {count!r}")
    head = adapter_for(model).lm_head_module(model)
    special = sorted({int(t) for t in getattr(tokenizer, "all_special_ids", []) or []})
    gen = torch.Generator().manual_seed(int(seed))
    templates = ["{}"]
    with frozen_eval(model):
        for prefix in prefixes:
            ids = encode(tokenizer, [prefix], start=start).input_ids
            budget = n_tokens - len(plain_ids(tokenizer, prefix)) if count == "total" else n_tokens
            new: list[int] = []
            for _ in range(max(0, budget)):
                hidden = run_base(model, encode_ids(ids))
                logits = head(hidden[0, -1]).float()
                if special:
                    logits[torch.tensor(special, dtype=torch.long)] = float("-inf")
                k = min(top_k, int(torch.isfinite(logits).sum()))
                top = torch.topk(logits, k)
                choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)
                tid = int(top.indices[choice])
                new.append(tid)
                ids = torch.cat([ids, torch.tensor([[tid]])], dim=1)
            text = prefix + tokenizer.decode(new, skip_special_tokens=True)
            templates.append(escape_braces(text) + ". {}")
    return templates


def encode_ids(ids: torch.Tensor):
    """A one-row batch of raw ids (no padding)."""
    n = ids.shape[1]
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        lengths=torch.tensor([n]),
        prompt_lengths=torch.tensor([n]),
        subject_pos=torch.tensor([-1]),
    )
