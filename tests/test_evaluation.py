"""Evaluation layer against naive, unbatched reference computations on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import make_model_dir
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, AutoTokenizer

from nmkevc.errors import EditRequestError
from nmkevc.evaluation import (
    EvalCase,
    ZsreProbe,
    evaluate_requests,
    greedy_continuation,
    greedy_token_ids,
    next_token_topk,
    ngram_entropy,
    perplexity,
    scoring,
    target_logprobs,
    target_scores,
    text_ngram_entropy,
    zsre_accuracy,
    zsre_locality_reference,
)
from nmkevc.evaluation.neighbours import (
    FACT_EDITED,
    SUBJECT_EDITED,
    UNTOUCHED,
    neighbour_kinds,
    specificity_by_kind,
)
from nmkevc.evaluation.scoring import evaluating
from nmkevc.facts import EditRequest
from nmkevc.models.tokens import encode_pairs, lead_ids

PROMPTS = [
    "The capital of France is",
    "Rome is the capital of",
    "The mother tongue of Danielle Darrieux is",
    "Toko Yasuda plays the",
    "Because it rained, I stayed home. The official language of Brazil is",
]
TARGETS = ["Paris", " Italy", "French", "guitar piano", "Portuguese"]
CITIES = [" Paris", " Rome", " Berlin", " Madrid", " Lisbon", " Vienna", " Oslo", " Tokyo"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp(request.param), request.param, seed=1)
    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp("llama"), "llama", seed=2)
    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def naive_scores(model, tok, prompt, target, prefix=None):
    """One unpadded forward pass per pair: (per-token log-probs, per-token argmax); every
    context starts with <|endoftext|>, the test tokenizer's BOS (the start rule; it adds none itself)."""
    target = target if target.startswith(" ") else " " + target
    prefix = [tok.bos_token_id] if prefix is None else prefix
    ctx = list(prefix) + tok(prompt, add_special_tokens=False)["input_ids"]
    full = list(prefix) + tok(prompt + target, add_special_tokens=False)["input_ids"]
    assert full[: len(ctx)] == ctx
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].double()
    lp = logits.log_softmax(-1)
    pos = range(len(ctx), len(full))
    return [lp[i - 1, full[i]].item() for i in pos], [int(lp[i - 1].argmax()) for i in pos]


def naive_last_probs(model, tok, prompt):
    with torch.no_grad():
        ids = torch.tensor([[tok.bos_token_id] + tok(prompt)["input_ids"]])
        return model(input_ids=ids).logits[0, -1].double().softmax(-1)


# -- scoring --------------------------------------------------------------------------


def test_target_logprobs_match_naive(lm):
    model, tok = lm
    got = target_logprobs(model, tok, PROMPTS, TARGETS, batch_size=2)
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 2  # padding is exercised
    for g, p, t in zip(got, PROMPTS, TARGETS, strict=True):
        assert g == pytest.approx(sum(naive_scores(model, tok, p, t)[0]), abs=1e-4)


def test_target_scores_per_token_and_accuracy(lm):
    model, tok = lm
    scores = target_scores(model, tok, PROMPTS, TARGETS, batch_size=32)
    assert len(scores[3].token_ids) > 1  # a multi-token target
    for s, p, t in zip(scores, PROMPTS, TARGETS, strict=True):
        lps, argmax = naive_scores(model, tok, p, t)
        assert list(s.token_logprobs) == pytest.approx(lps, abs=1e-4)
        assert list(s.argmax_ids) == argmax
        hits = [a == b for a, b in zip(argmax, s.token_ids, strict=True)]
        assert s.accuracy == sum(hits) / len(hits)
        assert s.logprob == pytest.approx(sum(lps), abs=1e-4)


