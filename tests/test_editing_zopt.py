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
from nmkevc.editing.hparams import LEGACY
from nmkevc.editing.tokens import fill
from nmkevc.editing.zopt import optimise_z, plan_packs, weight_decay
from nmkevc.facts import EditRequest
from nmkevc.models.adapters import adapter_for
from nmkevc.models.tokens import encode, target_ids

TEMPLATES = ["{}", "I think that. {}", "Because of the rain. {}", "You are. {}"]
REQUESTS = [
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Rome"),
    EditRequest("Toko Yasuda", "{} plays the", "Madrid Lisbon"),
    EditRequest("Paris", "The capital of Spain, unlike {}, is", "Berlin"),
]
HP = dict(z_lr=0.5, z_steps=12, z_clamp=4.0, z_weight_decay=0.1, z_kl_factor=0.0625)
#: the rules of Step 1 before they matched the reference code (what a replayed old commit uses)
OLD = {k: LEGACY[k] for k in ("z_stop_on", "z_decay_form", "kl_position", "prompt_start")}


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
        tgt = target_ids(tok, "" if hp.prompt_start == "tokenizer" else req.text, req.target_new)
        texts, ends = [], []
        for t in templates:
            text, end = fill(t, req.prompt, req.subject)
            texts.append(text)
            ends.append(end)
        kl_text, kl_end = fill("{}", hp.kl_prompt, req.subject)
        batch = encode(tok, [*texts, kl_text], [*ends, kl_end], [tgt[:-1]] * len(texts) + [[]],
                       start=hp.prompt_start)
        kl_pos = batch.subject_pos[len(texts)] if hp.kl_position == "subject" else batch.last[len(texts)]
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
                kl_logp = F.log_softmax(head(final[n_t, kl_pos]).float(), -1)
                if p0 is None:
                    p0 = kl_logp.detach()
                kl = (p0.exp() * (p0 - kl_logp)).sum()
                size = delta.pow(2).sum() if hp.z_decay_form == "squared" else delta.norm()
                loss = nll + hp.z_kl_factor * kl + hp.z_weight_decay * size / seen["h"].pow(2).sum()
                stop_on = loss if hp.z_stop_on == "total" else nll
                if step == hp.z_steps or float(stop_on.detach()) < hp.z_stop_loss:
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


@pytest.mark.parametrize("rules", [{}, OLD], ids=["reference", "legacy"])
@pytest.mark.parametrize("budget", [1024, 6])
def test_fast_z_equals_the_plain_method(sharp, budget, rules):
    model, tok = sharp
    ad = adapter_for(model)
    hp = EditHparams(layers=[1], **HP, **rules)
    ref = reference_z(model, tok, REQUESTS, TEMPLATES, 1, hp)
    fast = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, hp, pack_tokens=budget)
    for i, (z, steps, nll, kl) in enumerate(ref):
        assert fast.steps[i] == steps
        torch.testing.assert_close(fast.z[:, i], z, rtol=1e-4, atol=1e-5)
        assert fast.nll[i] == pytest.approx(nll, rel=1e-4, abs=1e-6)
        assert fast.kl[i] == pytest.approx(kl, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("rules", [{}, OLD], ids=["reference", "legacy"])
def test_early_stop_freezes_a_request_and_drops_its_rows(sharp, rules):
    """A stop loss that one request reaches early: its δ stays frozen while the others go on."""
    model, tok = sharp
    ad = adapter_for(model)
    probe = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, EditHparams(layers=[1], **HP, **rules))
    stop = sorted(probe.nll)[1] * 1.5  # reached by some requests, not necessarily all, within the steps
    hp = EditHparams(layers=[1], **{**HP, **rules, "z_stop_loss": stop})
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



