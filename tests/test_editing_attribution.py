"""Step 2: the chunked, vectorised attribution equals a naive per-neuron computation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import attribution
from nmkevc.editing.attribution import _exact_lse, _moment_lse, _perturbed_lse, attribution_scores, read_model
from nmkevc.models.adapters import adapter_for
from nmkevc.models.tokens import encode

PROMPTS = ["The capital of France is", "Paris", "Because it rained, I stayed home and the capital of"]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gptj", "gpt_neox"])
def loaded(request, model_dirs):
    d = model_dirs[request.param]
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    return model, AutoTokenizer.from_pretrained(d)


def naive_score(model, adapter, readout, layer, p, i, amp=30.0, clamp=1e-8):
    """s[p, i] straight from docs/method.md, one neuron at a time."""
    r = readout.layers[layer].r[p].double()
    m = readout.layers[layer].m[p, i].double()
    w = adapter.to_out_in(adapter.weight(model, layer)).detach().double()[:, i]
    x_final = readout.x_final[p].double()
    g, _, eps = adapter.final_norm_params(model)
    g = g.detach().double()
    if adapter.norm_kind == "rms":
        sigma = (x_final.pow(2).mean() + eps).sqrt()

        def norm(x):
            return g * x / sigma
    else:
        sigma = (x_final.var(unbiased=False) + eps).sqrt()

        def norm(x):
            return g * (x - x.mean()) / sigma
    unembed = adapter.lm_head_module(model).weight.detach().double()
    top = int(readout.top[p])

    def logp(x):
        prob = torch.softmax(unembed @ norm(x), -1)[top].clamp(clamp, 1 - clamp)
        return math.log(float(prob))

    return logp(r + amp * m * w) - logp(r)


@torch.no_grad()
def test_vectorised_scores_equal_the_naive_loop(loaded):
    model, tok = loaded
    adapter = adapter_for(model)
    layers = [1, 2]
    batch = encode(tok, PROMPTS)
    scores, readout = attribution_scores(model, adapter, batch, layers, chunk_elements=5000)
    d_ff = adapter.dims(model)[1]
    for layer in layers:
        assert scores[layer].shape == (len(PROMPTS), d_ff)
        for p in range(len(PROMPTS)):
            for i in (0, 17, d_ff - 1):
                assert float(scores[layer][p, i]) == pytest.approx(
                    naive_score(model, adapter, readout, layer, p, i), abs=2e-4
                )


@torch.no_grad()
def test_chunking_does_not_change_scores(loaded):
    model, tok = loaded
    adapter = adapter_for(model)
    batch = encode(tok, PROMPTS)
    big, _ = attribution_scores(model, adapter, batch, [1], chunk_elements=1 << 26)
    small, _ = attribution_scores(model, adapter, batch, [1], chunk_elements=700)
    torch.testing.assert_close(big[1], small[1], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_moment_form_equals_the_direct_scores(loaded, monkeypatch):
    """A batch's scores (moments + exact fallback) equal the direct exponentials."""
    model, tok = loaded
    adapter = adapter_for(model)
    batch = encode(tok, PROMPTS * 2)
    monkeypatch.setattr(attribution, "MOMENTS_MIN_PROMPTS", 10**9)
    direct, _ = attribution_scores(model, adapter, batch, [1, 2])
    monkeypatch.setattr(attribution, "MOMENTS_MIN_PROMPTS", 1)
    moments, _ = attribution_scores(model, adapter, batch, [1, 2])
    for layer in (1, 2):
        torch.testing.assert_close(moments[layer], direct[layer], rtol=0, atol=2e-5)


def _lse_reference(unembed, w_n, base, coef):
    b = unembed.double() @ w_n.double()
    return torch.logsumexp(base.double()[:, None, :] + coef.double()[:, :, None] * b.T[None], -1)


def _synthetic_lse_case(seed: int, vocab: int, d_ff: int, n_p: int, d_model: int = 16):
    """Random unembedding, normed W, base logits and coefficients (unit scale) for the lse forms."""
    gen = torch.Generator().manual_seed(seed)
    unembed = torch.randn(vocab, d_model, generator=gen)
    w_n = torch.randn(d_model, d_ff, generator=gen) * 0.1
    base = torch.randn(n_p, vocab, generator=gen) * 3
    return unembed, w_n, base, torch.randn(n_p, d_ff, generator=gen)


@torch.no_grad()
def test_moment_series_is_within_its_bound_and_far_pairs_are_exact():
    """Inside the radius the series meets its error bound; outside it every pair is taken exactly."""
    d_ff = 24
    unembed, w_n, base, coef = _synthetic_lse_case(0, vocab=300, d_ff=d_ff, n_p=5)
    coef[0, :6] = torch.tensor([40.0, -40.0, 30.0, -30.0, 50.0, 45.0])  # far outside the radius
    ref = _lse_reference(unembed, w_n, base, coef)
    series, far = _moment_lse(unembed, w_n, base, coef, 1 << 20)
    assert far[0, :6].all() and far.float().mean() < 0.5
    inside = ~far
    assert (series.double() - ref).abs()[inside].max() < 1e-5
    assert (series.double() - ref).abs()[far].max() > 1e-2  # why the fallback exists
    combined = _perturbed_lse(unembed, w_n, base, coef, 1 << 20)
    assert (combined.double() - ref).abs().max() < 1e-5
    rows = [torch.tensor([1, 5]), torch.tensor([], dtype=torch.long)] + [torch.arange(d_ff)] * 3
    part = _exact_lse(unembed, w_n, base, coef, rows, 1 << 20)
    assert torch.isinf(part[1]).all() and torch.isinf(part[0, [0, 2, 3]]).all()
    assert (part[0, [1, 5]].double() - ref[0, [1, 5]]).abs().max() < 1e-5
    # a few neurons only (B's other columns are never computed), in any order
    few = [torch.tensor([7, 1]), torch.tensor([], dtype=torch.long), torch.tensor([1]), torch.tensor([20, 3]),
           torch.tensor([], dtype=torch.long)]
    part = _exact_lse(unembed, w_n, base, coef, few, 1 << 20)
    for p, idx in enumerate(few):
        if idx.numel():
            assert (part[p, idx].double() - ref[p, idx]).abs().max() < 1e-5
        assert torch.isinf(part[p, [i for i in range(d_ff) if i not in idx.tolist()]]).all()


