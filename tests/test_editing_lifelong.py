"""The lifelong options of the engine (docs/method.md, "Lifelong mechanisms"): with every one
off the engine is the one before them, bit for bit; each one, on, changes what it says it
changes and nothing it does not claim to:

- `z_stop_top1` (MPES): a request stops once its target is top-1 on all its rewrite rows;
- `z_norm_anchor`: ||z|| ≤ anchor · ||h|| of the unedited base model, per request;
- `z_weights="base"`: δ is found on the base model, Step 4's residual on the current one;
- `memit_frobenius`: MEMIT's solve gains λ_F I (ENCORE's Frobenius term on the update);
- `memit_prior`: MEMIT's solve gains μ C, the earlier edits' keys (ENCORE's MEMIT keeps them).
"""

from __future__ import annotations

import copy

import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import EditHparams, compute_edit, key_second_moment, nullspace_projector
from nmkevc.editing.hooks import hidden_of, hooks, with_hidden
from nmkevc.editing.hparams import LEGACY, field_names, record_of
from nmkevc.editing.nullspace import NullspaceRule
from nmkevc.editing.tokens import templated
from nmkevc.editing.zopt import build_rows, optimise_z
from nmkevc.errors import EditRequestError
from nmkevc.facts import EditRequest
from nmkevc.models.adapters import adapter_for
from nmkevc.models.tokens import encode

TEMPLATES = ["{}", "I think that. {}", "Because of the rain. {}"]
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The capital of Spain is Madrid. The capital of Germany is Berlin.",
    "Therefore the answer is yes. Because it rained, I stayed home. You are kind.",
    "Paris London Rome Berlin Madrid Lisbon Vienna Prague Warsaw Athens Oslo Tokyo",
] * 3
# single-token targets predicted right at the subject: what a tiny random model can learn (as in
# tests/test_editing_engine.py), with its larger clamp and a ridge on its keys' scale
REQS = [EditRequest("Danielle Darrieux", "The mother tongue of {}", "Rome"),
        EditRequest("Toko Yasuda", "The instrument of {}", "Madrid")]
TINY = dict(z_lr=0.5, z_steps=25, z_clamp=4.0, z_weight_decay=0.0, ridge=1e-4, ridge_relative=False)
LAYERS = [1, 2]
L_M = LAYERS[-1]
#: every lifelong option, off
OFF = dict(z_stop_top1=0, z_norm_anchor=None, z_weights="current", memit_frobenius=0.0, memit_prior=0.0,
           relation_guard=0.0)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, model_dirs):
    """A tiny model (final norm scaled so it predicts something), its tokenizer, the digest of
    its weights as saved, and its statistics at the edited layers."""
    d = model_dirs[request.param]
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    saved = tiny.digest(model)
    with torch.no_grad():
        adapter_for(model).final_norm_module(model).weight.mul_(30.0)
    tok = AutoTokenizer.from_pretrained(d)
    sigma, _ = key_second_moment(model, tok, CORPUS, LAYERS)
    proj = {k: nullspace_projector(v, NullspaceRule(keep_fraction=0.7))[0] for k, v in sigma.items()}
    return request.param, model, tok, saved, sigma, proj


def stats(method, sigma, proj):
    return dict(projectors=proj if method != "memit" else None, prior_keys_cov=None,
                key_second_moment=sigma if method == "memit" else None)


def hp_for(method, **kw):
    """The method's record on the tiny model: the shared settings its record has, then `kw`."""
    # λ0 and λ_F on the tiny model's Σ scale (their default ratio, 10 : 1000)
    extra = {"memit_lambda0": 0.05, "memit_frobenius": 0.0005} if method == "memit" else {}
    own = field_names(record_of(method))
    shared = {k: v for k, v in {**TINY, **extra}.items() if k in own}
    return EditHparams(method=method, layers=LAYERS, **{**shared, **kw})


