"""Step 1: the target hidden vector z of every request (one batched optimisation).

Each request r gets its own δ_r, added to the output of the last edited layer l_m at the
subject's last token of all of r's rows; the requests share forward/backward passes but
not parameters, so the sum of their losses has exactly each δ_r's own gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..facts import EditRequest
from ..models.adapters import ArchAdapter
from .hooks import hidden_of, hooks, run_base, with_hidden
from .hparams import EditHparams
from .tokens import encode, fill, target_ids, templated

#: rows (templates + KL prompt per request) optimised together; larger batches are split
#: by request, which changes nothing since every request has its own δ and its own stop.
MAX_ROWS = 96


@dataclass
class ZResult:
    z: torch.Tensor  # (d_model, n) = h + δ
    h: torch.Tensor  # (d_model, n) original output of l_m at the subject's last token (rewrite row)
    delta: torch.Tensor  # (d_model, n)
    nll: list[float]  # final target NLL per request (mean over templates and target tokens)
    kl: list[float]  # final KL(original || edited) on the KL prompt, per request
    steps: list[int]  # Adam steps taken per request
    history: list[float] = field(default_factory=list)  # total loss per forward pass (all groups)


def optimise_z(
    model,
    tokenizer,
    adapter: ArchAdapter,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    layer: int,
    hp: EditHparams,
    progress: Callable[[int], None] | None = None,
    max_rows: int = MAX_ROWS,
) -> ZResult:
    """Find δ for every request (Adam, weight decay, clamp, early stop per request); the
    model's weights must not require grad (see `frozen_eval`).

    A request stops (its δ is frozen) as soon as its target NLL is below `z_stop_loss`, so
    its z does not depend on which other requests share the batch."""
    per_group = max(1, max_rows // (len(templates) + 1))
    groups = [list(requests[i : i + per_group]) for i in range(0, len(requests), per_group)]
    parts = []
    for g, group in enumerate(groups):

        def tick(k: int, g: int = g) -> None:
            if progress is not None:
                progress(round((g * hp.z_steps + k) / len(groups)))

        parts.append(_optimise_group(model, tokenizer, adapter, group, templates, layer, hp, tick))
    return ZResult(
        z=torch.cat([p.z for p in parts], dim=1),
        h=torch.cat([p.h for p in parts], dim=1),
        delta=torch.cat([p.delta for p in parts], dim=1),
        nll=[x for p in parts for x in p.nll],
        kl=[x for p in parts for x in p.kl],
        steps=[x for p in parts for x in p.steps],
        history=[x for p in parts for x in p.history],
    )


def _optimise_group(model, tokenizer, adapter, requests, templates, layer, hp, progress) -> ZResult:
    """One batched optimisation: rows r·T + t carry request r's prompt under template t
    followed by its target; the last n rows are the KL prompts."""
    n, n_t = len(requests), len(templates)
    tgt = [target_ids(tokenizer, r.target_new) for r in requests]
    texts, ends = templated(requests, templates)
    suffixes = [tgt[i // n_t][:-1] for i in range(n * n_t)]
    for req in requests:  # one KL row per request: "{subject} is a"
        text, end = fill("{}", hp.kl_prompt, req.subject)
        texts.append(text)
        ends.append(end)
        suffixes.append([])
    batch = encode(tokenizer, texts, ends, suffixes)
    req_of_row = torch.cat([torch.arange(n).repeat_interleave(n_t), torch.arange(n)])
    kl_rows = torch.arange(n * n_t, n * n_t + n)
    rewrite_rows = torch.arange(n) * n_t

    # target tokens: row, position predicting it, token id, weight 1/(T_r · n_t)
    t_row, t_pos, t_tok, t_w = [], [], [], []
    for row in range(n * n_t):
        ids = tgt[row // n_t]
        start = int(batch.prompt_lengths[row]) - 1
        for j, tok in enumerate(ids):
            t_row.append(row)
            t_pos.append(start + j)
            t_tok.append(tok)
            t_w.append(1.0 / (len(ids) * n_t))
    t_row_t, t_pos_t, t_tok_t = (torch.tensor(x, dtype=torch.long) for x in (t_row, t_pos, t_tok))
    t_w_t = torch.tensor(t_w, dtype=torch.float32)
    t_req = req_of_row[t_row_t]

    head = adapter.lm_head_module(model)
    block = adapter.layer(model, layer)
    d_model = adapter.dims(model, layer)[0]
    delta = torch.zeros(n, d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.z_lr)
    spos = batch.subject_pos
    rows = batch.rows
    captured: dict[str, torch.Tensor] = {}

    def add_delta(_m, _a, out):
        hidden = hidden_of(out)
        if "h" not in captured:
            captured["h"] = hidden[rewrite_rows, spos[rewrite_rows]].detach().float().clone()
        new = hidden.index_put((rows, spos), delta[req_of_row].to(hidden.dtype), accumulate=True)
        return with_hidden(out, new)

    p0: torch.Tensor | None = None
    history: list[float] = []
    nll = kl = torch.zeros(n)
    active = torch.ones(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    with hooks(post={block: add_delta}):
        for step in range(hp.z_steps + 1):
            final = run_base(model, batch)
            logp = F.log_softmax(head(final[t_row_t, t_pos_t]).float(), dim=-1)
            tok_nll = -logp.gather(1, t_tok_t[:, None])[:, 0]
            nll = torch.zeros(n).index_add(0, t_req, tok_nll * t_w_t)
            kl_logp = F.log_softmax(head(final[kl_rows, batch.last[kl_rows]]).float(), dim=-1)
            if p0 is None:
                p0 = kl_logp.detach()
            kl = (p0.exp() * (p0 - kl_logp)).sum(-1)
            h_norm2 = captured["h"].pow(2).sum(-1).clamp_min(1e-12)
            decay = hp.z_weight_decay * delta.pow(2).sum(-1) / h_norm2
            loss = nll + hp.z_kl_factor * kl + decay
            history.append(float(loss.detach().sum()))
            active &= nll.detach() >= hp.z_stop_loss
            if step == hp.z_steps or not bool(active.any()):
                break
            opt.zero_grad()
            loss.sum().backward()
            with torch.no_grad():
                frozen = delta[~active].clone()
            opt.step()
            steps += active.long()
            with torch.no_grad():
                delta[~active] = frozen
                limit = hp.z_clamp * h_norm2.sqrt()
                norm = delta.norm(dim=-1)
                scale = torch.where(norm > limit, limit / norm.clamp_min(1e-12), torch.ones_like(norm))
                delta.mul_(scale[:, None])
            progress(step + 1)
    h = captured["h"]
    d = delta.detach().clone()
    return ZResult(
        z=(h + d).T.contiguous(),
        h=h.T.contiguous(),
        delta=d.T.contiguous(),
        nll=[float(x) for x in nll.detach()],
        kl=[float(x) for x in kl.detach()],
        steps=[int(x) for x in steps],
        history=history,
    )
