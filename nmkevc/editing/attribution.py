"""Step 2: which neurons carry the fact today (log-probability-increase attribution).

For prompt p, layer l, neuron i:  s[p, i] = log p(w | N(r + A·m_i·W[:, i])) − log p(w | N(r)),
with N the final norm applied *linearly* with the statistics of the model's real final
hidden state at p's last token. Because N is linear there, the perturbed logits are
L0[p] + (A·m[p, i] / σ_p) · B[:, i] with B = U · N_lin(W) (vocab × d_ff) independent of
the prompt, so B is computed once per layer, chunk by chunk over the vocabulary, and the
log-sum-exp over the vocabulary is accumulated across chunks: memory stays bounded by
`attribution_chunk` elements whatever the vocabulary, d_ff or number of prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..models.adapters import ArchAdapter
from .hooks import first_input, hidden_of, hooks, run_base
from .tokens import Batch


@dataclass
class LayerReadout:
    """What Step 2 reads from one forward pass, at each prompt's last token."""

    m: torch.Tensor  # (P, d_ff) neuron coefficients = input of W_l
    r: torch.Tensor  # (P, d_model) residual entering the MLP (layer output − MLP output)


@dataclass
class Readout:
    layers: dict[int, LayerReadout]
    x_final: torch.Tensor  # (P, d_model) final hidden state before the final norm
    top: torch.Tensor  # (P,) the model's top-1 next token


@torch.no_grad()
def read_model(model, adapter: ArchAdapter, batch: Batch, layers: Sequence[int]) -> Readout:
    """One forward pass of the (unedited) model, capturing m, r and the final state at the last tokens.

    r = (decoder layer output) − (W_l module output): the residual stream plus attention,
    right for sequential blocks (Llama, GPT-2) and parallel ones (GPT-J, GPT-NeoX) alike."""
    rows, last = batch.rows, batch.last
    got: dict[tuple[str, int], torch.Tensor] = {}
    pre, post = {}, {}

    def grab_in(key):
        def fn(_m, args):
            got[key] = first_input(args)[rows, last].float().clone()

        return fn

    def grab_out(key):
        def fn(_m, _args, out):
            got[key] = hidden_of(out)[rows, last].float().clone()

        return fn

    for layer in layers:
        w_mod = adapter.mlp_out_module(model, layer)
        pre[w_mod] = grab_in(("m", layer))
        post[w_mod] = grab_out(("mlp", layer))
        post[adapter.layer(model, layer)] = grab_out(("out", layer))
    pre[adapter.final_norm_module(model)] = grab_in(("final", -1))
    with hooks(pre=pre, post=post):
        final = run_base(model, batch)
    head = adapter.lm_head_module(model)
    top = head(final[rows, last]).float().argmax(-1)
    per_layer = {
        layer: LayerReadout(m=got[("m", layer)], r=got[("out", layer)] - got[("mlp", layer)])
        for layer in layers
    }
    return Readout(layers=per_layer, x_final=got[("final", -1)], top=top)


def norm_scale(adapter: ArchAdapter, model, x_final: torch.Tensor) -> torch.Tensor:
    """σ_p of the final norm at each prompt's real final state (P,)."""
    _, _, eps = adapter.final_norm_params(model)
    x = x_final.double()
    if adapter.norm_kind == "rms":
        var = x.pow(2).mean(-1)
    else:
        var = x.var(-1, unbiased=False)
    return (var + eps).sqrt().float()


def linear_norm(adapter: ArchAdapter, model, x: torch.Tensor, sigma: torch.Tensor, dim: int = -1):
    """N(x) with fixed σ: RMS → g·x/σ; LayerNorm → g·(x − mean x)/σ (its own mean, the state's σ).

    `x` holds vectors along `dim`; `sigma` broadcasts against the other dims."""
    weight, _, _ = adapter.final_norm_params(model)
    g = weight.detach().float()
    if adapter.norm_kind != "rms":
        x = x - x.mean(dim=dim, keepdim=True)
    shape = [1] * x.dim()
    shape[dim] = -1
    return x * g.view(shape) / sigma


@torch.no_grad()
def neuron_scores(
    model,
    adapter: ArchAdapter,
    readout: Readout,
    layer: int,
    amplification: float = 30.0,
    prob_clamp: float = 1e-8,
    chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """S (P × d_ff) for one layer: the log-prob increase of each prompt's top-1 token."""
    lr = readout.layers[layer]
    top = readout.top
    n_p = int(top.numel())
    unembed = adapter.lm_head_module(model).weight.detach().float()  # (V, d_model)
    vocab = unembed.shape[0]
    w = adapter.to_out_in(adapter.weight(model, layer).detach()).float()  # (d_model, d_ff)
    d_ff = w.shape[1]
    sigma = norm_scale(adapter, model, readout.x_final)  # (P,)
    w_n = linear_norm(adapter, model, w, torch.ones(()), dim=0)  # g ⊙ (centred) W, (d_model, d_ff)
    base = linear_norm(adapter, model, lr.r, sigma[:, None]) @ unembed.T  # L0 (P, V)
    coef = amplification * lr.m / sigma[:, None]  # (P, d_ff)

    lo, hi = math.log(prob_clamp), math.log1p(-prob_clamp)
    base_lp = torch.log_softmax(base, -1).gather(1, top[:, None])[:, 0].clamp(lo, hi)  # (P,)
    b_top = unembed[top] @ w_n  # (P, d_ff): B[w_p, i]
    target = base.gather(1, top[:, None]) + coef * b_top  # perturbed logit of w_p, (P, d_ff)

    v_chunk = max(1, min(vocab, chunk_elements // max(1, d_ff)))
    p_chunk = max(1, chunk_elements // (d_ff * v_chunk))
    lse = torch.full((n_p, d_ff), float("-inf"))
    for v0 in range(0, vocab, v_chunk):
        b_t = (unembed[v0 : v0 + v_chunk] @ w_n).T.contiguous()  # (d_ff, Vc)
        for p0 in range(0, n_p, p_chunk):
            ps = slice(p0, p0 + p_chunk)
            logits = torch.addcmul(base[ps, None, v0 : v0 + v_chunk], coef[ps, :, None], b_t[None])
            lse[ps] = torch.logaddexp(lse[ps], torch.logsumexp(logits, dim=-1))
    return (target - lse).clamp(lo, hi) - base_lp[:, None]


def attribution_scores(
    model,
    adapter: ArchAdapter,
    batch: Batch,
    layers: Sequence[int],
    amplification: float = 30.0,
    prob_clamp: float = 1e-8,
    chunk_elements: int = 1 << 24,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[int, torch.Tensor], Readout]:
    """S per layer (prompts × d_ff) for all prompts of `batch` (one forward, then the products)."""
    readout = read_model(model, adapter, batch, layers)
    scores = {}
    for k, layer in enumerate(layers):
        scores[layer] = neuron_scores(model, adapter, readout, layer, amplification, prob_clamp,
                                      chunk_elements)
        if progress is not None:
            progress(k + 1)
    return scores, readout
