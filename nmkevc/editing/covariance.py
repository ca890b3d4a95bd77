"""Key statistics of preserved knowledge: Σ_l = E[k kᵀ] and the null-space projector P_l.

These depend only on the base model, the layer and the corpus, so the repository
computes them once and caches them; this module only does the maths. Forward passes
stop right after the deepest requested layer (the rest of the network is never run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import NmkevcError
from ..models.adapters import adapter_for
from ..models.tokens import encode
from .hooks import first_input, frozen_eval, hooks, run_until, stop_after
from .nullspace import NullspaceRule


@torch.no_grad()
def key_second_moment(
    model,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    max_length: int = 256,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[dict[int, torch.Tensor], int]:
    """Σ_l (d_ff × d_ff, `dtype`) per layer over all non-padding tokens of `texts`, and the token count.

    Texts are truncated to `max_length` tokens; at most `max_tokens` tokens are used in
    total (in corpus order). `progress(texts_done, texts_total)` is called per batch."""
    if not layers:
        raise NmkevcError("no layers to collect key statistics for")
    adapter = adapter_for(model)
    docs = [t for t in texts if t and t.strip()]
    if not docs:
        raise NmkevcError("the statistics corpus is empty")
    layers = sorted(set(layers))
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:  # never feed more positions than the model has
        max_length = min(max_length, int(limit))
    acc: dict[int, torch.Tensor] = {}
    state = {"n": 0, "keep": None}
    cap = max_tokens if max_tokens is not None else float("inf")

    def collect(layer):
        def fn(_m, args):
            x = first_input(args)[state["keep"]].float()
            s = x.T @ x
            acc[layer] = acc[layer] + s.to(dtype) if layer in acc else s.to(dtype)

        return fn

    pre = {adapter.mlp_out_module(model, layer): collect(layer) for layer in layers}
    done = 0
    with frozen_eval(model), hooks(pre=pre), stop_after(adapter.layer(model, layers[-1])):
        for start in range(0, len(docs), batch_size):
            if state["n"] >= cap:
                break
            chunk = docs[start : start + batch_size]
            # corpus text as the tokenizer encodes it by default, not a prompt: Σ is cached per
            # (base, weight, corpus, tokens) and shared by every edit, whatever its start rule
            batch = encode(tokenizer, chunk, max_length=max_length, start="tokenizer")
            keep = batch.attention_mask.bool()
            room = cap - state["n"]
            if keep.sum() > room:  # take the first `room` tokens in reading order
                order = keep.flatten().cumsum(0).view_as(keep)
                keep = keep & (order <= room)
            state["keep"] = keep
            run_until(model, batch)
            state["n"] += int(keep.sum())
            done = start + len(chunk)
            if progress is not None:
                progress(done, len(docs))
    if state["n"] == 0:
        raise NmkevcError("the statistics corpus yielded no tokens")
    if progress is not None and done < len(docs):
        progress(len(docs), len(docs))
    return {layer: acc[layer] / state["n"] for layer in layers}, state["n"]


def nullspace_projector(sigma: torch.Tensor, rule: NullspaceRule) -> tuple[torch.Tensor, int]:
    """P = Û Ûᵀ (float32) over the eigenvectors of Σ that `rule` picks; returns (P, directions kept)."""
    if sigma.dim() != 2 or sigma.shape[0] != sigma.shape[1]:
        raise NmkevcError(f"key second moment must be square, got shape {tuple(sigma.shape)}")
    s = sigma.double()
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)  # ascending
    n_kept = rule.count(evals)
    basis = evecs[:, :n_kept]
    return (basis @ basis.T).float(), n_kept
