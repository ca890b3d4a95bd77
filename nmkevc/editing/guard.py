"""The relation guard: keep the keys of the tokens after the subject in the edit's own prompts.

Why. Specificity falls because an edit of "The capital of Germany is" also moves "The capital
of France is" (docs/method.md, "Where specificity goes"). The method writes at the subject's
last token only; but the update is a change of W that every token's key passes through, and the
tokens after the subject (" is", " has its capital in") have nearly the same keys in every
subject's prompt of the relation: what the update writes there, it writes for every subject
asked that way, at the positions the answer is read from. Neither the null-space projector
(generic text) nor C (the earlier edits' keys at their subjects) holds those keys. The guard
adds, per edited layer, μ_g K_g K_gᵀ to the keys the solve keeps, K_g the keys at every token
after the subject of each request's prompts under every context template, so the update keeps
their outputs as it keeps the earlier edits' (‖ΔW K_g‖² in its objective) and writes through
the subject's token alone, as the method intends.

It reads nothing but the edit's own prompts (no list of other subjects, which a user would have
to supply and an evaluation's neighbours could leak into). The keys are read on the model as it
is before Step 4 (the state being edited) in one forward pass through the last edited layer;
the lower edited layers' own update moves them a little, as it moves the edit's keys, which
Step 4 re-reads and these are not. They are this edit's only: C of later edits holds the stored
keys of the edit itself.
"""

from __future__ import annotations

import torch

from ..facts import EditRequest
from ..models.adapters import ArchAdapter
from ..models.tokens import encode
from .hooks import first_input, hooks, run_until, stop_after
from .tokens import templated

#: prompts per forward pass: bounds the activations held at once
CHUNK_ROWS = 256


@torch.no_grad()
def guard_keys(model, tokenizer, adapter: ArchAdapter, requests: list[EditRequest], templates: list[str],
               layers: list[int], start: str) -> dict[int, torch.Tensor]:
    """K_g per edited layer (d_ff × g, float32): the keys at every token after the subject's last
    one, in every request's prompt under every context template (g tokens in all)."""
    texts, ends = templated(requests, templates)
    got: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def grab(layer: int):
        def fn(_m, args):
            rows, pos = state["at"]
            got[layer].append(first_input(args)[rows, pos].float())

        return fn

    pre = {adapter.mlp_out_module(model, layer): grab(layer) for layer in layers}
    with hooks(pre=pre), stop_after(adapter.layer(model, max(layers))):
        for i in range(0, len(texts), CHUNK_ROWS):
            batch = encode(tokenizer, texts[i:i + CHUNK_ROWS], ends[i:i + CHUNK_ROWS], start=start)
            width = batch.input_ids.shape[1]
            cols = torch.arange(width)[None, :]
            after = (cols > batch.subject_pos[:, None]) & (cols < batch.lengths[:, None])
            if not bool(after.any()):
                continue
            state["at"] = torch.nonzero(after, as_tuple=True)
            run_until(model, batch)
    d_ff = adapter.dims(model, layers[0])[1]
    return {layer: (torch.cat(got[layer]).T.contiguous() if got[layer] else torch.zeros(d_ff, 0))
            for layer in layers}


def guard_covariance(keys: dict[int, torch.Tensor], weight: float) -> dict[int, torch.Tensor]:
    """μ_g K_g K_gᵀ per layer (float64), the term the solve adds to the keys it keeps."""
    return {layer: float(weight) * (k.double() @ k.double().T) for layer, k in keys.items()}