@torch.no_grad()
def test_exact_form_gives_pairs_beyond_the_shift_free_bound_their_own_maximum():
    """Pairs with τ̄ beyond SHIFT_FREE_BOUND would overflow the one-pass sum; they are still exact."""
    d_ff, n_p = 32, 3
    unembed, w_n, base, coef = _synthetic_lse_case(1, vocab=400, d_ff=d_ff, n_p=n_p)
    coef[1, :8] = torch.tensor([400.0, -400.0, 300.0, -250.0, 500.0, 450.0, 60.0, -80.0])
    bound = coef.abs() * unembed.norm(dim=1).max() * w_n.norm(dim=0)
    beyond = bound > attribution.SHIFT_FREE_BOUND
    assert beyond[1, :8].all() and beyond.float().mean() < 0.2
    ref = _lse_reference(unembed, w_n, base, coef)
    # the one-pass sum overflows float32 for the largest of them: why they take the other path
    b = unembed @ w_n
    one_pass = torch.exp(base[1, :, None] - base[1].max() + coef[1, None, :8] * b[:, :8]).sum(0)
    assert torch.isinf(one_pass).any()
    for chunk in (1 << 20, 1000):  # one vocabulary chunk, and several
        got = _exact_lse(unembed, w_n, base, coef, [torch.arange(d_ff)] * n_p, chunk)
        assert ((got.double() - ref).abs() / ref.abs().clamp_min(1)).max() < 1e-6


@torch.no_grad()
def test_readout_uses_true_last_tokens(loaded):
    """Padding must not move what is read: each padded row equals its unpadded run."""
    model, tok = loaded
    adapter = adapter_for(model)
    batch = encode(tok, PROMPTS)
    readout = read_model(model, adapter, batch, [1])
    for p, text in enumerate(PROMPTS):
        alone = encode(tok, [text])
        single = read_model(model, adapter, alone, [1])
        logits = model(**alone.model_inputs()).logits[0, -1]
        assert int(readout.top[p]) == int(logits.argmax())
        torch.testing.assert_close(readout.layers[1].m[p], single.layers[1].m[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(readout.layers[1].r[p], single.layers[1].r[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(readout.x_final[p], single.x_final[0], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_residual_is_the_stream_entering_the_mlp(model_dirs):
    """Sequential block (Llama): r = the input of the post-attention norm."""
    d = model_dirs["llama"]
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    adapter = adapter_for(model)
    batch = encode(tok, PROMPTS)
    seen = {}
    norm = model.model.layers[2].post_attention_layernorm
    h = norm.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0]))
    try:
        readout = read_model(model, adapter, batch, [2])
    finally:
        h.remove()
    expected = seen["x"][batch.rows, batch.last]
    torch.testing.assert_close(readout.layers[2].r, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_power_moments_keep_every_product_operand_a_normal_float(monkeypatch):
    """B spanning 30 orders of magnitude: its powers would reach denormals (a slow path of the
    CPU); the moments still equal Σ_v q_v B_v^k (float64) and no operand of the products is a
    nonzero below UNDERFLOW, whose products with each other stay normal floats."""
    gen = torch.Generator().manual_seed(1)
    vocab, d_ff, n_p, order = 400, 12, 3, attribution.MOMENTS_ORDER
    b = torch.randn(vocab, d_ff, generator=gen) * torch.logspace(-30, 0, vocab)[:, None]
    b[:, 0] *= 1e-3  # a column whose own scale is small: the powers go through b / its maximum
    q = torch.softmax(torch.randn(n_p, vocab, generator=gen) * 4, -1)
    smallest = []
    real_matmul = torch.Tensor.__matmul__

    def watched(x, y):
        for t in (x, y):
            nonzero = t.abs()[t != 0]
            smallest.append(float(nonzero.min()) if nonzero.numel() else float("inf"))
        return real_matmul(x, y)

    monkeypatch.setattr(torch.Tensor, "__matmul__", watched)
    moments = torch.zeros(order + 1, n_p, d_ff, dtype=torch.float64)
    attribution._add_power_moments(moments, q, b.clone(), b.abs().amax(0))  # it overwrites b
    monkeypatch.undo()
    assert min(smallest) >= attribution.UNDERFLOW
    assert attribution.UNDERFLOW**2 >= torch.finfo(torch.float32).tiny
    b64, q64 = b.double(), q.double()
    for k in range(1, order + 1):
        ref = q64 @ b64**k
        size = q64 @ b64.abs() ** k  # the moment's own scale (its terms may cancel)
        assert ((moments[k] - ref).abs() <= 1e-6 * size + 1e-300).all(), k
    # the stages never let a kept power fall below UNDERFLOW before the next stage, and what they
    # leave out is far below the series' own truncation bound
    stages = attribution.underflow_stages()
    ends = [k for k, _ in stages[1:]] + [order + 1]
    for (_, theta), end in zip(stages, ends, strict=True):
        assert theta ** (end - 1) >= attribution.UNDERFLOW * (1 - 1e-9)
    assert attribution.underflow_bound() < 1e-10
