"""Step 2: which neurons carry the fact today (log-probability-increase attribution).

For prompt p, layer l, neuron i:  s[p, i] = log p(w | N(r + A·m_i·W[:, i])) − log p(w | N(r)),
with N the final norm applied *linearly* with the statistics of the model's real final
hidden state at p's last token. Because N is linear there, the perturbed logits are
L0[p] + (A·m[p, i] / σ_p) · B[:, i] with B = U · N_lin(W) (vocab × d_ff) independent of
the prompt, so B is computed once per layer, chunk by chunk over the vocabulary. What costs
is the log-sum-exp over the vocabulary for every (prompt, neuron) pair: for a few prompts it
is taken directly, in cache-sized blocks; for a batch it comes from moments of B (matrix
products) with a proven error bound, and the rare pairs outside that bound are taken directly.
Memory stays bounded whatever the vocabulary, d_ff or number of prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..models.adapters import ArchAdapter
from .hooks import first_input, hidden_of, hooks, run_base
from .tokens import Batch

#: elements of one working block of the perturbed log-sum-exp (1 MiB of float32: cache-sized)
CACHE_BLOCK = 1 << 18
#: vocabulary rows of B = U · N(W) computed at once (d_ff × this many floats)
VOCAB_CHUNK = 4096
#: from this many prompts on, the perturbed log-sum-exp uses the moment form (matrix products);
#: below it the direct exponentials are cheaper (measured on SmolLM2: docs/benchmarks.md)
MOMENTS_MIN_PROMPTS = 12
#: order K of the moment series and the radius τ within which it is used; the error bound
#: τ^(K+1) e^(2τ) / (K+1)! is 1.3e-9 at K = 16, τ = 1.75
MOMENTS_ORDER = 16
MOMENTS_RADIUS = 1.75
#: the smallest nonzero magnitude an operand of the moment products may have (2^-62): any product
#: of two such operands is still a normal float32 (≥ 2^-124), never a denormal. Denormal operands
#: or results send the CPU's products and multiplies down a slow path, and on SmolLM2's B the
#: powers B^k reach them (docs/method.md, Step 2).
UNDERFLOW = 2.0**-62
#: the exact form's one-pass bound: for a pair with τ̄ = |coef| · max_v ‖U_v‖ · ‖w_n[:, i]‖ ≤ this,
#: every exp(base − max base + coef · B) is ≤ e^40 (no overflow) and their sum is ≥ e^-40 (the
#: top base token's term), so the terms float32 flushes to zero (< e^-87) change it by less than
#: vocab · e^-47 relatively: no per-pair maximum is needed (the rare pairs beyond it keep theirs).
SHIFT_FREE_BOUND = 40.0


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
    unembed = adapter.lm_head_module(model).weight.detach().float()  # (V, d_model)
    w = adapter.to_out_in(adapter.weight(model, layer).detach()).float()  # (d_model, d_ff)
    sigma = norm_scale(adapter, model, readout.x_final)  # (P,)
    w_n = linear_norm(adapter, model, w, torch.ones(()), dim=0)  # g ⊙ (centred) W, (d_model, d_ff)
    base = linear_norm(adapter, model, lr.r, sigma[:, None]) @ unembed.T  # L0 (P, V)
    coef = amplification * lr.m / sigma[:, None]  # (P, d_ff)

    lo, hi = math.log(prob_clamp), math.log1p(-prob_clamp)
    base_lp = torch.log_softmax(base, -1).gather(1, top[:, None])[:, 0].clamp(lo, hi)  # (P,)
    b_top = unembed[top] @ w_n  # (P, d_ff): B[w_p, i]
    target = base.gather(1, top[:, None]) + coef * b_top  # perturbed logit of w_p, (P, d_ff)

    lse = _perturbed_lse(unembed, w_n, base, coef, chunk_elements)
    return (target - lse).clamp(lo, hi) - base_lp[:, None]


def _perturbed_lse(unembed: torch.Tensor, w_n: torch.Tensor, base: torch.Tensor, coef: torch.Tensor,
                   chunk_elements: int) -> torch.Tensor:
    """logsumexp_v (base[p, v] + coef[p, i] · B[v, i]) for every prompt p and neuron i (P × d_ff),
    with B = unembed · w_n (vocab × d_ff).

    Taken exactly, this is P × d_ff × vocab exponentials, which grows with the batch. Past a
    few prompts the moment form below does it with matrix products instead, and only the
    (prompt, neuron) pairs outside its proven accuracy radius are taken exactly."""
    n_p, d_ff = coef.shape
    if n_p < MOMENTS_MIN_PROMPTS:
        return _exact_lse(unembed, w_n, base, coef, [torch.arange(d_ff)] * n_p, chunk_elements)
    lse, far = _moment_lse(unembed, w_n, base, coef, chunk_elements)
    rows = [torch.nonzero(far[p])[:, 0] for p in range(n_p)]
    exact = _exact_lse(unembed, w_n, base, coef, rows, chunk_elements)
    lse[far] = exact[far]
    return lse


def _vocab_chunk(vocab: int, d_ff: int, chunk_elements: int) -> int:
    """Vocabulary rows of B computed at once, so that B's chunk holds ≤ chunk_elements floats."""
    return max(1, min(vocab, VOCAB_CHUNK, chunk_elements // d_ff))


def _moment_lse(unembed: torch.Tensor, w_n: torch.Tensor, base: torch.Tensor, coef: torch.Tensor,
                chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The perturbed log-sum-exp from moments of B under each prompt's unperturbed distribution.

    With q_p = softmax(base[p]) and x = coef[p, i] · B[v, i]:
        Σ_v exp(base[p, v] + x) = exp(lse(base[p])) · Σ_k coef[p, i]^k / k! · M_k[p, i],
        M_k = q · B^k   (one (P × vocab) · (vocab × d_ff) product per order k).
    Truncated after order K, each term's remainder is at most τ^(K+1) e^τ / (K+1)! with
    τ = |coef[p, i]| · max_v |B[v, i]|, and the sum is at least e^(−τ), so the log-sum-exp is
    off by at most τ^(K+1) e^(2τ) / (K+1)! — below 2e-9 for τ ≤ MOMENTS_RADIUS (plus the
    underflow terms `_add_power_moments` and q < UNDERFLOW drop: below 1e-10). Returns the
    values and the mask of pairs with τ beyond the radius, which the caller takes exactly."""
    n_p, d_ff = coef.shape
    vocab = unembed.shape[0]
    v_chunk = _vocab_chunk(vocab, d_ff, chunk_elements)
    lse0 = torch.logsumexp(base, -1)
    moments = torch.zeros(MOMENTS_ORDER + 1, n_p, d_ff, dtype=torch.float64)
    b_max = torch.zeros(d_ff)
    # two chunk-sized buffers, reused: a fresh 25 MB tensor per pass costs page faults that take
    # longer than the pass itself
    bufs = torch.empty(2, v_chunk, d_ff)
    for v0 in range(0, vocab, v_chunk):
        vc = min(v_chunk, vocab - v0)
        b = torch.matmul(unembed[v0 : v0 + vc], w_n, out=bufs[0, :vc])  # (Vc, d_ff)
        scale = torch.abs(b, out=bufs[1, :vc]).amax(0)
        torch.maximum(b_max, scale, out=b_max)
        q = torch.exp(base[:, v0 : v0 + vc] - lse0[:, None])  # (P, Vc)
        q.masked_fill_(q < UNDERFLOW, 0.0)
        moments[0] += q.sum(-1, dtype=torch.float64)[:, None]
        _add_power_moments(moments, q, b, scale, bufs[1, :vc])
    c = coef.double()
    series = moments[MOMENTS_ORDER] / math.factorial(MOMENTS_ORDER)
    for k in range(MOMENTS_ORDER - 1, -1, -1):  # Horner
        series = series * c + moments[k] / math.factorial(k)
    lse = (lse0[:, None].double() + series.clamp_min(1e-300).log()).float()
    return lse, coef.abs() * b_max > MOMENTS_RADIUS


def underflow_stages(order: int = MOMENTS_ORDER) -> list[tuple[int, float]]:
    """(k, θ): from order k on, the entries of B/s (s: the chunk's column maximum) below θ in
    magnitude are left out of the powers. Stages start at orders 1, 2, 4, 8, ...; θ of a stage is
    the smallest magnitude whose powers stay ≥ UNDERFLOW until the next stage starts, so no
    power is ever a nonzero float below UNDERFLOW. What is left out at stage (k, θ) changes the
    series by at most (τθ)^k e^(τθ) / k! per unit of probability (τ ≤ MOMENTS_RADIUS):
    `underflow_bound` sums it (1e-11 at K = 16)."""
    starts = [1]
    while starts[-1] * 2 <= order:
        starts.append(starts[-1] * 2)
    ends = [*starts[1:], order + 1]
    return [(k, UNDERFLOW ** (1.0 / (end - 1))) for k, end in zip(starts, ends, strict=True)]


def underflow_bound(order: int = MOMENTS_ORDER, radius: float = MOMENTS_RADIUS) -> float:
    """The most the underflow stages change Σ_v q_v exp(c·B_v) inside the radius (absolute; the
    sum itself is at least e^(−radius))."""
    return sum((radius * t) ** k * math.exp(radius * t) / math.factorial(k) for k, t in underflow_stages(order))


def _add_power_moments(moments: torch.Tensor, q: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                       work: torch.Tensor | None = None) -> None:
    """moments[k] += q · b^k for k = 1..K (float64 accumulators), through the powers of the
    column-normalised u = b / scale so that every operand of every product is 0 or at least
    UNDERFLOW in magnitude (see `underflow_stages`); the scale's powers come back in float64.
    b is overwritten (it becomes u); `work`, b's shape, holds the powers (allocated if None).

    A stage's drop is one pass (hardshrink: |u| ≤ θ → 0). The running power needs no drop of
    its own: it is next multiplied by the shrunk u, which zeroes the same entries, and until
    then it is ≥ UNDERFLOW there (the previous stage's bound), never a denormal."""
    s = scale.clamp_min(torch.finfo(torch.float32).tiny)
    unit = b.div_(s)
    power = torch.empty_like(b) if work is None else work
    s64 = s.double()
    s_k = torch.ones_like(s64)
    stages = dict(underflow_stages(moments.shape[0] - 1))
    for k in range(1, moments.shape[0]):
        if k in stages:
            torch.hardshrink(unit, stages[k], out=unit)
        if k == 1:
            power.copy_(unit)
        else:
            power.mul_(unit)
        s_k = s_k * s64
        moments[k] += (q @ power).double().mul_(s_k)


def _exact_lse(unembed: torch.Tensor, w_n: torch.Tensor, base: torch.Tensor, coef: torch.Tensor,
               rows: list[torch.Tensor], chunk_elements: int) -> torch.Tensor:
    """logsumexp_v (base[p, v] + coef[p, i] · B[v, i]) exactly for the neurons rows[p] of each
    prompt p (P × d_ff; other entries −inf), B computed one vocabulary chunk at a time.

    The exponentials are taken in blocks small enough to stay in the CPU cache. A pair whose
    bound τ̄ (`SHIFT_FREE_BOUND`) allows it takes three passes per block: one fused multiply-add
    against base − max(base), exp, sum, summed across chunks as plain numbers. Only the rare pair
    beyond the bound needs its own maximum subtracted first (seven passes, merged in log space)."""
    n_p, d_ff = coef.shape
    vocab = unembed.shape[0]
    v_chunk = _vocab_chunk(vocab, d_ff, chunk_elements)
    block = max(1, min(chunk_elements, CACHE_BLOCK))
    lse = torch.full((n_p, d_ff), float("-inf"))
    todo = [(p, idx) for p, idx in enumerate(rows) if idx.numel()]
    if not todo:
        return lse
    # τ̄[p, i] = |coef| · max_v ‖U_v‖ · ‖w_n[:, i]‖ ≥ |coef| · max_v |B[v, i]| (Cauchy–Schwarz)
    bound = coef.abs() * (unembed.norm(dim=1).max() * w_n.norm(dim=0))
    far = [(p, idx[bound[p, idx] > SHIFT_FREE_BOUND]) for p, idx in todo]
    far = [(p, idx) for p, idx in far if idx.numel()]
    peak0 = base.amax(-1, keepdim=True)
    shifted = base - peak0
    total = torch.zeros(n_p, d_ff, dtype=torch.float64)
    # only the columns of B some prompt needs (after the moment form: a few neurons of many)
    need = torch.unique(torch.cat([idx for _, idx in todo]))
    at = torch.full((d_ff,), -1, dtype=torch.long)
    at[need] = torch.arange(need.numel())
    w_t = w_n.T[need].contiguous()  # (needed neurons, d_model)
    far_lse = torch.full((n_p, d_ff), float("-inf"))
    buf = torch.empty(block)
    b_buf = torch.empty(need.numel() * v_chunk)  # reused chunk to chunk (no page faults per chunk)
    for v0 in range(0, vocab, v_chunk):
        vc = min(v_chunk, vocab - v0)
        # (needed, Vc): those columns of B[v0:v0+Vc, :]ᵀ
        b_t = torch.matmul(w_t, unembed[v0 : v0 + vc].T, out=b_buf[: need.numel() * vc].view(-1, vc))
        i_blk = max(1, min(d_ff, block // vc))
        # every needed pair in one pass (the far ones' values here are discarded below)
        for p, sel, rows_b in _row_blocks(todo, b_t, at, d_ff, i_blk):
            x = buf[: rows_b.shape[0] * vc].view(rows_b.shape[0], vc)
            torch.addcmul(shifted[p, v0 : v0 + vc], coef[p, sel, None], rows_b, out=x)
            total[p, sel] += x.exp_().sum(-1)
        for p, sel, rows_b in _row_blocks(far, b_t, at, d_ff, i_blk):
            x = buf[: rows_b.shape[0] * vc].view(rows_b.shape[0], vc)
            torch.mul(coef[p, sel, None], rows_b, out=x)
            x.add_(base[p, None, v0 : v0 + vc])
            peak = x.amax(-1, keepdim=True)
            x.sub_(peak).exp_()
            part = x.sum(-1).log_().add_(peak[:, 0])
            far_lse[p, sel] = torch.logaddexp(far_lse[p, sel], part)
    near = total.log_().float().add_(peak0)
    for p, idx in todo:
        lse[p, idx] = near[p, idx]
    for p, idx in far:
        lse[p, idx] = far_lse[p, idx]
    return lse


def _row_blocks(todo, b_t: torch.Tensor, at: torch.Tensor, d_ff: int, i_blk: int):
    """(p, neurons, their rows of b_t) in blocks of at most i_blk neurons, for each (p, idx) of
    todo: a plain slice when idx is every neuron in order, else a gather. Block by block, every
    prompt in turn, so that a block's rows of b_t are still in cache for the next prompt."""
    longest = max((idx.numel() for _, idx in todo), default=0)
    for j0 in range(0, longest, i_blk):
        for p, idx in todo:
            if j0 >= idx.numel():
                continue
            whole = idx.numel() == d_ff
            sel = slice(j0, j0 + i_blk) if whole else idx[j0 : j0 + i_blk]
            yield p, sel, (b_t[sel] if whole else b_t[at[sel]])


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