def published(method, **kw):
    """The method as published: `hp_for`, then the "published" preset (every lifelong option off),
    the tiny model's ridge kept (the preset's relative 0.1 is SmolLM2's calibration)."""
    tiny_ridge = {k: TINY[k] for k in ("ridge", "ridge_relative") if k in field_names(record_of(method))}
    return hp_for(method, **kw).updated(preset="published", **tiny_ridge)


def test_defaults_differ_from_published_only_by_the_chosen_mechanisms():
    """The defaults turn on what the dev split chose (docs/method.md): MPES (k = 2) for every method,
    for MEMIT ENCORE's C term (μ = 1) and Frobenius term (λ_F = 10), for AlphaEdit NAS's norm
    anchor (a = 1); everything else is the published form."""
    chosen = {"nmke": {"z_stop_top1"}, "alphaedit": {"z_stop_top1", "z_norm_anchor"},
              "memit": {"z_stop_top1", "memit_prior", "memit_frobenius"}}
    for method in ("nmke", "alphaedit", "memit"):
        default, pub = hp_for(method).to_json(), published(method).to_json()
        assert {k for k in default if default[k] != pub[k]} == chosen[method]
    assert hp_for("nmke").z_stop_top1 == hp_for("alphaedit").z_stop_top1 == hp_for("memit").z_stop_top1 == 2
    assert (hp_for("alphaedit").z_norm_anchor, hp_for("nmke").z_norm_anchor, hp_for("memit").z_norm_anchor) == \
        (1.0, None, None)
    assert EditHparams(method="memit").memit_prior == 1.0 and EditHparams(method="memit").memit_frobenius == 10.0
    # AlphaEdit's norm control: its relative ridge at 0.3, the single-edit calibration 0.1 when published
    alphaedit = EditHparams(method="alphaedit")
    assert (alphaedit.ridge, alphaedit.updated(preset="published").ridge, EditHparams().ridge) == (0.3, 0.1, 0.1)
    absolute = alphaedit.updated(ridge_relative=False)
    assert alphaedit.ridge_relative and absolute.updated(preset="published").ridge_relative


def off_for(method):
    return {k: v for k, v in OFF.items() if k in field_names(record_of(method))}


def run(model, tok, hp, sigma, proj, reqs=REQS, **kw):
    return compute_edit(model, tok, reqs, hp, context_templates=TEMPLATES, **stats(hp.method, sigma, proj), **kw)


def same(a, b):
    assert torch.equal(a.z, b.z)
    assert [u.layer for u in a.updates] == [u.layer for u in b.updates]
    for u, w in zip(a.updates, b.updates, strict=True):
        assert torch.equal(u.idx, w.idx) and torch.equal(u.U, w.U) and torch.equal(u.V, w.V)
        assert torch.equal(u.keys, w.keys) and u.info == w.info
    strip = ("timings",)
    assert {k: v for k, v in a.info.items() if k not in strip} == {k: v for k, v in b.info.items() if k not in strip}


def perturbed(model, layers, scale=0.5, seed=0):
    """A copy of `model` whose decoder layers `layers` have every parameter moved by noise."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in layers:
            for p in adapter_for(out).layer(out, i).parameters():
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return out


@torch.no_grad()
def h_at_subject(model, tok, reqs, layer, hp):
    """(d_model, n) output of `layer` at the subject's last token of each bare rewrite prompt."""
    batch = encode(tok, *templated(reqs, ["{}"]), start=hp.prompt_start)
    got = {}

    def grab(_m, _a, out):
        got["h"] = hidden_of(out)[torch.arange(len(reqs)), batch.subject_pos].float()

    with hooks(post={adapter_for(model).layer(model, layer): grab}):
        model(**batch.model_inputs(), use_cache=False)
    return got["h"].T


