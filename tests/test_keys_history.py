"""C_l = Σ K Kᵀ follows the effective set: branches, merges, reverts — never a global."""

import torch
from random_deltas import random_delta, request

from nmkevc.facts import EditRequest
from nmkevc.workbench.statistics import prior_key_covariance


def kkt(delta, name):
    w = delta.by_name()[name]
    return w.K.double() @ w.K.double().T


def test_keys_cov_follows_effective_set(repo):
    name = random_delta(repo).weights[0].name
    d1, d2, d3 = (random_delta(repo, seed=s, n_keys=2) for s in (1, 2, 3))
    c1 = repo.commit_delta(d1, "one", [EditRequest.from_json(request("A", "x"))])
    repo.branch("side")
    c2 = repo.commit_delta(d2, "two", [EditRequest.from_json(request("B", "y"))])
    repo.switch("side")
    repo.commit_delta(d3, "three", [EditRequest.from_json(request("C", "z"))])

    def cov(rev):
        return prior_key_covariance(repo.plumbing, repo.effective(repo.resolve(rev)), [name])[name].double()

    assert torch.allclose(cov("side"), kkt(d1, name) + kkt(d3, name), atol=1e-4)
    assert torch.allclose(cov("main"), kkt(d1, name) + kkt(d2, name), atol=1e-4)
    repo.merge("main", functional=False)
    assert torch.allclose(cov("HEAD"), kkt(d1, name) + kkt(d2, name) + kkt(d3, name), atol=1e-4)
    repo.revert(c1)
    assert torch.allclose(cov("HEAD"), kkt(d2, name) + kkt(d3, name), atol=1e-4)
    repo.revert(c2)
    assert torch.allclose(cov("HEAD"), kkt(d3, name), atol=1e-4)
    assert prior_key_covariance(repo.plumbing, repo.effective(repo.log()[-1].id), [name]) == {}


def test_edit_passes_history_keys_to_the_editor(repo, monkeypatch):
    """The editor receives exactly C of HEAD's effective set, per layer index."""
    import nmkevc.editing as editing

    d1 = random_delta(repo, seed=1, layers=(0, 1))
    repo.commit_delta(d1, "one", [EditRequest.from_json(request("A", "x"))])
    seen = {}

    def fake_compute_edit(model, tokenizer, requests, hp, **kw):
        seen.update(kw)
        raise KeyboardInterrupt  # stop before anything is written

    monkeypatch.setattr(editing, "compute_edit", fake_compute_edit)
    head = repo.resolve()
    try:
        repo.edit(EditRequest("France", "The capital of {} is", "Rome"), layers=[0, 1], stats_tokens=500)
    except KeyboardInterrupt:
        pass
    prior = seen["prior_keys_cov"]
    assert sorted(prior) == [0, 1]
    for w in d1.weights:
        assert torch.allclose(prior[w.layer].double(), kkt(d1, w.name), atol=1e-4)
    assert repo.resolve() == head and not repo.plumbing.lock.held
