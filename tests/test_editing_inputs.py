"""Hyperparameters (JSON, validation), prompt tokenisation/padding and context templates."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import EditHparams, generate_context_templates
from nmkevc.editing.tokens import encode, escape_braces, fill, split_template, target_ids, templated
from nmkevc.errors import EditRequestError
from nmkevc.facts import EditRequest


@pytest.fixture(scope="module")
def llama(model_dirs):
    d = model_dirs["llama"]
    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)


# -- hyperparameters ------------------------------------------------------------------------------
def test_hparams_defaults_are_the_authors():
    hp = EditHparams()
    assert hp.method == "nmke" and hp.layers is None
    assert 0.1 <= hp.z_lr <= 0.5 and hp.z_steps == 25 and hp.z_stop_loss == 0.05
    assert hp.z_kl_factor == 0.0625 and hp.z_weight_decay == 0.5 and hp.z_clamp == 0.75
    assert hp.nullspace_threshold == 2e-2 and hp.memit_lambda0 == 1000  # calibrated for SmolLM2 (ours)
    assert hp.mask_bounds == (0.3, 0.4) and hp.mask_exponents == (3.0, 2.0)
    assert hp.entropy_alpha == 30 and hp.amplification == 30
    # ours, not the authors': λ relative to the keys' scale, chosen on the dev split
    # (docs/figures/ridge.json); the published masked update stays the default
    assert hp.ridge_relative and 0 < hp.ridge <= 1 and hp.masked_update == "published"


def test_hparams_json_round_trip():
    hp = EditHparams(method="alphaedit", layers=[2, 3], ridge=2.5, nullspace_keep_fraction=0.7)
    d = json.loads(json.dumps(hp.to_json()))
    assert EditHparams.from_json(d) == hp


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "rome"},
        {"layers": [3, 2]},
        {"layers": []},
        {"layers": [1.5]},
        {"z_lr": -1},
        {"z_steps": -1},
        {"mask_bounds": [0.5, 0.4]},
        {"mask_exponents": [3]},
        {"nullspace_keep_fraction": 1.5},
        {"ridge": 0},
        {"kl_prompt": "no placeholder"},
        {"unknown_knob": 1},
        {"mask_bounds": ["a", "b"]},
    ],
)
def test_hparams_reject_bad_values(bad):
    with pytest.raises(EditRequestError):
        EditHparams.from_json(bad)


# -- tokens -----------------------------------------------------------------------------------------
def test_fill_keeps_literal_braces():
    text, end = fill("A {{x}} b. {}", "Where is {}? {y}", "Rome")
    assert text == "A {x} b. Where is Rome? {y}"
    assert text[:end].endswith("Rome")
    assert split_template(escape_braces("}{") + ". {}") == ("}{. ", "")
    with pytest.raises(EditRequestError):
        split_template("no placeholder")


def test_encode_right_pads_and_finds_the_subject(llama):
    _, tok = llama
    reqs = [EditRequest("France", "The capital of {} is", "Rome"),
            EditRequest("Danielle Darrieux", "The mother tongue of {} is", "French")]
    texts, ends = templated(reqs, ["{}", "Because it rained. {}"])
    batch = encode(tok, texts, ends)
    assert batch.input_ids.shape[0] == 4
    for row, text in enumerate(texts):
        single = tok(text, add_special_tokens=False)["input_ids"]
        n = len(single)
        assert int(batch.lengths[row]) == n and int(batch.last[row]) == n - 1
        assert batch.input_ids[row, :n].tolist() == single
        assert int(batch.attention_mask[row].sum()) == n
        # the subject's last token decodes to the end of the subject
        pos = int(batch.subject_pos[row])
        upto = tok.decode(batch.input_ids[row, : pos + 1])
        subject = reqs[row // 2].subject
        assert upto.rstrip().endswith(subject[-3:])
        assert subject[-1] not in tok.decode(batch.input_ids[row, pos + 1 : n])[:1]


def test_encode_without_pad_token_falls_back_to_eos(llama):
    _, tok = llama
    tok2 = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok2.pad_token = None
    batch = encode(tok2, ["a", "a much longer text here"])
    assert int(batch.input_ids[0, -1]) == tok2.eos_token_id
    assert batch.attention_mask[0].tolist().count(1) == int(batch.lengths[0])


def test_target_ids_have_a_leading_space(llama):
    _, tok = llama
    assert target_ids(tok, "Rome") == tok(" Rome", add_special_tokens=False)["input_ids"]


# -- context templates ---------------------------------------------------------------------------------
def test_context_templates_are_deterministic(llama):
    model, tok = llama
    a = generate_context_templates(model, tok, seed=3)
    b = generate_context_templates(model, tok, seed=3)
    assert a == b
    assert a[0] == "{}" and len(a) == 6
    for tpl, prefix in zip(a[1:], ("The", "Therefore", "Because", "I", "You"), strict=True):
        assert tpl.endswith(". {}") and tpl.startswith(prefix)
        before, after = split_template(tpl)  # braces in sampled text are escaped
        assert after == ""
    assert generate_context_templates(model, tok, seed=4) != a
    short = generate_context_templates(model, tok, seed=0, n_tokens=2, prefixes=("I",))
    assert len(short) == 2
    # sampling uses a private generator: the global RNG is untouched
    torch.manual_seed(123)
    x = torch.rand(1)
    torch.manual_seed(123)
    generate_context_templates(model, tok, seed=0, n_tokens=2, prefixes=("I",))
    assert torch.equal(torch.rand(1), x)
