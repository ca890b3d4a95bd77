"""Step 4 against the dense formulae of docs/method.md: U = A⁻¹PK, masked rows, C of earlier edits,
AlphaEdit (full mask), MEMIT, per-layer residual spreading and the recomputed keys."""

from __future__ import annotations

import copy

import pytest
import torch
from dense_update import REQS, TEMPLATES, apply, dense_u, keys_and_h, load_with_projectors, solve

from nmkevc.editing import EditHparams
from nmkevc.editing.attribution import attribution_scores
from nmkevc.editing.masking import neuron_mask
from nmkevc.editing.tokens import templated
from nmkevc.errors import NmkevcError
from nmkevc.facts import EditRequest
from nmkevc.models.adapters import adapter_for
from nmkevc.models.tokens import encode

FAST = dict(z_lr=0.5, z_steps=8, z_clamp=4.0, z_weight_decay=0.0, ridge=1e-3, ridge_relative=False)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, model_dirs):
    return load_with_projectors(model_dirs[request.param])


def test_single_layer_delta_equals_the_dense_formula(setup):
    model, tok, _, proj = setup
    hp = EditHparams(layers=[2], **FAST)
    res = solve(model, tok, REQS, hp, proj)
    (upd,) = res.updates
    keys, h = keys_and_h(model, tok, REQS, [2], tap=2)
    torch.testing.assert_close(upd.V, res.z - h, rtol=1e-4, atol=1e-5)
    u = dense_u(keys[2], proj[2], None, hp.ridge)
    # the mask is the Step-3 rule on the unedited model's attribution
    texts, ends = templated(REQS, TEMPLATES)
    scores, _ = attribution_scores(model, adapter_for(model), encode(tok, texts, ends), [2])
    mask, info = neuron_mask(scores[2], hp.mask_bounds, hp.mask_exponents, hp.entropy_alpha)
    assert upd.idx.tolist() == torch.nonzero(mask)[:, 0].tolist()
    assert upd.info["kept"] == info["kept"] == upd.idx.numel() < adapter_for(model).dims(model)[1]
    assert upd.U.shape == (upd.idx.numel(), 2) and upd.V.shape[1] == 2
    dense = torch.zeros(upd.V.shape[0], u.shape[0], dtype=torch.float64)
    dense[:, upd.idx] = upd.V.double() @ u[upd.idx].T
    ours = torch.zeros_like(dense)
    ours[:, upd.idx] = upd.V.double() @ upd.U.double().T
    torch.testing.assert_close(ours, dense, rtol=1e-4, atol=1e-6)