def test_target_logprobs_independent_of_batching(lm, monkeypatch):
    model, tok = lm
    together = target_logprobs(model, tok, PROMPTS, TARGETS, batch_size=32)
    pairs = zip(PROMPTS, TARGETS, strict=True)
    alone = [target_logprobs(model, tok, [p], [t])[0] for p, t in pairs]
    assert together == pytest.approx(alone, abs=1e-4)
    # models without `logits_to_keep` (older transformers) get full logits, same scores
    monkeypatch.setattr(scoring, "_accepts", lambda m, name: False)
    assert target_logprobs(model, tok, PROMPTS, TARGETS) == pytest.approx(together, abs=1e-4)
    monkeypatch.undo()
    # the same prompt against two single-token targets shares one forward pass
    two = target_logprobs(model, tok, [PROMPTS[0]] * 2, [" Paris", " Rome"])
    assert two == pytest.approx(
        [sum(naive_scores(model, tok, PROMPTS[0], t)[0]) for t in (" Paris", " Rome")],
        abs=1e-4,
    )


def test_shared_context_runs_once_for_multi_token_targets(lm, monkeypatch):
    """A prompt scored against two multi-token answers (its new and its true one) runs the prompt
    once and both answers on its cache, padded contexts of several lengths in one batch: the
    same scores as one unpadded pass per pair, with fewer tokens through the model."""
    model, tok = lm
    prompts = [p for p in PROMPTS for _ in range(2)] + [PROMPTS[1]]
    targets = ["guitar piano", "Paris Rome Berlin", "Italy", "New York City", "French wine",
               "Portuguese", "viola da gamba", "guitar", "Lisbon Oslo", "Tokyo Vienna", "Madrid"]
    seen: list[int] = []

    def count(_m, args, kwargs):
        seen.append(int(kwargs["input_ids"].numel()))

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        for batch_size in (3, 32):
            seen.clear()
            scores = target_scores(model, tok, prompts, targets, batch_size=batch_size)
            shared = sum(seen)
            for s, p, t in zip(scores, prompts, targets, strict=True):
                lps, argmax = naive_scores(model, tok, p, t)
                assert list(s.token_logprobs) == pytest.approx(lps, abs=1e-4)
                assert list(s.argmax_ids) == argmax
            seen.clear()
            monkeypatch.setattr(scoring, "_reorders_cache", lambda m: False)
            alone = target_scores(model, tok, prompts, targets, batch_size=batch_size)
            monkeypatch.undo()
            assert [a.token_logprobs for a in alone] == [
                pytest.approx(s.token_logprobs, abs=1e-4) for s in scores]
            assert shared < sum(seen)  # the padded token count; the contexts ran once
    finally:
        handle.remove()


def test_batches_bound_rows_and_continuations():
    tails = {"a": 5, "b": 1, "c": 1, "d": 0, "e": 3}
    got = list(scoring._batches(list("abcde"), 2, tails.get))
    # a row with more continuations than the bound still runs, alone; then 2 rows, ≤ 4 continuations
    assert got == [["a"], ["b", "c"], ["d", "e"]]


def test_leading_space_added_once(lm):
    model, tok = lm
    a, b = target_logprobs(model, tok, [PROMPTS[0]] * 2, ["Paris", " Paris"])
    assert a == b


def test_bos_adding_tokenizer(lm):
    """A tokenizer that wraps text in BOS ... EOS: keep the BOS, drop the trailing EOS."""
    model, tok = lm
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A <|endoftext|>", special_tokens=[("<|endoftext|>", bos)]
    )
    assert tok("x")["input_ids"][0] == bos
    got = target_logprobs(model, tok, PROMPTS, TARGETS, batch_size=2)
    for g, p, t in zip(got, PROMPTS, TARGETS, strict=True):
        assert g == pytest.approx(sum(naive_scores(model, tok, p, t, [bos])[0]), abs=1e-4)
    # an empty prompt is scored after the BOS
    ctx, _ = encode_pairs(tok, [""], ["Paris"])[0]
    assert ctx == [bos]