@torch.no_grad()
def top1_everywhere(model, tok, reqs, layer, delta, hp):
    """Per request: with δ added at `layer` (subject's last token of every row), is the target the
    top-1 token at every target position (teacher-forced) of every templated rewrite row? One plain
    forward pass of the whole model."""
    rows = build_rows(tok, reqs, TEMPLATES, hp)
    b = rows.batch

    def add(_m, _a, out):
        hidden = hidden_of(out)
        r = torch.arange(hidden.shape[0])
        return with_hidden(out, hidden.index_put((r, b.subject_pos), delta.T[rows.request].to(hidden.dtype),
                                                 accumulate=True))

    with hooks(post={adapter_for(model).layer(model, layer): add}):
        logits = model(**b.model_inputs(), use_cache=False).logits
    ok = logits[rows.t_row, rows.t_pos].argmax(-1) == rows.t_tok
    req = rows.request[rows.t_row]
    return [bool(ok[req == r].all()) for r in range(len(reqs))]


# -- every option off: the engine as it was ----------------------------------------------------------
@pytest.mark.parametrize("method", ["nmke", "alphaedit", "memit"])
def test_options_off_are_the_engine_as_it_was(setup, method):
    """The published preset, every option named off, a dict stored before the options existed,
    and a base model given but not asked for: the same tensors and the same info, bit for bit."""
    _, model, tok, _, sigma, proj = setup
    ref = run(model, tok, published(method, z_stop_loss=0.5), sigma, proj)
    named = run(model, tok, hp_for(method, z_stop_loss=0.5, **off_for(method)), sigma, proj)
    old = {k: v for k, v in hp_for(method, z_stop_loss=0.5).to_json().items() if k not in OFF}
    stored = run(model, tok, EditHparams.from_json(old), sigma, proj)
    other_base = run(model, tok, published(method, z_stop_loss=0.5), sigma, proj,
                     base_model=perturbed(model, [0, 3]))
    for res in (named, stored, other_base):
        same(ref, res)
    # the only new records of a default edit: why each request stopped, and its top-1 state
    assert set(ref.info["z_stop"]) <= {"loss", "steps"}
    assert len(ref.info["z_top1"]) == len(REQS)
    assert not {"z_norm_ref", "z_norm_capped", "z_over_ref", "h_drift"} & set(ref.info)


#: compute_edit's results on these tiny models, computed with the engine as it was before the
#: lifelong options (z_stop_loss 0.5, projector keeping 70%, no prior edits; MEMIT λ0 0.05).
#: Per model: the digest of the saved weights (the expectation only holds for these weights),
#: Adam steps per request, ||z|| and z · cos(0, 1, 2, ...) per request, and per layer the mask
#: size and ‖ΔW‖_F.
EXPECTED = {
    "llama": {
        "digest": "843cb672d0cbeb3154c00539bb43cbc4ceb69e1676367e6481347c1fe40ef9f4",
        "steps": [4, 25], "z_norm": [0.464679, 0.448816], "z_dot": [0.383544, 0.061023],
        "nmke": [(1, 83, 8.898004), (2, 72, 6.101203)],
        "memit": [(1, 96, 34.609802), (2, 96, 14.151508)],
    },
    "gpt2": {
        "digest": "a7b30066719e92b343d8b7017d6f3c0fdc35d6d05077f606b675c928f4837ad1",
        "steps": [13, 6], "z_norm": [0.697957, 0.693042], "z_dot": [0.006988, 0.570185],
        "nmke": [(1, 61, 6.028593), (2, 52, 10.926602)],
        "memit": [(1, 96, 20.797935), (2, 96, 29.004654)],
    },
}


@pytest.mark.parametrize("method", ["nmke", "memit"])
def test_defaults_reproduce_the_engine_before_the_options(setup, method):
    arch, model, tok, saved, sigma, proj = setup
    exp = EXPECTED[arch]
    if saved != exp["digest"]:
        pytest.skip("the tiny model's initial weights differ from those the expectation was computed on")
    res = run(model, tok, published(method, z_stop_loss=0.5), sigma, proj)
    assert res.info["z_steps"] == exp["steps"]
    direction = torch.cos(torch.arange(res.z.shape[0], dtype=torch.float32))
    assert [float(x) for x in res.z.norm(dim=0)] == pytest.approx(exp["z_norm"], rel=1e-4, abs=1e-5)
    assert [float(x) for x in direction @ res.z] == pytest.approx(exp["z_dot"], rel=1e-4, abs=1e-5)
    got = [(u.layer, int(u.idx.numel()), float((u.V @ u.U.T).norm())) for u in res.updates]
    assert [g[:2] for g in got] == [e[:2] for e in exp[method]]
    # 1e-3: MEMIT's λ0Σ solve carries the float32 kernels' rounding, which differs between CPUs
    # (AVX2 / AVX-512), to 1.2e-4 of ‖ΔW‖ on GPT-2; a change of the engine moves it far more
    assert [g[2] for g in got] == pytest.approx([e[2] for e in exp[method]], rel=1e-3)