def test_layers_are_updated_in_order_with_current_keys(setup):
    model, tok, _, proj = setup
    hp = EditHparams(layers=[1, 2], **FAST)
    res = solve(model, tok, REQS, hp, proj)
    first, second = res.updates
    work = copy.deepcopy(model)
    keys, h = keys_and_h(work, tok, REQS, [1], tap=2)
    torch.testing.assert_close(first.V, (res.z - h) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.U.double(), dense_u(keys[1], proj[1], None, hp.ridge)[first.idx],
                               rtol=1e-3, atol=1e-6)
    apply(work, first)
    keys, h = keys_and_h(work, tok, REQS, [2], tap=2)
    torch.testing.assert_close(second.V, res.z - h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second.U.double(), dense_u(keys[2], proj[2], None, hp.ridge)[second.idx],
                               rtol=1e-3, atol=1e-6)
    apply(work, second)
    final, _ = keys_and_h(work, tok, REQS, [1, 2], tap=None)
    torch.testing.assert_close(first.keys, final[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(second.keys, final[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("average", ["groups", "templates"])
def test_keys_are_averaged_by_template_group(setup, average):
    """K and the final keys stored for C weigh the bare prompt 1/2 ("groups", the reference code;
    1/T under the old plain mean, kept for replaying old edits)."""
    model, tok, _, proj = setup
    hp = EditHparams(layers=[2], **FAST, key_average=average)
    (upd,) = solve(model, tok, REQS, hp, proj).updates
    keys, _ = keys_and_h(model, tok, REQS, [2], tap=None, average=average)
    torch.testing.assert_close(upd.U.double(), dense_u(keys[2], proj[2], None, hp.ridge)[upd.idx],
                               rtol=1e-3, atol=1e-6)
    work = copy.deepcopy(model)
    apply(work, upd)
    final, _ = keys_and_h(work, tok, REQS, [2], tap=None, average=average)
    torch.testing.assert_close(upd.keys, final[2], rtol=1e-4, atol=1e-6)
    other, _ = keys_and_h(work, tok, REQS, [2], tap=None, average={"groups": "templates"}.get(average, "groups"))
    assert not torch.allclose(upd.keys, other[2], rtol=1e-3, atol=1e-5)


def test_prior_keys_cov_enters_the_formula(setup):
    model, tok, _, proj = setup
    hp = EditHparams(layers=[2], **FAST)
    other = [EditRequest("Toko Yasuda", "{} plays the", "guitar")]
    k_other, _ = keys_and_h(model, tok, other, [2], tap=None)
    prior = {2: 50.0 * k_other[2] @ k_other[2].T}
    with_c = solve(model, tok, REQS, hp, proj, prior=prior).updates[0]
    without = solve(model, tok, REQS, hp, proj).updates[0]
    keys, _ = keys_and_h(model, tok, REQS, [2], tap=None)
    u = dense_u(keys[2], proj[2], prior[2], hp.ridge)
    torch.testing.assert_close(with_c.U.double(), u[with_c.idx], rtol=1e-3, atol=1e-6)
    assert not torch.allclose(with_c.U, without.U, atol=1e-4)


def test_alphaedit_is_nmke_with_a_full_mask(setup):
    model, tok, _, proj = setup
    nm = solve(model, tok, REQS, EditHparams(layers=[2], **FAST), proj).updates[0]
    # the same z as NMKE's record: AlphaEdit's norm anchor off (NMKE has it off by default)
    ae = solve(model, tok, REQS, EditHparams(method="alphaedit", layers=[2], z_norm_anchor=None, **FAST),
               proj).updates[0]
    d_ff = adapter_for(model).dims(model)[1]
    assert ae.idx.tolist() == list(range(d_ff)) and ae.info["kept"] == d_ff
    torch.testing.assert_close(ae.V, nm.V)
    torch.testing.assert_close(ae.U[nm.idx], nm.U)
    keys, _ = keys_and_h(model, tok, REQS, [2], tap=None)
    torch.testing.assert_close(ae.U.double(), dense_u(keys[2], proj[2], None, FAST["ridge"]),
                               rtol=1e-3, atol=1e-6)


def test_memit_formula_ignores_projector_and_prior(setup):
    model, tok, sigma, proj = setup
    hp = EditHparams(method="memit", layers=[2], memit_lambda0=2.0, memit_prior=0.0, memit_frobenius=0.0,  # published
                     **{k: v for k, v in FAST.items() if not k.startswith("ridge")})  # MEMIT has no ridge
    junk = {2: torch.eye(sigma[2].shape[0]) * 7}
    a = solve(model, tok, REQS, hp, proj, prior=junk, sigma=sigma).updates[0]
    b = solve(model, tok, REQS, hp, None, sigma=sigma).updates[0]
    torch.testing.assert_close(a.U, b.U)
    keys, _ = keys_and_h(model, tok, REQS, [2], tap=None)
    k = keys[2].double()
    u = torch.linalg.solve(2.0 * sigma[2].double() + k @ k.T, k)
    torch.testing.assert_close(a.U.double(), u, rtol=1e-3, atol=1e-6)
    with pytest.raises(NmkevcError, match="second moment"):
        solve(model, tok, REQS, hp, proj)


def test_missing_or_misshaped_statistics_are_refused(setup):
    model, tok, _, proj = setup
    hp = EditHparams(layers=[1, 2], **FAST)
    with pytest.raises(NmkevcError, match="projector for layer 1"):
        solve(model, tok, REQS, hp, {2: proj[2]})
    with pytest.raises(NmkevcError, match="shape"):
        solve(model, tok, REQS, hp, proj, prior={1: torch.zeros(3, 3)})
    with pytest.raises(NmkevcError, match="does not exist"):
        solve(model, tok, REQS, EditHparams(layers=[1, 99], **FAST), proj)
    with pytest.raises(NmkevcError, match="no edit requests"):
        solve(model, tok, [], hp, proj)


def test_first_edit_shortcut_equals_the_full_solve():
    """Without C the factor comes from an n × n system; it must equal the d_ff × d_ff one."""
    from nmkevc.editing.update import nullspace_factor

    g = torch.Generator().manual_seed(0)
    d_ff, n = 40, 3
    keys = torch.randn(d_ff, n, generator=g)
    basis = torch.linalg.qr(torch.randn(d_ff, 25, generator=g, dtype=torch.float64))[0]
    for projector in (None, (basis @ basis.T).float()):
        for ridge in (0.1, 10.0):
            fast = nullspace_factor(keys, projector, None, ridge)
            full = nullspace_factor(keys, projector, torch.zeros(d_ff, d_ff), ridge)
            torch.testing.assert_close(fast, full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layers", [[0, 2], [1, 2, 3], [3]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shared", [True, False])
def test_incremental_passes_match_a_fresh_pass_per_layer(setup, layers, dtype, shared, monkeypatch):
    """Step 4 re-runs only the layers an edit made stale (`update.LayerInputs`); with random
    factors on non-adjacent, adjacent and single layers, its keys, residuals and final keys and h
    equal those of a fresh forward pass from the embeddings before every layer (the method as written),
    to float32's precision, and to bfloat16's on a bfloat16 model (whose weight changes round).
    `shared`: the layers above the first edited one replay its call (both tiny models call every
    layer alike), or their own calls, recorded by running all rows through them."""
    from nmkevc.editing import update
    from nmkevc.editing.tokens import template_weights
    from nmkevc.editing.update import Factor, LayerInputs, run_layers

    if not shared:
        monkeypatch.setattr(update, "_same_call", lambda a, b: False)

    model, tok, _, _ = setup
    model = copy.deepcopy(model).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    n, m = len(REQS), len(layers)
    g = torch.Generator().manual_seed(1)
    d_model, d_ff = adapter_for(model).dims(model, layers[0])
    z = torch.randn(d_model, n, generator=g)
    factors = {layer: torch.randn(d_ff, n, generator=g, dtype=torch.float64) * 0.3 for layer in layers}
    masks = {layer: torch.rand(d_ff, generator=g) < 0.5 for layer in layers}
    texts, ends = templated(REQS, TEMPLATES)
    batch = encode(tok, texts, ends)
    weights = template_weights(TEMPLATES, "groups")
    seen = {}

    def factor(layer, keys, mask):
        seen[layer] = keys
        return Factor(factors[layer] * mask[:, None], {})

    work, ref = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        steps, final_keys, h_final, seconds = run_layers(work, adapter_for(work), batch, len(TEMPLATES), layers,
                                                         z, factor, masks, key_weights=weights)
    assert seconds > 0 and [s.layer for s in steps] == layers
    probe = LayerInputs(work, adapter_for(work), batch, len(TEMPLATES), layers, tap=layers[-1])
    assert probe.fresh == (layers[0] + 1 if shared else layers[-1] + 1)  # how far all rows ran first
    for i, (layer, step) in enumerate(zip(layers, steps, strict=True)):
        keys, h = keys_and_h(ref, tok, REQS, [layer], tap=layers[-1])
        torch.testing.assert_close(seen[layer], keys[layer], **tol)
        torch.testing.assert_close(step.V, (z - h) / (m - i), **tol)
        apply(ref, step)
    keys, h = keys_and_h(ref, tok, REQS, layers, tap=layers[-1])
    for layer in layers:
        torch.testing.assert_close(final_keys[layer], keys[layer], **tol)
    torch.testing.assert_close(h_final, h, **tol)
    for name, p in work.state_dict().items():  # the same weights were written
        torch.testing.assert_close(p, ref.state_dict()[name], **tol)