@pytest.mark.parametrize(("cut", "budget"), [("slice", 1024), ("slice", 40), ("rebuild", 1024)])
def test_a_frozen_request_leaves_its_packs_without_running_them_again(sharp, cut, budget, monkeypatch):
    """When a request freezes, the packs holding its rows are sliced down to the active rows: no
    pack is prepared again, and every z is the reference's (in one pack, the slice that decides
    which arguments to cut; in small packs, later slices too). With slicing refused, packs mostly
    frozen are rebuilt by running them again, to the same z."""
    from nmkevc.editing.zopt import UpperRunner, build_rows

    model, tok = sharp
    ad = adapter_for(model)
    # the tiny models barely learn: a stop loss between the two highest NLLs at δ = 0 freezes two
    # requests on the first pass while the third runs every step
    probe = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, EditHparams(layers=[1], **{**HP, "z_steps": 0}))
    low = sorted(probe.nll)
    hp = EditHparams(layers=[1], **{**HP, "z_stop_loss": (low[1] + low[2]) / 2, "z_stop_on": "nll"})
    ref = reference_z(model, tok, REQUESTS, TEMPLATES, 1, hp)
    prepared, sliced = [], []
    prepare, slice_ = UpperRunner.prepare, UpperRunner._sliced

    def counted_prepare(self, batch, idx):
        prepared.append(idx.numel())
        return prepare(self, batch, idx)

    def counted_slice(self, pack, rows, keep):
        out = slice_(self, pack, rows, keep) if cut == "slice" else None
        sliced.append(out is not None)
        return out

    monkeypatch.setattr(UpperRunner, "prepare", counted_prepare)
    monkeypatch.setattr(UpperRunner, "_sliced", counted_slice)
    fast = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, hp, pack_tokens=budget)
    assert len(set(fast.steps)) > 1  # a request froze while others went on
    assert [s for _, s, _, _ in ref] == fast.steps
    for i, (z, *_rest) in enumerate(ref):
        torch.testing.assert_close(fast.z[:, i], z, rtol=1e-4, atol=1e-5)
    initial = len(plan_packs(build_rows(tok, REQUESTS, TEMPLATES, hp).batch, budget))
    if cut == "slice":
        assert sliced and all(sliced) and len(prepared) == initial
    else:
        assert sliced and not any(sliced) and len(prepared) > initial


def test_slices_give_back_their_packs_and_a_slice_that_does_not_is_refused(sharp):
    """Every slice, the first (which decides the arguments to cut, and is checked) and the later
    ones (which cut the same arguments), replays without δ to the kept rows' stored final states.
    A first slice that misses (here, stored states that no longer match) switches slicing off for
    the run and leaves the pack as it was."""
    from nmkevc.editing.zopt import UpperRunner, build_rows

    model, tok = sharp
    rows = build_rows(tok, REQUESTS, TEMPLATES, EditHparams(layers=[1], **HP))
    runner = UpperRunner(model, adapter_for(model), 1)
    packs = [p for p in (runner.prepare(rows.batch, idx) for idx in plan_packs(rows.batch, 40)) if p.rows.numel() > 1]
    assert len(packs) >= 2
    for pack in packs:
        keep = torch.tensor([0, pack.rows.numel() - 1])
        out = runner._sliced(pack, rows, keep)
        assert out is not None and runner.slicing is True and runner.batch_args
        with torch.no_grad():
            again = runner.replay(out, torch.zeros(2, out.h.shape[-1]), rows.batch.subject_pos[out.rows])
        torch.testing.assert_close(again, out.final, rtol=1e-4, atol=1e-5)
        assert torch.equal(out.final, pack.final[keep])

    runner.slicing = runner.batch_args = None  # a new run's first slice
    pack = runner.prepare(rows.batch, packs[0].rows)
    spos = rows.batch.subject_pos[pack.rows]
    zeros = torch.zeros(pack.rows.numel(), pack.h.shape[-1])
    with torch.no_grad():
        before = runner.replay(pack, zeros, spos)
    pack.final = pack.final + 1.0
    assert runner._sliced(pack, rows, torch.tensor([0])) is None and runner.slicing is False
    with torch.no_grad():
        torch.testing.assert_close(runner.replay(pack, zeros, spos), before)

# -- the reference code's rules, each against the rule it replaced ------------------------------------
def test_weight_decay_is_the_norm_over_the_squared_norm_of_h():
    delta = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    h2 = torch.tensor([4.0, 4.0])
    new = weight_decay(delta, h2, EditHparams(z_weight_decay=0.5))
    old = weight_decay(delta, h2, EditHparams(z_weight_decay=0.5, z_decay_form="squared"))
    assert new.tolist() == pytest.approx([0.5 * 5 / 4, 0.0])
    assert old.tolist() == pytest.approx([0.5 * 25 / 4, 0.0])
    d = torch.zeros(1, 2, requires_grad=True)
    weight_decay(d, h2[:1], EditHparams()).sum().backward()
    assert d.grad.abs().sum() == 0  # the first step is the loss's own, as in the reference code