# -- MPES ------------------------------------------------------------------------------------------------
def test_mpes_stops_at_the_first_top1_pass(setup):
    """With the loss rule off, every request runs all steps; with MPES (k = 1) each stops at the
    first pass where its target is top-1 on all its rewrite rows (checked by a plain forward with
    δ added), and one pass earlier it was not; k = 2 needs one more pass at least."""
    _, model, tok, _, sigma, proj = setup
    ad = adapter_for(model)
    no_loss = dict(z_stop_loss=0.0)
    off = run(model, tok, hp_for("nmke", **no_loss, z_stop_top1=0), sigma, proj)
    assert off.info["z_steps"] == [TINY["z_steps"]] * len(REQS) and set(off.info["z_stop"]) == {"steps"}
    one = run(model, tok, hp_for("nmke", **no_loss, z_stop_top1=1), sigma, proj)
    two = run(model, tok, hp_for("nmke", **no_loss, z_stop_top1=2), sigma, proj)
    assert one.info["z_stop"] == ["top1"] * len(REQS) and one.info["z_top1"] == [True] * len(REQS)
    assert all(s < TINY["z_steps"] for s in one.info["z_steps"])
    assert all(b >= a + 1 for a, b in zip(one.info["z_steps"], two.info["z_steps"], strict=True))
    assert two.info["z_stop"] == ["top1"] * len(REQS)
    # the stopped δ: top-1 everywhere, by an independent forward pass; one step before: not
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        hp = hp_for("nmke", **no_loss, z_stop_top1=1)
        z1 = optimise_z(model, tok, ad, REQS, TEMPLATES, L_M, hp)
        assert z1.steps == one.info["z_steps"] and torch.equal(z1.z, one.z)
        assert top1_everywhere(model, tok, REQS, L_M, z1.delta, hp) == [True] * len(REQS)
        for r, s in enumerate(z1.steps):
            if s == 0:
                continue
            early = optimise_z(model, tok, ad, REQS[r:r + 1], TEMPLATES, L_M, hp_for("nmke", **no_loss, z_steps=s - 1))
            assert early.top1 == [False]
            assert top1_everywhere(model, tok, REQS[r:r + 1], L_M, early.delta, hp) == [False]
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_mpes_beside_the_loss_rule(setup):
    """Both rules on: a request stops at whichever fires first, and the info names it."""
    _, model, tok, _, sigma, proj = setup
    loss_only = run(model, tok, hp_for("nmke", z_stop_loss=0.5), sigma, proj)
    both = run(model, tok, hp_for("nmke", z_stop_loss=0.5, z_stop_top1=1), sigma, proj)
    for r in range(len(REQS)):
        assert both.info["z_steps"][r] <= loss_only.info["z_steps"][r]
        assert both.info["z_stop"][r] in ("loss", "top1", "loss+top1")
        assert ("top1" in both.info["z_stop"][r]) == both.info["z_top1"][r]


