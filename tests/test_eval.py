"""`nmkevc eval` on the history and on the standard formats (CounterFact, zsRE), tiny models."""

import json

from random_deltas import random_delta

from nmkevc.facts import EditRequest

CF = [{
    "case_id": 7,
    "requested_rewrite": {"prompt": "The capital of {} is", "subject": "France",
                          "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
    "paraphrase_prompts": ["France's capital is", "The capital city of France is"],
    "neighborhood_prompts": ["The capital of Spain is", "The capital of Italy is"],
}]
ZSRE = [{"subject": "France", "src": "What is the capital of France?", "alt": "Rome", "answers": ["Paris"],
         "rephrase": "Which city is the capital of France?", "loc": "nq question: who wrote hamlet",
         "loc_ans": "William Shakespeare"}]


def test_eval_history(repo, run):
    repo.commit_delta(random_delta(repo, seed=1, scale=0.5), "edit", [
        EditRequest("France", "The capital of {} is", "Rome", paraphrases=("France's capital is",))])
    code, out, _ = run(repo, "eval", "--json", "--records")
    res = json.loads(out)
    assert code == 0 and res["kind"] == "history" and res["count"] == 1
    assert set(res["summary"]) >= {"efficacy", "generalization", "specificity"}
    assert res["summary"]["generalization"] is not None and res["summary"]["specificity"] is None
    assert res["perplexity"]["base"] > 1 and res["perplexity"]["model"] != res["perplexity"]["base"]
    assert len(res["records"]) == 1
    code, out, _ = run(repo, "eval", "--rev", repo.log()[-1].id[:10], "--json")
    res = json.loads(out)
    assert res["count"] == 0 and res["perplexity"]["change"] == 0


def test_eval_counterfact_and_zsre(repo, tmp_path, run):
    cf = tmp_path / "cf.json"
    cf.write_text(json.dumps(CF))
    code, out, _ = run(repo, "eval", "--dataset", str(cf), "--json", "--no-perplexity")
    res = json.loads(out)
    assert code == 0 and res["kind"] == "counterfact" and res["count"] == 1
    for k in ("efficacy", "generalization", "specificity"):
        assert 0 <= res["summary"][k] <= 1
    zs = tmp_path / "zsre.json"
    zs.write_text(json.dumps(ZSRE))
    code, out, _ = run(repo, "eval", "--dataset", str(zs), "--json", "--no-perplexity")
    res = json.loads(out)
    assert code == 0 and res["kind"] == "zsre"
    assert res["summary"]["specificity"] == 1.0  # nothing edited: locality vs the unedited model is 1
    code, text, _ = run(repo, "eval", "--dataset", str(zs), "--no-perplexity")
    assert "efficacy" in text and "zsre record" in text


def test_eval_bad_dataset(repo, tmp_path, run):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"foo": 1}]')
    code, _, err = run(repo, "eval", "--dataset", str(bad))
    assert code != 0 and err.startswith("error: ") and "neither CounterFact" in err