def test_early_stop_reads_the_total_loss(sharp):
    """After one step the NLL is below the threshold but NLL + KL + decay is not: the NLL rule
    stops there, the total rule goes on."""
    model, tok = sharp
    ad = adapter_for(model)
    req = REQUESTS[:1]
    base = {**HP, "z_weight_decay": 1.0, "z_steps": 4}
    one = optimise_z(model, tok, ad, req, TEMPLATES, 1, EditHparams(layers=[1], **{**base, "z_steps": 1},
                                                                      z_stop_loss=0.0))
    nll0, total1, nll1 = one.history[0], one.history[-1], one.nll[0]  # pass 0: δ = 0, total = NLL
    assert nll1 < min(nll0, total1)
    stop = (nll1 + min(nll0, total1)) / 2
    by_nll = optimise_z(model, tok, ad, req, TEMPLATES, 1,
                        EditHparams(layers=[1], **base, z_stop_loss=stop, z_stop_on="nll"))
    by_total = optimise_z(model, tok, ad, req, TEMPLATES, 1, EditHparams(layers=[1], **base, z_stop_loss=stop))
    assert by_nll.steps == [1]
    assert by_total.steps[0] > 1


def test_kl_is_read_at_the_subjects_last_token(sharp):
    from nmkevc.editing.zopt import build_rows

    _, tok = sharp
    new = build_rows(tok, REQUESTS, TEMPLATES, EditHparams(layers=[1], **HP))
    old = build_rows(tok, REQUESTS, TEMPLATES, EditHparams(layers=[1], **HP, kl_position="last"))
    assert torch.equal(new.kl_pos, new.batch.subject_pos[new.kl])
    assert torch.equal(old.kl_pos, old.batch.last[old.kl])
    assert bool((new.kl_pos < old.kl_pos).all())  # "{subject} is a": the subject is not the last token


def test_bfloat16_products_keep_h_and_leave_the_model_alone(sharp):
    """z_precision=bfloat16: the loop's matrix products run in bfloat16, but h (so z − δ) is
    the model's own float32 h (up to the order of float32 sums: the rewrite rows run in packs of
    their own), δ reaches about the loss the float32 loop reaches,
    and the model itself is untouched (same values and dtypes; a tied head stays tied)."""
    from nmkevc.editing.zopt import replay_model

    model, tok = sharp
    ad = adapter_for(model)
    head, emb = ad.lm_head_module(model), model.get_input_embeddings()
    tied = head.weight is emb.weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, EditHparams(layers=[1], **HP))
    low = optimise_z(model, tok, ad, REQUESTS, TEMPLATES, 1, EditHparams(layers=[1], **HP, z_precision="bfloat16"))
    torch.testing.assert_close(low.h, ref.h, rtol=1e-5, atol=1e-6)
    assert torch.equal(low.z, low.h + low.delta)
    # the loss follows the float32 loop's step by step, to bfloat16's precision
    assert low.history == pytest.approx(ref.history, rel=0.02)
    assert low.nll == pytest.approx(ref.nll, rel=0.02)
    assert not torch.equal(low.delta, ref.delta)  # the products really ran in bfloat16
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
    assert (ad.lm_head_module(model).weight is model.get_input_embeddings().weight) == tied
    # the copy: weight matrices and the (untied) head in bfloat16, embeddings and norms shared
    fast, dtype = replay_model(model, ad, "bfloat16")
    assert dtype == torch.bfloat16 and fast is not model
    assert fast.get_input_embeddings().weight is emb.weight
    assert ad.lm_head_module(fast).weight.dtype == torch.bfloat16
    assert ad.weight(fast, 1).dtype == torch.bfloat16
    assert ad.final_norm_module(fast).weight is ad.final_norm_module(model).weight
    assert replay_model(model, ad, "model") == (model, None)


def test_z_precision_is_checked_and_old_commits_keep_theirs():
    with pytest.raises(Exception, match="z_precision"):
        EditHparams(z_precision="float8")
    assert EditHparams.from_json({"method": "nmke"}).z_precision == "model"
    assert EditHparams().z_precision == "model"