# -- the norm anchor ----------------------------------------------------------------------------------
def test_anchor_bounds_z_by_the_base_models_norm(setup):
    """On a current model whose lower layers moved (so its h differs from the base's): the
    reference is each request's own base-model ||h||, ||z|| stays within anchor × it, the
    requests held back are recorded, and without the anchor those z are larger."""
    _, base, tok, _, sigma, proj = setup
    current = perturbed(base, [0], scale=1.0, seed=3)
    anchor = 1.2
    free = run(current, tok, hp_for("nmke"), sigma, proj, base_model=base)
    held = run(current, tok, hp_for("nmke", z_norm_anchor=anchor), sigma, proj, base_model=base)
    h_base = h_at_subject(base, tok, REQS, L_M, hp_for("nmke"))
    h_cur = h_at_subject(current, tok, REQS, L_M, hp_for("nmke"))
    ref = h_base.norm(dim=0)
    assert not torch.allclose(ref, h_cur.norm(dim=0), rtol=1e-3)  # the two references differ here
    assert held.info["z_norm_ref"] == pytest.approx(ref.tolist(), rel=1e-5)
    z_norm = held.z.norm(dim=0)
    assert bool((z_norm <= anchor * ref * (1 + 1e-5)).all())
    assert held.info["z_over_ref"] == pytest.approx((z_norm / ref).tolist(), rel=1e-6)
    over = [r for r in range(len(REQS)) if float(free.z[:, r].norm()) > anchor * float(ref[r])]
    assert over and set(over) <= set(held.info["z_norm_capped"])
    for r in over:  # the anchor binds: the held z sits on its sphere
        assert float(z_norm[r]) == pytest.approx(anchor * float(ref[r]), rel=1e-5)


def test_anchor_keeps_the_clamp_while_h_is_inside_it(setup):
    """The current model is the base: ||h|| ≤ anchor·||h||, so projecting z never undoes the
    clamp ||δ|| ≤ z_clamp·||h||; the anchor only shortens z."""
    _, model, tok, _, sigma, proj = setup
    res = run(model, tok, hp_for("nmke", z_norm_anchor=1.0), sigma, proj, base_model=model)
    h = h_at_subject(model, tok, REQS, L_M, hp_for("nmke"))
    delta = res.z - h
    assert bool((delta.norm(dim=0) <= TINY["z_clamp"] * h.norm(dim=0) * (1 + 1e-4)).all())
    assert bool((res.z.norm(dim=0) <= h.norm(dim=0) * (1 + 1e-5)).all())
    assert res.info["z_norm_capped"]  # a 4·||h|| clamp leaves room beyond ||h||: the anchor binds