def test_next_token_topk_matches_softmax(lm):
    model, tok = lm
    top = next_token_topk(model, tok, PROMPTS[0], k=5)
    probs = naive_last_probs(model, tok, PROMPTS[0])
    ref = probs.topk(5)
    assert len(top) == 5
    assert sum(p for _, p in top) <= 1.0 + 1e-6
    assert [p for _, p in top] == pytest.approx(ref.values.tolist(), abs=1e-5)
    assert [t for t, _ in top] == [tok.decode([int(i)]) for i in ref.indices]
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_evaluating_restores_training_flag(lm):
    model, _ = lm
    model.train()
    with evaluating(model):
        assert not model.training
        assert not torch.is_grad_enabled()
    assert model.training
    model.eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj", "gpt_neox"])
def test_greedy_matches_generate(arch, tmp_path):
    d = make_model_dir(tmp_path, arch, seed=3)
    model, tok = AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    prompt = "The capital of Spain is"
    n = 10
    ids = greedy_token_ids(model, tok, prompt, max_new_tokens=n)
    assert ids == greedy_token_ids(model, tok, prompt, max_new_tokens=n)
    assert ids == greedy_token_ids(model, tok, prompt, max_new_tokens=n, use_cache=False)
    enc = tok(tok.bos_token + prompt, return_tensors="pt")  # the start rule: BOS in front
    assert enc["input_ids"][0, 0] == tok.bos_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=0)
    ref = out[0, enc["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    if eos in ref:  # generate() emits the EOS it stops on; we stop before it
        ref = ref[: ref.index(eos)]
    assert ids == ref
    text = greedy_continuation(model, tok, prompt, max_new_tokens=n)
    assert text == tok.decode(ref, skip_special_tokens=True)


# -- CounterFact metrics ----------------------------------------------------------------


def ranked_cities(model, tok, prompt):
    lps = target_logprobs(model, tok, [prompt] * len(CITIES), CITIES)
    order = sorted(range(len(CITIES)), key=lambda i: -lps[i])
    return [CITIES[i].strip() for i in order], sorted(lps, reverse=True)


def test_counterfact_metrics_hand_built(llama):
    model, tok = llama
    prompt = "The capital of France is"
    (best, second, *_, worst), lps = ranked_cities(model, tok, prompt)
    assert lps[0] > lps[-1]
    hit = EditRequest(
        subject="France", prompt="The capital of {} is", target_new=best, target_true=worst,
        paraphrases=(prompt, prompt), neighborhood=(prompt,), case_id="hit",
    )
    miss = EditRequest(
        subject="France", prompt="The capital of {} is", target_new=worst, target_true=best,
        paraphrases=(prompt,), neighborhood=(prompt, prompt), case_id="miss",
    )
    report = evaluate_requests(model, tok, [hit, miss], batch_size=3)
    a, b = report.records
    assert (a.efficacy, a.generalization, a.specificity) == (1.0, 1.0, 0.0)
    assert (b.efficacy, b.generalization, b.specificity) == (0.0, 0.0, 1.0)
    assert (report.efficacy, report.generalization, report.specificity) == (0.5, 0.5, 0.5)
    assert report.score == pytest.approx(0.5)
    assert a.rewrite.criterion == "compare"
    assert a.rewrite.logp_new == pytest.approx(lps[0], abs=1e-5)
    assert a.rewrite.logp_true == pytest.approx(lps[-1], abs=1e-5)
    assert report.mean_p_new == pytest.approx((math.exp(lps[0]) + math.exp(lps[-1])) / 2)
    assert report.efficacy_magnitude == pytest.approx(0.0, abs=1e-9)  # symmetric pair
    assert evaluate_requests(model, tok, []).efficacy is None
    out = json.loads(json.dumps(report.to_json()))
    assert out["summary"]["efficacy"] == 0.5
    assert out["records"][0]["case_id"] == "hit"


def test_counterfact_top1_criterion_without_target_true(llama):
    """Without target_true, efficacy is whether target_new's first token is top-1."""
    model, tok = llama
    prompt = "The capital of Italy is"
    paris = encode_pairs(tok, [prompt], ["Paris"])[0][1][0]
    req = EditRequest(subject="Italy", prompt="The capital of {} is", target_new="Paris",
                      paraphrases=("Rome is the capital of",), neighborhood=(prompt,))
    bias = torch.zeros(len(tok))
    bias[paris] = 100.0  # make " Paris" the argmax after every prompt
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: o + bias)
    try:
        r = evaluate_requests(model, tok, [req]).records[0]
    finally:
        hook.remove()
    assert r.rewrite.criterion == "top1" and r.rewrite.new_is_top1
    assert (r.efficacy, r.generalization, r.specificity) == (1.0, 1.0, 0.0)
    report = evaluate_requests(model, tok, [req])  # hook removed: a random model
    assert report.records[0].rewrite.new_is_top1 == (
        int(naive_last_probs(model, tok, prompt).argmax()) == paris
    )
    assert report.mean_p_true is None and report.efficacy_magnitude is None


def test_counterfact_neighbourhood_answers(llama):
    model, tok = llama
    prompt = "The capital of France is"
    (best, *_, worst), _ = ranked_cities(model, tok, prompt)
    req = EditRequest(subject="Spain", prompt="The capital of {} is", target_new=worst,
                      target_true=best, neighborhood=(prompt, prompt))
    # the first neighbour's own answer is even less likely than target_new
    case = EvalCase(req, neighborhood_answers=("Zzyzx qq", best))
    r = evaluate_requests(model, tok, [case]).records[0]
    assert [p.true_answer for p in r.neighborhood] == ["Zzyzx qq", best]
    assert [p.success for p in r.neighborhood] == [False, True]
    assert r.specificity == 0.5
    with pytest.raises(EditRequestError):
        EvalCase(req, neighborhood_answers=("only one",))
    with pytest.raises(EditRequestError):
        EvalCase(req, neighborhood_subjects=("France",))


def _case(subject: str, relation: str, neighbours: tuple[str, ...]) -> EvalCase:
    req = EditRequest(subject=subject, prompt="The capital of {} is", target_new="Oslo", target_true="Paris",
                      neighborhood=tuple(f"The capital of {s} is" for s in neighbours))
    return EvalCase(req, relation=relation, neighborhood_subjects=neighbours)


def test_neighbour_kinds_against_the_history():
    cases = [_case("France", "capital", ("Spain", "Chile", "Peru")),
             _case("Spain", "currency", ("France", "Chile")),
             _case("Chile", "capital", ("Peru", "France"))]
    # after the first two edits: Spain's capital is not edited (its currency is), France's capital is
    assert neighbour_kinds(cases[:2], cases[:2]) == [(SUBJECT_EDITED, UNTOUCHED, UNTOUCHED),
                                                     (SUBJECT_EDITED, UNTOUCHED)]
    assert neighbour_kinds(cases, cases) == [(SUBJECT_EDITED, FACT_EDITED, UNTOUCHED),
                                             (SUBJECT_EDITED, SUBJECT_EDITED),
                                             (UNTOUCHED, FACT_EDITED)]
    with pytest.raises(EditRequestError, match="relation"):
        neighbour_kinds([EvalCase(cases[0].request)], cases)


def test_specificity_by_kind_counts_prompts(llama):
    model, tok = llama
    prompt = "The capital of France is"
    (best, *_, worst), _ = ranked_cities(model, tok, prompt)
    req = EditRequest(subject="Spain", prompt="The capital of {} is", target_new=worst, target_true=best,
                      neighborhood=(prompt, prompt, prompt))
    case = EvalCase(req, neighborhood_answers=("Zzyzx qq", best, best), relation="capital",
                    neighborhood_subjects=("France", "France", "France"))
    report = evaluate_requests(model, tok, [case])
    assert [p.success for p in report.records[0].neighborhood] == [False, True, True]
    got = specificity_by_kind(report, [(FACT_EDITED, FACT_EDITED, UNTOUCHED)])
    assert got == {UNTOUCHED: {"prompts": 1, "specificity": 1.0}, SUBJECT_EDITED: {"prompts": 0, "specificity": None},
                   FACT_EDITED: {"prompts": 2, "specificity": 0.5}}
    with pytest.raises(EditRequestError):
        specificity_by_kind(report, [])


# -- zsRE -----------------------------------------------------------------------------


def test_zsre_accuracy(llama):
    model, tok = llama
    rec = ZsreProbe(
        prompt="The capital of France is", target="Paris city", rephrase="France's capital is",
        loc="The currency of Japan is", loc_ans="the yen",
    )
    report = zsre_accuracy(model, tok, [rec, rec])
    res = report.records[0]

    def acc(prompt, target):
        _, argmax = naive_scores(model, tok, prompt, target)
        tgt = encode_pairs(tok, [prompt], [target])[0][1]
        return sum(a == t for a, t in zip(argmax, tgt, strict=True)) / len(tgt)

    assert res.rewrite_acc == acc(rec.prompt, rec.target)
    assert res.rephrase_acc == acc(rec.rephrase, rec.target)
    assert res.locality == acc(rec.loc, rec.loc_ans)
    assert report.locality_vs == "answer"
    ref = zsre_locality_reference(model, tok, [rec, rec])
    assert ref == report.locality_reference()
    same = zsre_accuracy(model, tok, [rec, rec], reference=ref)
    assert same.specificity == 1.0 and same.locality_vs == "reference"
    flipped = [tuple(t + 1 for t in row) for row in ref]
    assert zsre_accuracy(model, tok, [rec, rec], reference=flipped).specificity == 0.0


# -- perplexity and fluency -------------------------------------------------------------


TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "You are kind.",
    "Paris London Rome Berlin Madrid Lisbon Vienna Prague Warsaw Athens Oslo Tokyo",
    "x",
]


