"""Step 1's fast path (layers above l_m replayed, cached prefix, packed rows, frozen requests
dropped) against a plain reimplementation: one full forward pass per step with a hook that
adds δ at l_m, exactly as docs/method.md states the optimisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import EditHparams
from nmkevc.editing.hooks import hidden_of, hooks, with_hidden
from nmkevc.editing.tokens import encode, fill, target_ids
from nmkevc.editing.zopt import optimise_z, plan_packs
from nmkevc.facts import EditRequest
from nmkevc.models.adapters import adapter_for

TEMPLATES = ["{}", "I think that. {}", "Because of the rain. {}", "You are. {}"]
REQUESTS = [
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Rome"),
    EditRequest("Toko Yasuda", "{} plays the", "Madrid Lisbon"),
    EditRequest("Paris", "The capital of Spain, unlike {}, is", "Berlin"),
]
HP = dict(z_lr=0.5, z_steps=12, z_clamp=4.0, z_weight_decay=0.1, z_kl_factor=0.0625)


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def sharp(request, model_dirs):
    d = model_dirs[request.param]
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        adapter_for(model).final_norm_module(model).weight.mul_(30.0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(d)


def reference_z(model, tok, requests, templates, layer, hp):
    """The method as written: each request alone, full forward with a hook, Adam on δ."""
    return [reference_one(model, tok, req, templates, layer, hp) for req in requests]


def reference_one(model, tok, req, templates, layer, hp):
    ad = adapter_for(model)
    head = ad.lm_head_module(model)
    if True:
        tgt = target_ids(tok, req.target_new)
        texts, ends = [], []
        for t in templates:
            text, end = fill(t, req.prompt, req.subject)
            texts.append(text)
            ends.append(end)
        kl_text, kl_end = fill("{}", hp.kl_prompt, req.subject)
        batch = encode(tok, [*texts, kl_text], [*ends, kl_end], [tgt[:-1]] * len(texts) + [[]])
        n_t = len(texts)
        delta = torch.zeros(ad.dims(model, layer)[0], requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp.z_lr)
        seen = {}

        def add(_m, _a, output):
            hidden = hidden_of(output)
            if "h" not in seen:
                seen["h"] = hidden[0, batch.subject_pos[0]].detach().clone()
            rows = torch.arange(hidden.shape[0])
            return with_hidden(output, hidden.index_put((rows, batch.subject_pos), delta.expand(len(rows), -1),
                                                        accumulate=True))

        p0 = None
        steps = 0
        with hooks(post={ad.layer(model, layer): add}):
            for step in range(hp.z_steps + 1):
                final = model.base_model(**batch.model_inputs(), use_cache=False).last_hidden_state
                nll = 0.0
                for r in range(n_t):
                    start = int(batch.prompt_lengths[r]) - 1
                    logp = F.log_softmax(head(final[r, start : start + len(tgt)]).float(), -1)
                    nll = nll - logp[torch.arange(len(tgt)), torch.tensor(tgt)].mean() / n_t
                kl_logp = F.log_softmax(head(final[n_t, batch.last[n_t]]).float(), -1)
                if p0 is None:
                    p0 = kl_logp.detach()
                kl = (p0.exp() * (p0 - kl_logp)).sum()
                loss = nll + hp.z_kl_factor * kl + hp.z_weight_decay * delta.pow(2).sum() / seen["h"].pow(2).sum()
                if step == hp.z_steps or float(nll.detach()) < hp.z_stop_loss:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                with torch.no_grad():
                    limit = hp.z_clamp * seen["h"].norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    return seen["h"] + delta.detach(), steps, float(nll.detach()), float(kl.detach())


@pytest.mark.parametrize("budget", [1024, 6])
def test_fast_z_equals_the_plain_method(sharp, budget):
    model, tok = sharp
    ad = adapter_for(model)
    hp = EditHparams(layers=[1], **HP)
    ref = reference_z(model, tok, REQUESTS, TEMPLATES, 1, hp)
    fast = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, hp, pack_tokens=budget)
    for i, (z, steps, nll, kl) in enumerate(ref):
        assert fast.steps[i] == steps
        torch.testing.assert_close(fast.z[:, i], z, rtol=1e-4, atol=1e-5)
        assert fast.nll[i] == pytest.approx(nll, rel=1e-4, abs=1e-6)
        assert fast.kl[i] == pytest.approx(kl, rel=1e-3, abs=1e-6)


def test_early_stop_freezes_a_request_and_drops_its_rows(sharp):
    """A stop loss that one request reaches early: its δ stays frozen while the others go on."""
    model, tok = sharp
    ad = adapter_for(model)
    probe = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, EditHparams(layers=[1], **HP))
    stop = sorted(probe.nll)[1] * 1.5  # reached by some requests, not necessarily all, within the steps
    hp = EditHparams(layers=[1], **{**HP, "z_stop_loss": stop})
    ref = reference_z(model, tok, REQUESTS, TEMPLATES, 1, hp)
    fast = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, hp)
    assert [s for _, s, _, _ in ref] == fast.steps
    assert len(set(fast.steps)) > 1 or min(fast.steps) < hp.z_steps
    for i, (z, *_rest) in enumerate(ref):
        torch.testing.assert_close(fast.z[:, i], z, rtol=1e-4, atol=1e-5)


def test_packs_cover_every_row_once(sharp):
    model, tok = sharp
    texts = ["a b c d e f", "a b", "The capital of France is", "x y z", "I think that. Paris is"]
    batch = encode(tok, texts, [1, 1, 10, 3, 20])
    for budget in (1, 8, 1024):
        packs = plan_packs(batch, budget)
        rows = torch.cat(packs).sort().values
        assert torch.equal(rows, torch.arange(len(texts)))


def test_the_cached_prefix_path_is_the_one_taken(sharp):
    """The equality above must be of the fast path, not of its whole-row fallback."""
    from nmkevc.editing.zopt import UpperRunner, build_rows

    model, tok = sharp
    rows = build_rows(tok, REQUESTS, TEMPLATES, EditHparams(layers=[1], **HP))
    runner = UpperRunner(model, adapter_for(model), 1)
    packs = [runner.prepare(rows.batch, idx) for idx in plan_packs(rows.batch)]
    assert all(p.cache is not None for p in packs)
    assert all(bool((p.offset == rows.batch.subject_pos[p.rows]).all()) for p in packs)
    re_run = sum(p.h.shape[0] * p.h.shape[1] for p in packs)
    assert re_run < int(rows.batch.lengths.sum())  # fewer positions than the rows hold
