"""Test-only: Step 4 written out densely, as docs/method.md states it — the requests, corpus and
templates of the update tests, a tiny model with its Σ and projectors, keys averaged by template
group, the dense solve U = A⁻¹PK — shared by test_editing_update.py and test_editing_step4.py."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import NullspaceRule, compute_edit, key_second_moment, nullspace_projector
from nmkevc.editing.hooks import first_input, hidden_of, hooks, run_until, stop_after
from nmkevc.editing.tokens import templated
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


def load_with_projectors(d):
    """A tiny model, its tokenizer, Σ of layers 1–2 over CORPUS and their projectors (70% kept)."""
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    sigma, _ = key_second_moment(model, tok, CORPUS, [1, 2])
    proj = {k: nullspace_projector(v, NullspaceRule(keep_fraction=0.7))[0] for k, v in sigma.items()}
    return model, tok, sigma, proj


@torch.no_grad()
def plain_keys(model, batch, layers, tap):
    """Keys K_l (d_ff × n) at the subject's last token of every row and the output of layer `tap`
    there (d_model × n; None without a tap), from one plain forward pass of the whole rows."""
    adapter = adapter_for(model)
    rows, spos = batch.rows, batch.subject_pos
    keys, out = {}, {}

    def key_hook(layer):
        def fn(_m, args):
            keys[layer] = first_input(args)[rows, spos].float().T.contiguous()

        return fn

    def tap_hook(_m, _a, output):
        out["h"] = hidden_of(output)[rows, spos].float().T.contiguous()

    pre = {adapter.mlp_out_module(model, layer): key_hook(layer) for layer in layers}
    post = {} if tap is None else {adapter.layer(model, tap): tap_hook}
    deepest = max(layers) if tap is None else max(*layers, tap)
    with hooks(pre=pre, post=post), stop_after(adapter.layer(model, deepest)):
        run_until(model, batch)
    return keys, out.get("h")


def keys_and_h(model, tok, reqs, layers, tap, average="groups"):
    """Keys template by template, then averaged as docs/method.md says: the bare prompt "{}" (the
    first template) weighs 1/2 and the prefixed ones share the other 1/2 ("groups"), or a plain
    mean ("templates", the rule of edits made before); h at the bare prompt."""
    per = []
    for t in TEMPLATES:
        texts, ends = templated(reqs, [t])
        per.append(plain_keys(model, encode(tok, texts, ends), layers, tap))
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


def solve(model, tok, reqs, hp, proj, prior=None, sigma=None):
    """compute_edit on `model` as it is; AlphaEdit's norm anchor (its default) reads its reference
    from that same model, which these tests of Step 4 take as the base."""
    return compute_edit(model, tok, reqs, hp, context_templates=TEMPLATES, projectors=proj,
                        prior_keys_cov=prior, key_second_moment=sigma, base_model=model)
