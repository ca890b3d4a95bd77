"""Model state is explicit: handles at a state refuse use once the shared model moved, and
the base is read from a model of its own, so preparing or checking an edit never moves
the model someone else holds."""

import pytest
import torch
from random_deltas import random_delta, request

from nmkevc.errors import StaleModelError
from nmkevc.facts import EditRequest
from nmkevc.repo import Repo
from nmkevc.workbench import Workbench


def req(subject, target):
    return [EditRequest.from_json(request(subject, target))]


def test_handle_refuses_use_after_the_model_moved(repo):
    root = repo.resolve()
    c1 = repo.commit_delta(random_delta(repo, seed=1), "one", req("France", "Rome"))
    r = Workbench(Repo.open(repo.root))
    at_c1 = r.model_at(c1)
    w = random_delta(repo, seed=1).weights[0].name
    edited = at_c1.model.get_parameter(w).detach().clone()
    at_root = r.model_at(root)
    assert at_root.current and not at_c1.current
    with pytest.raises(StaleModelError, match="moved to another revision"):
        _ = at_c1.model
    # the root's weights really are the base's, and asking again moves the model back
    assert torch.equal(at_root.model.get_parameter(w), at_root.weights.get(w))
    again = r.model_at(c1)
    assert torch.equal(again.model.get_parameter(w), edited) and at_c1.current and not at_root.current


def test_base_model_is_apart_from_the_live_one(repo):
    c1 = repo.commit_delta(random_delta(repo, seed=1, scale=0.5), "one", req("France", "Rome"))
    r = Workbench(Repo.open(repo.root))
    head = r.model_at(c1)
    base = r.base_model(r.repo.commit(c1).base)
    assert base.model is not head.model
    w = random_delta(repo, seed=1).weights[0].name
    assert torch.equal(base.model.get_parameter(w), base.weights.get(w))
    assert not torch.equal(head.model.get_parameter(w), base.weights.get(w))
    assert head.current and base.current


def test_the_tokenizer_is_loaded_once_per_workbench(repo, monkeypatch):
    """A check before the edit reads the tokenizer; the live model and the base model loaded
    after it use that one instead of loading their own (~2 s each on SmolLM2)."""
    import nmkevc.models.live as live
    import nmkevc.models.loading as loading

    loads = []
    real = loading.load_tokenizer

    def counted(model_dir):
        loads.append(model_dir)
        return real(model_dir)

    monkeypatch.setattr(loading, "load_tokenizer", counted)
    monkeypatch.setattr(live, "load_tokenizer", counted)
    c1 = repo.commit_delta(random_delta(repo, seed=1), "one", req("France", "Rome"))
    r = Workbench(Repo.open(repo.root))
    base_id = r.repo.commit(c1).base
    tok = r.tokenizer(base_id)
    head = r.model_at(c1)
    base = r.base_model(base_id)
    assert len(loads) == 1 and head.tokenizer is tok and base.tokenizer is tok
    # and the other way round: a model loaded first lends its tokenizer to the checks
    loads.clear()
    r2 = Workbench(Repo.open(repo.root))
    assert r2.base_model(base_id).tokenizer is r2.model_at(c1).tokenizer is r2.tokenizer(base_id)
    assert len(loads) == 1


def test_preparing_an_edit_does_not_move_the_model_of_head(repo):
    """Context templates and statistics are of the base: computing them leaves a handle at
    HEAD valid (they used to flip the one shared model HEAD -> base -> HEAD)."""
    from nmkevc.editing import EditHparams
    from nmkevc.workbench import Workbench
    from nmkevc.workbench.statistics import context_templates, second_moments, templates_key

    c1 = repo.commit_delta(random_delta(repo, seed=1, scale=0.5), "one", req("France", "Rome"))
    bench = Workbench(Repo.open(repo.root))
    r = bench.repo
    base_id = r.commit(c1).base
    head = bench.model_at(c1)
    key = templates_key(base_id, EditHparams())
    assert r.caches.find_templates(key) is None
    templates = context_templates(bench, key)
    sigmas, ids = second_moments(bench, base_id, [1], bench.corpus(), tokens=300)
    assert head.current
    assert r.caches.find_templates(key) == templates
    assert r.caches.find_stats(next(iter(_keys(bench, base_id, [1])))) is not None and set(ids) == {1}
    assert sigmas[1].shape[0] == sigmas[1].shape[1]


def _keys(bench, base_id, layers):
    from nmkevc.repo.caches import StatsKey

    adapter = bench.adapter(base_id)
    return [StatsKey(base_id, adapter.weight_name(x), bench.corpus().id, 300) for x in layers]


def test_edit_leaves_the_callers_hparams_alone_and_records_the_layers(repo):
    from nmkevc.editing import EditHparams

    hp = EditHparams(layers=None, z_steps=2)
    before = hp.to_json()
    out = repo.edit(EditRequest("France", "The capital of {} is", "Rome"), hparams=hp, stats_tokens=300)
    assert hp.to_json() == before  # not mutated
    recorded = repo.commit(out.commit).method["hparams"]["layers"]
    assert recorded and recorded == [x["layer"] for x in out.layers]
