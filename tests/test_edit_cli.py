"""`edit`, `ask`, `blame`, `eval` and `dataset` through the CLI: bad input and a tiny-model flow."""

import json
import math

import pytest

from nmkevc import Repository


def one_line(err: str) -> bool:
    lines = [x for x in err.strip().splitlines() if x]
    return len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.parametrize("args,needle", [
    (["-s", "Spain", "-p", "The capital of France is", "-t", "Rome"], "contains neither"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "  "], "target is empty"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--method", "rome"], "--method"),
    (["-s", "France", "-p", "The capital of {} is"], "missing --target"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--layers", "x-y"], "--layers"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--layers", "2-99"], "does not exist"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--set", "ridge"], "key=value"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--set", "rigde=0.2"], "unknown edit hyperparameter"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--set", "masked_update=x"], "masked_update"),
])
def test_edit_bad_input(repo, args, needle, run):
    head = repo.resolve()
    code, _, err = run(repo, "edit", *args)
    assert code != 0 and one_line(err) and needle in err
    assert Repository.open(repo.dir).resolve() == head


def test_malformed_edit_file_names_line(repo, tmp_path, run):
    f = tmp_path / "edits.jsonl"
    f.write_text('{"subject": "France", "prompt": "The capital of {} is", "target": "Rome"}\n'
                 '{"subject": "Spain", "prompt": "The capital of {} is"\n')
    code, _, err = run(repo, "edit", "--file", str(f))
    assert code != 0 and one_line(err) and "line 2" in err
    f.write_text('{"subject": "France", "prompt": "The capital of {} is", "target": "Rome"}\n'
                 '{"subject": "Spain", "prompt": "The capital of {} is", "target": ""}\n')
    code, _, err = run(repo, "edit", "--file", str(f))
    assert code != 0 and one_line(err) and "line 2" in err


def test_dataset_build(repo, tmp_path, run):
    pytest.importorskip("countryinfo", reason="the countryinfo package is not installed")
    out = tmp_path / "ci.json"
    from nmkevc.datasets.countryinfo_set import RELATIONS

    code, text, _ = run(repo, "dataset", "build", "countryinfo", str(out), "--max-per-relation", "2")
    n = 2 * len(RELATIONS)  # two records of every relation
    assert code == 0 and f"wrote {n} records" in text
    recs = json.loads(out.read_text())
    assert len(recs) == n and all("{}" in r["requested_rewrite"]["prompt"] for r in recs)


def _independent(model_dir, prompt, target):
    """(top-1 next token, its probability, P(" " + target)) of an exported model directory,
    with transformers alone; the prompt begins with the BOS token, as every prompt nmkevc runs
    (the test tokenizer adds none itself)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ctx = [tok.bos_token_id] + tok(prompt)["input_ids"]
    tgt = tok(" " + target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ctx + tgt])).logits[0].log_softmax(-1)
    p_target = math.exp(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(tgt)))
    p, i = logp[len(ctx) - 1].exp().max(-1)
    return tok.decode([int(i)]), float(p), p_target


def test_edit_ask_blame_flow(repo, tmp_path, run):
    """A successful edit through the CLI, then ask and blame: the edit is committed on HEAD
    with a before/after check that matches the models, ask answers what the exported model
    answers, and blame names the edit exactly when it changed the top answer. (Tiny random
    models are not meant to learn the fact; efficacy is the SmolLM2 tests' claim.)"""
    prompt = "The capital of France is"
    root = repo.resolve()
    code, out, err = run(repo, "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome",
                         "--target-true", "Paris", "--layers", "1-2", "--stats-tokens", "400", "--json",
                         "--set", "z_steps=7", "--set", "masked_update=compensated")
    assert code == 0, err
    (outcome,) = json.loads(out)
    head = Repository.open(repo.root)
    commit = head.commit(outcome["commit"])
    hp = commit.method["hparams"]
    assert (hp["z_steps"], hp["masked_update"], hp["layers"]) == (7, "compensated", [1, 2])
    assert head.resolve() == outcome["commit"] and commit.parents == (root,) and commit.delta
    assert [x["layer"] for x in outcome["layers"]] == [1, 2] and outcome["stored_bytes"] > 0
    (check,) = outcome["checks"]
    assert check["text"] == prompt and check["target_new"] == "Rome"

    answers = {}
    for rev, p_recorded in ((root, check["p_before"]), (outcome["commit"], check["p_after"])):
        code, out, _ = run(repo, "ask", prompt, "--rev", rev, "--json", "--max-new-tokens", "0")
        assert code == 0
        ans = json.loads(out)
        assert ans["commit"] == rev
        exported = tmp_path / f"export-{rev[:8]}"
        assert run(repo, "export", rev, str(exported))[0] == 0
        token, p, p_target = _independent(exported, prompt, "Rome")
        assert ans["top"][0][0] == token and ans["top"][0][1] == pytest.approx(p, rel=1e-4)
        assert p_recorded == pytest.approx(p_target, rel=1e-4)
        answers[rev] = token

    code, out, _ = run(repo, "blame", prompt, "--json")
    rep = json.loads(out)
    assert code == 0 and rep["answer"] == answers[outcome["commit"]]
    changed = answers[root] != answers[outcome["commit"]]
    assert [line["commit"] for line in rep["lines"]] == ([outcome["commit"]] if changed else [])


def test_edit_with_the_projected_masked_update(repo, run):
    """A masked form that reads Σ gets it from the repository's statistics (the porcelain asks the method)."""
    code, out, err = run(repo, "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome",
                         "--layers", "1-2", "--stats-tokens", "400", "--json", "--set", "masked_update=projected")
    assert code == 0, err
    (outcome,) = json.loads(out)
    commit = Repository.open(repo.root).commit(outcome["commit"])
    assert commit.method["hparams"]["masked_update"] == "projected"
    assert all(0 < x["info"]["mask_nullspace_kept"] <= x["neurons"] for x in
               Repository.open(repo.root).show(outcome["commit"]).to_json()["weights"])


def test_the_check_before_an_edit_scores_the_rewrite_prompt_alone(repo, run, monkeypatch):
    """Before the edit only P(new) on the rewrite prompt is recorded, so only that is scored;
    the paraphrases and the true answer are scored after the edit, as the commit reports them."""
    import nmkevc.evaluation.metrics as metrics

    seen = []
    real = metrics.evaluate_requests

    def recording(model, tokenizer, requests, *a, **kw):
        seen.append([(r.target_true, tuple(r.paraphrases), tuple(r.neighborhood)) for r in requests])
        return real(model, tokenizer, requests, *a, **kw)

    monkeypatch.setattr(metrics, "evaluate_requests", recording)
    code, out, err = run(repo, "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome",
                         "--target-true", "Paris", "--paraphrase", "France's capital city is", "--layers", "1-2",
                         "--stats-tokens", "400", "--json", "--set", "z_steps=3")
    assert code == 0, err
    before, after = seen
    assert before == [(None, (), ())]
    assert after == [("Paris", ("France's capital city is",), ())]
    (check,) = json.loads(out)[0]["checks"]
    assert 0 <= check["p_before"] <= 1 and "generalization" in check
