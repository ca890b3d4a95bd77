"""Hyperparameters (JSON, validation), prompt tokenisation/padding and context templates."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import EditHparams, generate_context_templates
from nmkevc.editing.hparams import LEGACY
from nmkevc.editing.tokens import escape_braces, fill, split_template, template_weights, templated
from nmkevc.errors import EditRequestError
from nmkevc.facts import EditRequest
from nmkevc.models.tokens import encode, lead_ids, plain_ids, target_ids


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
    assert hp.nullspace_threshold == 2e-2 and EditHparams(method="memit").memit_lambda0 == 1000  # ours, for SmolLM2
    assert hp.mask_bounds == (0.3, 0.4) and hp.mask_exponents == (3.0, 2.0)
    assert hp.updated(mask_bounds=(0.5, 0.6), preset="published").mask_bounds == (0.5, 0.6)  # later wins
    assert hp.updated(mask_bounds=(0.5, 0.6)).updated(preset="published").mask_bounds == (0.3, 0.4)
    assert hp.entropy_alpha == 30 and hp.amplification == 30
    # ours, not the authors': λ relative to the keys' scale, chosen on the dev split
    # (docs/figures/ridge.json); the published masked update stays the default
    assert hp.ridge_relative and 0 < hp.ridge <= 1 and hp.masked_update == "published"


def test_new_edits_get_the_reference_rules():
    hp = EditHparams()
    assert (hp.z_stop_on, hp.z_decay_form, hp.kl_position, hp.prompt_start, hp.key_average,
            hp.context_count) == ("total", "norm", "subject", "document", "groups", "total")


def test_a_stored_dict_without_the_rule_fields_replays_the_old_rules():
    """A commit stored before the rule fields existed has none of them: it must replay with the
    behaviour it was made with, while a dict that names a rule keeps it."""
    old = EditHparams().to_json()
    for name in LEGACY:
        old.pop(name, None)
    hp = EditHparams.from_json(old)
    assert {k: getattr(hp, k) for k in LEGACY if hasattr(hp, k)} == {k: v for k, v in LEGACY.items() if hasattr(hp, k)}
    assert EditHparams.from_json({"method": "memit"}).memit_frobenius == LEGACY["memit_frobenius"]
    assert (hp.z_stop_on, hp.z_decay_form, hp.kl_position, hp.prompt_start, hp.key_average,
            hp.context_count) == ("nll", "squared", "last", "tokenizer", "templates", "sampled")
    assert EditHparams.from_json(EditHparams().to_json()) == EditHparams()
    assert EditHparams.from_json({**old, "prompt_start": "document"}).prompt_start == "document"


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
        {"nullspace_energy": -0.1},
        {"nullspace_energy": True},
        {"nullspace_energy": 0.05, "nullspace_keep_fraction": 0.5},
        {"ridge": 0},
        {"kl_prompt": "no placeholder"},
        {"unknown_knob": 1},
        {"mask_bounds": ["a", "b"]},
        {"prompt_start": "none"},
        {"z_stop_on": "kl"},
        {"z_decay_form": "cube"},
        {"kl_position": "first"},
        {"key_average": "median"},
        {"context_count": "words"},
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
        single = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]  # the start rule
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
    assert target_ids(tok, "The capital of Italy is", "Rome") == tok(" Rome", add_special_tokens=False)["input_ids"]
    assert target_ids(tok, "", " Rome ") == tok(" Rome", add_special_tokens=False)["input_ids"]


class _Plain:
    """A tokenizer that adds nothing and has no <|endoftext|>: only BOS / EOS ids."""

    all_special_tokens = ["<s>", "</s>"]

    def __init__(self, bos, eos):
        self.bos_token_id, self.eos_token_id = bos, eos

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_the_start_rule(llama):
    """"document": the tokenizer's own leading special if it adds one, else its <|endoftext|>
    separator, else BOS, else EOS; "tokenizer": its own default (nothing for the test tokenizer,
    like SmolLM2)."""
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing

    _, tok = llama
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    assert lead_ids(tok) == lead_ids(tok, "document") == [sep] and lead_ids(tok, "tokenizer") == []
    assert encode(tok, ["Paris"], [5], start="tokenizer").subject_pos.tolist() == [0]
    assert encode(tok, ["Paris"], [5]).subject_pos.tolist() == [1]  # never at position 0
    # a chat tokenizer declaring a turn marker as its BOS still starts with the separator
    chat = AutoTokenizer.from_pretrained(tok.name_or_path)
    chat.add_special_tokens({"bos_token": AddedToken("<|im_start|>", special=True)})
    assert chat.bos_token_id != sep and lead_ids(chat) == [sep]
    # without a separator: BOS, else EOS
    assert lead_ids(_Plain(bos=7, eos=8)) == [7] and lead_ids(_Plain(bos=None, eos=8)) == [8]
    own = AutoTokenizer.from_pretrained(tok.name_or_path)
    eos = own.eos_token_id
    own.backend_tokenizer.post_processor = TemplateProcessing(single=f"{own.eos_token} $A",
                                                              special_tokens=[(own.eos_token, eos)])
    assert lead_ids(own) == lead_ids(own, "tokenizer") == [eos]  # its own, not doubled


def test_key_weights_give_the_bare_prompt_half():
    tpl = ["{}", "A. {}", "B. {}", "C. {}", "D. {}", "E. {}"]
    assert template_weights(tpl, "groups").tolist() == pytest.approx([0.5] + [0.1] * 5)
    assert template_weights(tpl, "templates").tolist() == pytest.approx([1 / 6] * 6)
    assert template_weights(["{}"], "groups").tolist() == [1.0]
    assert template_weights(["A. {}", "B. {}"], "groups").tolist() == [0.5, 0.5]


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
    assert generate_context_templates(model, tok, seed=3, start="tokenizer") != a  # the start conditions sampling


def test_context_templates_count_the_prefix_in_the_token_cap(llama):
    """10 tokens in total, the prefix word's included (the reference code); the old rule sampled
    10 after it. Each sampled token is one read of the unembedding: count them."""
    from nmkevc.models.adapters import adapter_for

    model, tok = llama
    calls = []
    handle = adapter_for(model).lm_head_module(model).register_forward_hook(lambda *_: calls.append(1))
    try:
        for prefix in ("The", "Therefore"):
            n_prefix = len(plain_ids(tok, prefix))
            assert n_prefix >= 1
            for count, expect in (("total", 10 - n_prefix), ("sampled", 10)):
                calls.clear()
                generate_context_templates(model, tok, seed=1, n_tokens=10, prefixes=(prefix,), count=count)
                assert len(calls) == expect
    finally:
        handle.remove()


def test_settings_and_arms_from_a_command_line():
    from nmkevc.editing.hparams import parse_arm, parse_setting, split_top

    assert parse_setting("ridge=0.2") == ("ridge", 0.2)
    assert parse_setting("layers=[3, 4]") == ("layers", [3, 4])
    assert parse_setting("masked_update=compensated") == ("masked_update", "compensated")
    assert parse_setting("ridge_relative=false") == ("ridge_relative", False)
    assert split_top("nmke,nmke:layers=[3,4]:ridge=0.2, memit") == ["nmke", "nmke:layers=[3,4]:ridge=0.2", "memit"]
    assert parse_arm("nmke") == ("nmke", {})
    assert parse_arm("nmke:masked_update=compensated:layers=[3,4]") == (
        "nmke", {"masked_update": "compensated", "layers": [3, 4]})
    for bad in ("ridge", "=3", "2x=1"):
        with pytest.raises(EditRequestError, match="key=value"):
            parse_setting(bad)
    with pytest.raises(EditRequestError, match="names no method"):
        parse_arm(":ridge=1")