def naive_perplexity(model, tok, windows):
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            if len(ids) < 2:
                continue
            lp = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
            nll -= sum(lp[i - 1, ids[i]].item() for i in range(1, len(ids)))
            count += len(ids) - 1
    return math.exp(nll / count)


def test_perplexity_matches_naive(lm):
    """Every window starts with the BOS (the start rule), so its first text token is scored."""
    model, tok = lm
    bos = [tok.bos_token_id]
    assert lead_ids(tok) == bos and tok("x")["input_ids"][0] != tok.bos_token_id
    ids = [tok(t)["input_ids"] for t in TEXTS]
    got = perplexity(model, tok, TEXTS, batch_size=3)
    assert got == pytest.approx(naive_perplexity(model, tok, [bos + w for w in ids]), rel=1e-5)
    # windows of 8 tokens (the BOS and 7 of text), each scored on its own
    windows = [bos + w[i : i + 7] for w in ids for i in range(0, len(w), 7)]
    got8 = perplexity(model, tok, TEXTS, seq_len=8, batch_size=2)
    assert got8 == pytest.approx(naive_perplexity(model, tok, windows), rel=1e-5)
    # max_tokens takes the first 15 text tokens in order (truncating the last text taken)
    budget, taken = 15, []
    for w in ids:
        taken.append(bos + w[:budget])
        budget -= len(taken[-1]) - 1
        if budget == 0:
            break
    got15 = perplexity(model, tok, TEXTS, max_tokens=15)
    assert got15 == pytest.approx(naive_perplexity(model, tok, taken), rel=1e-5)
    assert got == perplexity(model, tok, TEXTS, batch_size=3)  # deterministic


def test_ngram_entropy_known_values():
    # words a b a b: bigrams {ab: 2, ba: 1}, trigrams {aba: 1, bab: 1}
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert text_ngram_entropy("a b a b") == pytest.approx(expected)
    assert text_ngram_entropy("Paris Paris Paris Paris") == 0.0
    assert text_ngram_entropy("one") == 0.0
    assert ngram_entropy(["a b a b", "one"]) == pytest.approx(expected / 2)
    # punctuation counts as words, as with nltk's tokenizer
    assert text_ngram_entropy("a, b") == pytest.approx((2 / 3 * 1.0 + 4 / 3 * 0.0) / 2)
    with pytest.raises(ValueError):
        ngram_entropy([])
