"""`merge --strategy replay` and the functional check, with real (tiny-model) edits."""

import pytest

from nmkevc import EditRequest, Repository
from nmkevc.errors import MergeConflictError

HP = {"layers": [1, 2], "stats_tokens": 2000}


@pytest.fixture
def llama_repo(model_dirs, tmp_path):
    return Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))


def test_replay_reruns_their_edits_on_ours(llama_repo):
    repo = llama_repo
    repo.branch("theirs")
    repo.edit(EditRequest("France", "The capital of {} is", "Rome"), **HP)
    repo.switch("theirs")
    t1 = repo.edit(EditRequest("Spain", "The capital of {} is", "Oslo"), **HP).commit
    repo.switch("main")
    rep = repo.merge("theirs", strategy="replay", functional=False)
    merge = repo.commit(rep.commit)
    assert rep.cancelled == [t1] and merge.delta is not None
    assert merge.info["replay"]["replayed"] == [t1]
    assert [r["target_new"] for r in merge.requests] == ["Oslo"]
    eff = repo.effective(rep.commit)
    assert t1 not in eff and rep.commit in eff
    facts = sorted(r.target_new for _, r in repo.facts())
    assert facts == ["Oslo", "Rome"]
    # the replayed delta was computed with C of ours: different from the original delta
    assert merge.delta != repo.commit(t1).delta
    assert repo.fsck().ok


def test_functional_conflict_is_reported(llama_repo):
    """Two edits of the same fact to different targets: whichever lands second wins on the
    merged model, so the other no longer holds — a functional (and a fact) conflict."""
    repo = llama_repo
    repo.branch("theirs")
    ours = repo.edit(EditRequest("France", "The capital of {} is", "Rome"), **HP).commit
    repo.switch("theirs")
    theirs = repo.edit(EditRequest("France", "The capital of {} is", "Oslo"), **HP).commit
    repo.switch("main")
    head = repo.resolve()
    with pytest.raises(MergeConflictError) as e:
        repo.merge("theirs")
    report = e.value.report
    assert [(f["ours_commit"], f["theirs_commit"]) for f in report["fact_conflicts"]] == [(ours, theirs)]
    failures = report["functional_conflicts"]
    assert failures, "an edit of the same fact to another target must stop holding on the merged model"
    by_commit = {ours: "Rome", theirs: "Oslo"}
    for f in failures:
        assert f["commit"] in by_commit and f["target"] == by_commit[f["commit"]]
        assert f["text"] == "The capital of France is"
        assert f["logp_target"] <= f["logp_old"]  # the target is no longer preferred over the old answer
    assert repo.resolve() == head
