"""Step 4 against the dense formulae of docs/method.md: U = A⁻¹PK, masked rows, C of earlier edits,
AlphaEdit (full mask), MEMIT, per-layer residual spreading and the recomputed keys."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import EditHparams, NullspaceRule, compute_edit, key_second_moment, nullspace_projector
from nmkevc.editing.attribution import attribution_scores
from nmkevc.editing.masking import neuron_mask
from nmkevc.editing.tokens import templated
from nmkevc.editing.update import rewrite_keys
from nmkevc.errors import NmkevcError
from nmkevc.facts import EditRequest
from nmkevc.models.adapters import adapter_for
from nmkevc.models.tokens import encode

TEMPLATES = ["{}", "I think that. {}", "Because of the rain. {}"]
REQS = [EditRequest("Danielle Darrieux", "The mother tongue of {}", "Paris"),
        EditRequest("France", "The capital of {} is", "Rome")]
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The capital of Spain is Madrid. The capital of Germany is Berlin.",
    "Therefore the answer is yes. Because it rained, I stayed home. You are kind.",
    "The official language of Brazil is Portuguese. The currency of Japan is the yen.",
] * 3
FAST = dict(z_lr=0.5, z_steps=8, z_clamp=4.0, z_weight_decay=0.0, ridge=1e-3, ridge_relative=False)


def load_with_projectors(d):
    """A tiny model, its tokenizer, Σ of layers 1–2 over CORPUS and their projectors (70% kept)."""
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    sigma, _ = key_second_moment(model, tok, CORPUS, [1, 2])
    proj = {k: nullspace_projector(v, NullspaceRule(keep_fraction=0.7))[0] for k, v in sigma.items()}
    return model, tok, sigma, proj


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, model_dirs):
    return load_with_projectors(model_dirs[request.param])


def keys_and_h(model, tok, reqs, layers, tap, average="groups"):
    """Keys template by template, then averaged as docs/method.md says: the bare prompt "{}" (the
    first template) weighs 1/2 and the prefixed ones share the other 1/2 ("groups"), or a plain
    mean ("templates", the rule of edits made before); h at the bare prompt."""
    per = []
    for t in TEMPLATES:
        texts, ends = templated(reqs, [t])
        per.append(rewrite_keys(model, adapter_for(model), encode(tok, texts, ends), 1, layers, tap=tap))
    keys = {}
    for layer in layers:
        each = [k[layer] for k, _ in per]
        if average == "groups":
            keys[layer] = 0.5 * each[0] + 0.5 * torch.stack(each[1:]).mean(0)
        else:
            keys[layer] = torch.stack(each).mean(0)
    return keys, per[0][1]


def dense_u(k, p, c, lam):
    k = k.double()
    gram = k @ k.T + (0 if c is None else c.double())
    a = p.double() @ gram + lam * torch.eye(k.shape[0], dtype=torch.float64)
    return torch.linalg.solve(a, p.double() @ k)


def apply(model, upd, sign=1.0):
    ad = adapter_for(model)
    with torch.no_grad():
        ad.to_out_in(ad.weight(model, upd.layer))[:, upd.idx] += sign * (upd.V @ upd.U.T)


def run(model, tok, reqs, hp, proj, prior=None, sigma=None):
    return compute_edit(model, tok, reqs, hp, context_templates=TEMPLATES, projectors=proj,
                        prior_keys_cov=prior, key_second_moment=sigma)


def test_single_layer_delta_equals_the_dense_formula(setup):
    model, tok, _, proj = setup
    hp = EditHparams(layers=[2], **FAST)
    res = run(model, tok, REQS, hp, proj)
    (upd,) = res.updates
    keys, h = keys_and_h(model, tok, REQS, [2], tap=2)
    torch.testing.assert_close(upd.V, res.z - h, rtol=1e-4, atol=1e-5)
    u = dense_u(keys[2], proj[2], None, hp.ridge)
    # the mask is the Step-3 rule on the unedited model's attribution
    texts, ends = templated(REQS, TEMPLATES)
    scores, _ = attribution_scores(model, adapter_for(model), encode(tok, texts, ends), [2])
    mask, info = neuron_mask(scores[2])
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
    res = run(model, tok, REQS, hp, proj)
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
    (upd,) = run(model, tok, REQS, hp, proj).updates
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
    with_c = run(model, tok, REQS, hp, proj, prior=prior).updates[0]
    without = run(model, tok, REQS, hp, proj).updates[0]
    keys, _ = keys_and_h(model, tok, REQS, [2], tap=None)
    u = dense_u(keys[2], proj[2], prior[2], hp.ridge)
    torch.testing.assert_close(with_c.U.double(), u[with_c.idx], rtol=1e-3, atol=1e-6)
    assert not torch.allclose(with_c.U, without.U, atol=1e-4)


def test_alphaedit_is_nmke_with_a_full_mask(setup):
    model, tok, _, proj = setup
    nm = run(model, tok, REQS, EditHparams(layers=[2], **FAST), proj).updates[0]
    ae = run(model, tok, REQS, EditHparams(method="alphaedit", layers=[2], **FAST), proj).updates[0]
    d_ff = adapter_for(model).dims(model)[1]
    assert ae.idx.tolist() == list(range(d_ff)) and ae.info["kept"] == d_ff
    torch.testing.assert_close(ae.V, nm.V)
    torch.testing.assert_close(ae.U[nm.idx], nm.U)
    keys, _ = keys_and_h(model, tok, REQS, [2], tap=None)
    torch.testing.assert_close(ae.U.double(), dense_u(keys[2], proj[2], None, FAST["ridge"]),
                               rtol=1e-3, atol=1e-6)


def test_memit_formula_ignores_projector_and_prior(setup):
    model, tok, sigma, proj = setup
    hp = EditHparams(method="memit", layers=[2], memit_lambda0=2.0, **FAST)
    junk = {2: torch.eye(sigma[2].shape[0]) * 7}
    a = run(model, tok, REQS, hp, proj, prior=junk, sigma=sigma).updates[0]
    b = run(model, tok, REQS, hp, None, sigma=sigma).updates[0]
    torch.testing.assert_close(a.U, b.U)
    keys, _ = keys_and_h(model, tok, REQS, [2], tap=None)
    k = keys[2].double()
    u = torch.linalg.solve(2.0 * sigma[2].double() + k @ k.T, k)
    torch.testing.assert_close(a.U.double(), u, rtol=1e-3, atol=1e-6)
    with pytest.raises(NmkevcError, match="second moment"):
        run(model, tok, REQS, hp, proj)


def test_missing_or_misshaped_statistics_are_refused(setup):
    model, tok, _, proj = setup
    hp = EditHparams(layers=[1, 2], **FAST)
    with pytest.raises(NmkevcError, match="projector for layer 1"):
        run(model, tok, REQS, hp, {2: proj[2]})
    with pytest.raises(NmkevcError, match="shape"):
        run(model, tok, REQS, hp, proj, prior={1: torch.zeros(3, 3)})
    with pytest.raises(NmkevcError, match="does not exist"):
        run(model, tok, REQS, EditHparams(layers=[1, 99], **FAST), proj)
    with pytest.raises(NmkevcError, match="no edit requests"):
        run(model, tok, [], hp, proj)


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