# -- z on the base weights ------------------------------------------------------------------------------
def test_base_weights_find_delta_on_the_base_model(setup):
    """Perturbing the current model's layers above l_m changes a current-weights z but not a
    base-weights one, which equals the z found on the base model itself."""
    _, base, tok, _, sigma, proj = setup
    cur1, cur2 = perturbed(base, [3], seed=1), perturbed(base, [3], seed=2)
    on_base = run(base, tok, hp_for("nmke"), sigma, proj)
    rewound = [run(c, tok, hp_for("nmke", z_weights="base"), sigma, proj, base_model=base) for c in (cur1, cur2)]
    current = [run(c, tok, hp_for("nmke"), sigma, proj) for c in (cur1, cur2)]
    assert torch.equal(rewound[0].z, rewound[1].z)
    torch.testing.assert_close(rewound[0].z, on_base.z, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(current[0].z, current[1].z, rtol=1e-3, atol=1e-4)
    # layers above l_m do not move h: nothing earlier edits could have drifted
    assert max(rewound[0].info["h_drift"]) < 1e-5


def test_base_weights_residual_is_read_on_the_current_model(setup):
    """With the layer below the edited ones perturbed, h at l_m differs between the models: z is
    h_base + δ, while the first layer's residual is (z − h_current) / m."""
    _, base, tok, _, sigma, proj = setup
    current = perturbed(base, [0], scale=1.0, seed=4)
    hp = hp_for("nmke", z_weights="base")
    res = run(current, tok, hp, sigma, proj, base_model=base)
    h_base, h_cur = h_at_subject(base, tok, REQS, L_M, hp), h_at_subject(current, tok, REQS, L_M, hp)
    delta_over_h = (res.z - h_base).norm(dim=0) / h_base.norm(dim=0)
    assert res.info["delta_over_h"] == pytest.approx(delta_over_h.tolist(), rel=1e-4)
    torch.testing.assert_close(res.updates[0].V * len(LAYERS), res.z - h_cur, rtol=1e-4, atol=1e-5)
    drift = (h_cur - h_base).norm(dim=0) / h_base.norm(dim=0)
    assert res.info["h_drift"] == pytest.approx(drift.tolist(), rel=1e-4)
    assert min(res.info["h_drift"]) > 0.05


# -- the base model is asked for when needed ------------------------------------------------------------
@pytest.mark.parametrize("opts", [dict(z_weights="base"), dict(z_norm_anchor=2.0),
                                  dict(z_weights="base", z_norm_anchor=2.0)])
def test_options_needing_the_base_refuse_without_it(setup, opts):
    _, model, tok, _, sigma, proj = setup
    with pytest.raises(EditRequestError, match="base model") as err:
        run(model, tok, hp_for("nmke", **opts), sigma, proj)
    assert "\n" not in str(err.value)


def test_a_base_of_another_architecture_is_refused(setup, model_dirs):
    arch, model, tok, _, sigma, proj = setup
    other = AutoModelForCausalLM.from_pretrained(model_dirs["gpt_neox" if arch == "llama" else "llama"])
    with pytest.raises(EditRequestError, match="architecture"):
        run(model, tok, hp_for("nmke", z_weights="base"), sigma, proj, base_model=other)


# -- ENCORE's Frobenius term on MEMIT's update ---------------------------------------------------------
def test_memit_frobenius_is_a_ridge_on_memits_solve(setup):
    """U = (λ0 Σ + λ_F I + K Kᵀ)⁻¹ K on the first layer (whose keys the update does not change),
    the same z as without it, and a smaller update; the null-space methods ignore the field (their
    λ I is this term)."""
    _, model, tok, _, sigma, proj = setup
    lam_f = 0.5
    plain = run(model, tok, hp_for("memit", memit_frobenius=0.0), sigma, proj)
    frob = run(model, tok, hp_for("memit", memit_frobenius=lam_f), sigma, proj)
    assert torch.equal(plain.z, frob.z)
    first = frob.updates[0]
    k = first.keys.double()
    a = 0.05 * sigma[first.layer].double() + lam_f * torch.eye(k.shape[0], dtype=torch.float64) + k @ k.T
    torch.testing.assert_close(first.U.double(), torch.linalg.solve(a, k), rtol=1e-4, atol=1e-7)
    assert first.info["frobenius"] == lam_f and "frobenius" not in plain.updates[0].info
    for u, w in zip(plain.updates, frob.updates, strict=True):
        assert float((w.V @ w.U.T).norm()) < float((u.V @ u.U.T).norm())
    with pytest.raises(EditRequestError, match="memit_frobenius do"):  # AlphaEdit's record has no such field
        hp_for("alphaedit", memit_frobenius=lam_f)


def test_memit_prior_keeps_memits_outputs_at_earlier_edits_keys(setup):
    """ENCORE's C term: U = (λ0 Σ + λ_F I + μ C + K Kᵀ)⁻¹ K; with μ = 0 (as published) a given C is not
    read at all, and with it on the update moves the earlier edit's keys less."""
    _, model, tok, _, sigma, proj = setup
    earlier = run(model, tok, hp_for("memit"), sigma, proj, reqs=[REQS[1]])
    prior = {u.layer: u.keys.double() @ u.keys.double().T for u in earlier.updates}

    def edit(hp, cov):
        return compute_edit(model, tok, [REQS[0]], hp, context_templates=TEMPLATES, projectors=None,
                            prior_keys_cov=cov, key_second_moment=sigma)

    plain = edit(hp_for("memit", memit_prior=0.0), None)
    same(plain, edit(hp_for("memit", memit_prior=0.0), prior))  # off: C is given but not read
    kept = edit(hp_for("memit", memit_prior=1.0), prior)
    assert torch.equal(plain.z, kept.z)
    first, before = kept.updates[0], plain.updates[0]
    k, c = first.keys.double(), prior[first.layer]
    lam_f = hp_for("memit").memit_frobenius  # the default λ_F term, on the tiny model's scale
    a = 0.05 * sigma[first.layer].double() + lam_f * torch.eye(k.shape[0], dtype=torch.float64) + c + k @ k.T
    torch.testing.assert_close(first.U.double(), torch.linalg.solve(a, k), rtol=1e-4, atol=1e-7)
    assert first.info["prior"] == 1.0 and "prior" not in before.info
    old_keys = earlier.updates[0].keys.double()
    moved = [float((u.V.double() @ u.U.double().T @ old_keys).norm()) for u in (before, first)]
    assert moved[1] < moved[0]
    with pytest.raises(EditRequestError, match="memit_prior"):
        hp_for("memit", memit_prior=-1.0)
    assert hp_for("memit", memit_prior=1.0).updated(preset="published").memit_prior == 0.0


# -- the relation guard ------------------------------------------------------------------------------------
@torch.no_grad()
def keys_after_subject(model, tok, reqs, layer, hp):
    """(d_ff, g) the MLP activations W reads at every token after the subject's last one of every
    templated prompt, from a plain forward pass of the whole model."""
    batch = encode(tok, *templated(reqs, TEMPLATES), start=hp.prompt_start)
    got = {}

    def grab(_m, args):
        got["a"] = args[0]

    with hooks(pre={adapter_for(model).mlp_out_module(model, layer): grab}):
        model(**batch.model_inputs(), use_cache=False)
    cols = torch.arange(batch.input_ids.shape[1])[None, :]
    after = (cols > batch.subject_pos[:, None]) & (cols < batch.lengths[:, None])
    return got["a"][after].float().T


@pytest.mark.parametrize("method", ["nmke", "alphaedit", "memit"])
def test_guard_keeps_the_keys_after_the_subject(setup, method):
    """The guard's keys are the activations at every token after the subject of the edit's own
    prompts; with the guard on the update moves them less, from the same z; recorded in the info.
    A prompt ending at its subject gives the guard nothing to keep."""
    from nmkevc.editing.guard import guard_keys

    _, model, tok, _, sigma, proj = setup
    reqs = [EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Rome"),
            EditRequest("Toko Yasuda", "The instrument of {} is played", "Madrid")]
    hp = hp_for(method)
    first = LAYERS[0]
    kept = guard_keys(model, tok, adapter_for(model), reqs, TEMPLATES, LAYERS, hp.prompt_start)
    want = keys_after_subject(model, tok, reqs, first, hp)
    assert kept[first].shape == want.shape and want.shape[1] >= 3 * len(TEMPLATES)
    torch.testing.assert_close(kept[first], want, rtol=1e-4, atol=1e-5)
    assert guard_keys(model, tok, adapter_for(model), REQS, TEMPLATES, LAYERS, hp.prompt_start)[first].shape[1] == 0
    plain = run(model, tok, hp, sigma, proj, reqs=reqs, base_model=model)  # AlphaEdit's anchor reads it
    guarded = run(model, tok, hp_for(method, relation_guard=10.0), sigma, proj, reqs=reqs, base_model=model)
    assert torch.equal(plain.z, guarded.z)
    assert guarded.info["guard_keys"] == want.shape[1] and "guard_keys" not in plain.info
    assert "guard" in guarded.info["timings"]
    if method == "nmke":  # its published form zeroes rows after the solve, which undoes part of what
        # the solve kept (C alike: docs/method.md); the compensated form solves on the mask's rows
        plain, guarded = (run(model, tok, hp_for(method, masked_update="compensated", relation_guard=g), sigma,
                              proj, reqs=reqs) for g in (0.0, 10.0))
    moved = [float((u.V.double() @ u.U.double().T @ kept[first].double()[u.idx]).norm())
             for u in (plain.updates[0], guarded.updates[0])]
    assert moved[1] < 0.5 * moved[0]
    with pytest.raises(EditRequestError, match="relation_guard"):
        hp_for(method, relation_guard=-1.0)


# -- the fields --------------------------------------------------------------------------------------------
def test_fields_default_off_validate_and_replay_old_commits():
    """Every option off by default but MPES (k = 2) and MEMIT's ENCORE terms (μ = 1, λ_F = 10); a
    commit stored before them replays off."""
    hp, memit = EditHparams(), EditHparams(method="memit")
    got = {k: getattr(hp, k) for k in off_for("nmke")} | {k: getattr(memit, k) for k in ("memit_frobenius",
                                                                                       "memit_prior")}
    assert got == {**OFF, "z_stop_top1": 2, "memit_prior": 1.0, "memit_frobenius": 10.0}
    assert {k: getattr(memit, k) for k in off_for("memit")} == {**off_for("memit"), "z_stop_top1": 2,
                                                               "memit_prior": 1.0, "memit_frobenius": 10.0}
    assert {k: LEGACY[k] for k in OFF} == OFF
    assert EditHparams.from_json({"method": "nmke"}).z_weights == "current"
    for bad in (dict(z_stop_top1=-1), dict(z_stop_top1=True), dict(z_stop_top1=1.5), dict(z_norm_anchor=0),
                dict(z_norm_anchor=-1.0), dict(z_norm_anchor=float("inf")), dict(z_norm_anchor=True),
                dict(z_weights="rewound"), dict(memit_frobenius=-0.1), dict(memit_frobenius=float("nan")),
                dict(memit_prior=-1.0), dict(memit_prior=float("inf"))):
        with pytest.raises(EditRequestError) as err:
            EditHparams(**bad, **({"method": "memit"} if next(iter(bad)).startswith("memit") else {}))
        assert next(iter(bad)) in str(err.value) and "\n" not in str(err.value)
    on = EditHparams(z_stop_top1=2, z_norm_anchor=2.0, z_weights="base")
    assert EditHparams.from_json(on.to_json()) == on
    memit_on = EditHparams(method="memit", memit_frobenius=20.0)
    assert EditHparams.from_json(memit_on.to_json()) == memit_on


def test_the_published_form_is_one_preset_away():
    """Whatever the defaults become, `preset="published"` turns every lifelong mechanism off;
    later settings win over the preset, and each method takes the preset's fields it has."""
    from nmkevc.editing.hparams import PRESETS

    on = EditHparams(z_stop_top1=2, z_norm_anchor=1.0, z_weights="base")
    published = on.updated(preset="published")
    assert {k: getattr(published, k) for k in off_for("nmke")} == off_for("nmke")
    assert on.updated(preset="published", z_stop_top1=3).z_stop_top1 == 3
    memit = EditHparams(method="memit", memit_frobenius=5.0).updated(preset="published")
    # the lifelong options off, and the null-space methods' ridge at its single-edit calibration
    # (and NMKE's mask at the paper's bounds)
    assert memit.memit_frobenius == 0.0
    assert set(PRESETS["published"]) == set(OFF) | {"ridge", "ridge_relative", "mask_bounds"}
    assert EditHparams(method="alphaedit", ridge=2.0).updated(preset="published").ridge == 0.1
    with pytest.raises(EditRequestError, match="unknown preset"):
        on.updated(preset="fastest")


def test_another_method_takes_its_own_defaults_and_what_was_set():
    """`repo.edit(method="memit")` starts from NMKE's record: MEMIT's defaults apply, not NMKE's
    (when MEMIT's default was published and NMKE's MPES, MPES leaked into MEMIT), while a setting
    made away from NMKE's defaults carries over; the lifelong labels (`memit`) read the same way."""
    memit = EditHparams().updated(method="memit")
    assert memit == EditHparams(method="memit")
    set_away = EditHparams(z_steps=7, z_stop_top1=3).updated(method="memit")
    assert (set_away.z_steps, set_away.z_stop_top1, set_away.memit_prior) == (7, 3, 1.0)
    published_nmke = EditHparams().updated(preset="published")
    assert published_nmke.updated(method="memit").z_stop_top1 == 0  # set away from NMKE's 2: kept
    assert EditHparams(method="memit").updated(method="nmke") == EditHparams()
