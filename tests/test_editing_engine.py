"""compute_edit end to end on every adapter: the edit works, the model comes back untouched;
and the statistics helpers (Σ_l, P_l)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import (
    EditHparams,
    EditResult,
    NullspaceRule,
    compute_edit,
    key_second_moment,
    nullspace_projector,
)
from nmkevc.facts import EditRequest
from nmkevc.models.adapters import adapter_for
from nmkevc.models.tokens import encode

TEMPLATES = ["{}", "I think that. {}", "Because of the rain. {}"]
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The capital of Spain is Madrid. The capital of Germany is Berlin.",
    "Therefore the answer is yes. Because it rained, I stayed home. You are kind.",
    "The official language of Brazil is Portuguese. The currency of Japan is the yen.",
    "Paris London Rome Berlin Madrid Lisbon Vienna Prague Warsaw Athens Oslo Tokyo",
] * 3
# Random tiny models are nearly flat (logits ≈ 0) and their keys are tiny (‖k‖² ≈ 1e-3), so the
# authors' constants would barely move them: allow a larger δ and a ridge on the keys' scale.
# Targets are single tokens predicted right at the subject: random attention barely carries δ
# to later positions, so a multi-token target could not be learnt by any method here.
TINY = dict(z_lr=0.5, z_steps=25, z_clamp=4.0, z_weight_decay=0.0, ridge=1e-4, ridge_relative=False)
EDIT = EditRequest("Danielle Darrieux", "The mother tongue of {}", "Rome")


@pytest.fixture(scope="module", params=["llama", "gpt2", "gptj", "gpt_neox"])
def sharp(request, model_dirs):
    """A tiny model whose final norm is scaled up so its predictions are not uniform."""
    d = model_dirs[request.param]
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        adapter_for(model).final_norm_module(model).weight.mul_(30.0)
    return model, AutoTokenizer.from_pretrained(d)


@torch.no_grad()
def target_prob(model, tok, prompt: str, target: str) -> float:
    ids = encode(tok, [prompt]).input_ids
    tgt = tok(" " + target, add_special_tokens=False)["input_ids"]
    full = torch.cat([ids, torch.tensor([tgt])], dim=1)
    logp = model(input_ids=full).logits[0].log_softmax(-1)
    n = ids.shape[1]
    return float(sum(logp[n - 1 + j, t] for j, t in enumerate(tgt)).exp())


def edited(model, result: EditResult):
    out = copy.deepcopy(model)
    ad = adapter_for(out)
    with torch.no_grad():
        for u in result.updates:
            ad.to_out_in(ad.weight(out, u.layer))[:, u.idx] += u.V @ u.U.T
    return out


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, snap):
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in snap.items())


@pytest.mark.parametrize("method", ["nmke", "alphaedit"])
def test_edit_raises_target_probability_and_restores_weights(sharp, method):
    model, tok = sharp
    layers = [1, 2]
    proj = None
    if method == "alphaedit":
        sigma, _ = key_second_moment(model, tok, CORPUS, layers)
        proj = {k: nullspace_projector(v, NullspaceRule(keep_fraction=0.7))[0] for k, v in sigma.items()}
    before = snapshot(model)
    model.train()
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []
    res = compute_edit(model, tok, [EDIT], EditHparams(method=method, layers=layers, **TINY),
                       context_templates=TEMPLATES, projectors=proj, prior_keys_cov=None,
                       progress=lambda phase, a, b: seen.append((phase, a, b)), base_model=model)
    assert_same(model, before)
    assert model.training and grads == {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    # every phase of the method reports, in order, and ends complete
    phases = [p for p, _, _ in seen]
    expected = ["z", "attribution", "update"] if method == "nmke" else ["z", "update"]
    assert sorted(set(phases), key=phases.index) == expected
    assert all(a <= b for _, a, b in seen)
    for phase in expected:
        last = [(a, b) for p, a, b in seen if p == phase][-1]
        assert last[0] == last[1]
    assert [u.layer for u in res.updates] == layers
    ad = adapter_for(model)
    for u in res.updates:
        assert u.weight_name == ad.weight_name(u.layer)
        assert u.idx.dtype == torch.int64 and bool((u.idx[1:] > u.idx[:-1]).all())
        assert u.U.dtype == torch.float32 and u.V.dtype == torch.float32
        assert u.keys.shape == (ad.dims(model)[1], 1) and u.info["delta_norm"] > 0
    # Step 1 reached the target; not below the 0.05 stop: this rewrite prompt ends at the subject,
    # so the KL term, read at the subject's last token of "{subject} is a", pulls against it
    assert res.info["z_nll"][0] < 0.1
    p0 = target_prob(model, tok, EDIT.text, EDIT.target_new)
    p1 = target_prob(edited(model, res), tok, EDIT.text, EDIT.target_new)
    assert p1 > max(10 * p0, 0.05), (p0, p1)


def test_batch_of_requests_edits_each(sharp):
    model, tok = sharp
    reqs = [EDIT, EditRequest("Toko Yasuda", "The instrument of {}", "Madrid")]
    res = compute_edit(model, tok, reqs, EditHparams(layers=[1, 2], **TINY), context_templates=TEMPLATES,
                       projectors=None, prior_keys_cov=None)
    assert all(u.U.shape[1] == 2 and u.V.shape[1] == 2 for u in res.updates)
    after = edited(model, res)
    for r in reqs:
        assert target_prob(after, tok, r.text, r.target_new) > 5 * target_prob(model, tok, r.text, r.target_new)


def test_weights_are_restored_when_the_edit_fails(sharp):
    model, tok = sharp
    before = snapshot(model)
    hp = EditHparams(layers=[1, 2], **TINY)

    def boom(phase, done, _n):
        if phase == "update" and done >= 1:  # inside the update stage: layer 1 is already written
            name = adapter_for(model).weight_name(1)
            assert not torch.equal(model.state_dict()[name], before[name])
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        compute_edit(model, tok, [EDIT], hp, context_templates=TEMPLATES, projectors=None,
                     prior_keys_cov=None, progress=boom)
    assert_same(model, before)
    assert not any(p.requires_grad is False for p in model.parameters())


# -- statistics ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(model_dirs):
    d = model_dirs["llama"]
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def manual_second_moment(model, tok, texts, layer):
    ad = adapter_for(model)
    rows = []
    h = ad.mlp_out_module(model, layer).register_forward_pre_hook(lambda _m, a: rows.append(a[0][0]))
    try:
        with torch.no_grad():
            for t in texts:
                model(**tok(t, return_tensors="pt"))
    finally:
        h.remove()
    k = torch.cat(rows).double()
    return k.T @ k / k.shape[0], k.shape[0]


def test_key_second_moment_excludes_padding(llama):
    model, tok = llama
    texts = ["short text", CORPUS[0], CORPUS[2]]
    calls = []
    sigma, n = key_second_moment(model, tok, texts, [1, 3], batch_size=2,
                                 progress=lambda a, b: calls.append((a, b)))
    expected, n_exp = manual_second_moment(model, tok, texts, 3)
    assert n == n_exp and calls[-1] == (3, 3)
    assert sigma[3].dtype == torch.float64
    torch.testing.assert_close(sigma[3], expected, rtol=1e-4, atol=1e-9)
    capped, n_cap = key_second_moment(model, tok, texts, [1], max_tokens=5)
    assert n_cap == 5
    first5, _ = manual_second_moment(model, tok, [texts[0]], 1)  # "short text" has ≥ 2 tokens
    assert capped[1].shape == first5.shape


def test_nullspace_projector(llama):
    model, tok = llama
    sigma, _ = key_second_moment(model, tok, CORPUS, [2])
    s = sigma[2]
    # The projector decomposes in float64: put the threshold midway between the 40th and
    # 41st eigenvalues of that same decomposition, never on one (rounding decides the side).
    evals = torch.linalg.eigvalsh(s.double())
    assert float(evals[40] - evals[39]) > 1e-9 * float(evals[-1])
    thr = float((evals[39] + evals[40]) / 2)
    p, kept = nullspace_projector(s, NullspaceRule(threshold=thr))
    assert kept == 40
    assert p.dtype == torch.float32
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p, p.T)
    assert abs(float(torch.trace(p)) - kept) < 1e-3
    # P removes the preserved keys' dominant directions
    top = torch.linalg.eigh(s).eigenvectors[:, -1].float()
    assert float((p @ top).norm()) < 1e-4
    p2, kept2 = nullspace_projector(s, NullspaceRule(keep_fraction=0.5))
    assert kept2 == s.shape[0] // 2 and abs(float(torch.trace(p2)) - kept2) < 1e-3
    # the energy rule: the smallest directions carrying at most that share of trace Σ, so the
    # preserved keys' energy left in the null space, tr(P Σ) / tr Σ, is at most the share
    for share in (0.01, 0.2):
        p3, kept3 = nullspace_projector(s, NullspaceRule(energy=share))
        inside = float(torch.trace(p3.double() @ s.double()) / torch.trace(s.double()))
        assert inside <= share + 1e-6
        assert float(evals.clamp(min=0)[: kept3 + 1].sum() / evals.clamp(min=0).sum()) > share  # one more would not fit
    assert nullspace_projector(s, NullspaceRule(energy=0.01))[1] < nullspace_projector(s, NullspaceRule(energy=0.2))[1]


def test_z_of_a_request_does_not_depend_on_its_batch(sharp):
    """Each request has its own δ and its own early stop: batching is the same maths."""
    from nmkevc.editing.zopt import optimise_z

    model, tok = sharp
    ad = adapter_for(model)
    other = EditRequest("Toko Yasuda", "The instrument of {}", "Madrid")
    hp = EditHparams(layers=[1, 2], **TINY)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        alone = optimise_z(model, tok, ad, [EDIT], TEMPLATES, 2, hp)
        both = optimise_z(model, tok, ad, [other, EDIT], TEMPLATES, 2, hp)
        split = optimise_z(model, tok, ad, [other, EDIT], TEMPLATES, 2, hp, pack_tokens=4)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    assert both.steps[1] == alone.steps[0] == split.steps[1]
    torch.testing.assert_close(both.z[:, 1], alone.z[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(split.z, both.z, rtol=1e-4, atol=1e-5)
