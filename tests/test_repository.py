"""The state model on tiny Llama- and GPT-2-style models: determinism, revert, merge, export."""

import hashlib

import pytest
import torch
from random_deltas import random_delta, request
from safetensors.torch import load_file

from nmkevc import Repository
from nmkevc.errors import MergeConflictError, NmkevcError, RevisionError
from nmkevc.facts import EditRequest


def req(subject, target):
    return [EditRequest.from_json(request(subject, target))]


def state_bytes(model) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest()
            for k, v in model.state_dict().items()}


def base_state(repo):
    fresh = Repository.open(repo.dir)
    return state_bytes(fresh.load_model(fresh.log()[-1].id).model)


def test_materialised_weight_is_base_plus_deltas(repo):
    d1, d2 = random_delta(repo, seed=1), random_delta(repo, seed=2)
    repo.commit_delta(d1, "one", req("France", "Rome"))
    repo.commit_delta(d2, "two", req("Spain", "Oslo"))
    live = repo.load_model()
    for w1, w2 in zip(d1.weights, d2.weights):
        base = live.weights.get(w1.name)
        want = base.double() + w1.dense().double() + w2.dense().double()
        got = live.model.get_parameter(w1.name).detach()
        assert torch.allclose(got.double(), want, atol=1e-6)


def test_checkout_is_deterministic_and_revert_is_exact(repo):
    base = state_bytes(repo.load_model().model)
    c1 = repo.commit_delta(random_delta(repo, seed=1), "one", req("France", "Rome"))
    repo.commit_delta(random_delta(repo, seed=2), "two", req("Spain", "Oslo"))
    at_head = state_bytes(repo.load_model().model)
    assert at_head != base
    # a fresh repository object (nothing cached) gives the same bytes
    assert state_bytes(Repository.open(repo.dir).load_model().model) == at_head
    # moving the cached live model back and forth gives the same bytes too
    assert state_bytes(repo.load_model(c1).model) == state_bytes(Repository.open(repo.dir).load_model(c1).model)
    assert state_bytes(repo.load_model().model) == at_head
    repo.revert("HEAD")
    repo.revert(c1)
    assert state_bytes(repo.load_model().model) == base
    assert state_bytes(Repository.open(repo.dir).load_model().model) == base


def test_merge_both_directions_identical(repo):
    root = repo.resolve()
    repo.branch("a")
    repo.branch("b")
    repo.switch("a")
    repo.commit_delta(random_delta(repo, seed=1), "a1", req("France", "Rome"))
    repo.commit_delta(random_delta(repo, seed=2, layers=(0,)), "a2", req("Italy", "Paris"))
    repo.switch("b")
    repo.commit_delta(random_delta(repo, seed=3), "b1", req("Spain", "Oslo"))
    repo.branch("b2")
    rep = repo.merge("a", functional=False)
    assert rep.result == "merged" and len(rep.theirs_side) == 2
    ab = state_bytes(Repository.open(repo.dir).load_model().model)
    repo.switch("a")
    repo.merge("b2", functional=False)
    ba = state_bytes(Repository.open(repo.dir).load_model().model)
    assert ab == ba
    assert root in repo.effective(repo.resolve())


def test_fast_forward_and_up_to_date(repo):
    repo.branch("feature")
    repo.switch("feature")
    tip = repo.commit_delta(random_delta(repo, seed=1), "f", req("France", "Rome"))
    repo.switch("main")
    assert repo.merge("feature").result == "fast-forward"
    assert repo.resolve("main") == tip
    assert repo.merge("feature").result == "up-to-date"


def _diverge(repo, ours, theirs, **kw):
    repo.branch("other")
    repo.commit_delta(ours, "ours", kw.get("ours_req", req("France", "Rome")))
    repo.switch("other")
    repo.commit_delta(theirs, "theirs", kw.get("theirs_req", req("Spain", "Oslo")))
    repo.switch("main")


def test_fact_conflict_stops_merge_and_changes_nothing(repo):
    _diverge(repo, random_delta(repo, seed=1, layers=(0,)), random_delta(repo, seed=2, layers=(2,)),
             theirs_req=req("France", "Berlin"))
    head, objs = repo.resolve(), sorted(repo.plumbing.store)
    with pytest.raises(MergeConflictError) as e:
        repo.merge("other", functional=False)
    assert e.value.report["fact_conflicts"][0]["theirs_target"] == "Berlin"
    assert repo.resolve() == head and sorted(repo.plumbing.store) == objs
    # a capitalisation difference is not a conflict; a different target is
    rep = repo.merge("other", strategy="ours", functional=False)
    assert rep.cancelled == rep.theirs_side
    facts = [r.target_new for _, r in repo.facts()]
    assert facts == ["Rome"]


def test_mask_conflict_scored_and_resolved(repo):
    ours = random_delta(repo, seed=1, layers=(1,), frac=0.6)
    w = ours.weights[0]
    from nmkevc.deltas.delta import Delta, WeightDelta

    fighting = Delta((WeightDelta(w.name, w.layer, w.orientation, w.d_model, w.d_ff, w.idx, w.U, -w.V, w.K),))
    _diverge(repo, ours, fighting)
    with pytest.raises(MergeConflictError) as e:
        repo.merge("other", functional=False)
    scores = e.value.report["mask_scores"]
    assert scores[0]["conflict"] and scores[0]["agreement"] < -0.99
    theirs_commit = repo.resolve("other")
    rep = repo.merge("other", strategy="theirs", functional=False)
    assert rep.cancelled == [repo.resolve("HEAD^1")]
    assert [d for _, d in repo.plumbing.graph.active_deltas(repo.resolve())] == [repo.commit(theirs_commit).delta]


def test_sum_strategy_keeps_both(repo):
    ours = random_delta(repo, seed=1, layers=(1,))
    w = ours.weights[0]
    from nmkevc.deltas.delta import Delta, WeightDelta

    _diverge(repo, ours, Delta((WeightDelta(w.name, 1, w.orientation, w.d_model, w.d_ff, w.idx, w.U, -w.V),)))
    rep = repo.merge("other", strategy="sum", functional=False)
    assert rep.cancelled == []
    # the two deltas cancel: the merged model is the base again (up to float rounding)
    live = repo.load_model()
    assert torch.allclose(live.model.get_parameter(w.name), live.weights.get(w.name), atol=1e-6)


def test_cherry_pick_and_revert_merge(repo):
    repo.branch("side")
    repo.switch("side")
    x = repo.commit_delta(random_delta(repo, seed=1), "x", req("France", "Rome"))
    repo.switch("main")
    repo.cherry_pick(x)
    assert [r.target_new for _, r in repo.facts()] == ["Rome"]
    with pytest.raises(NmkevcError, match="already in effect"):
        repo.cherry_pick(x)
    # after merging, the picked delta and its original count once
    repo.commit_delta(random_delta(repo, seed=2), "y", req("Spain", "Oslo"))
    repo.merge("side", functional=False)
    assert len(repo.plumbing.graph.active_deltas(repo.resolve())) == 2
    repo.revert("HEAD")  # reverting a merge cancels what it brought
    with pytest.raises(NmkevcError):
        repo.revert("HEAD~1")  # the merge is no longer in effect... it was reverted
    with pytest.raises(NmkevcError):
        repo.cherry_pick(repo.log()[-1].id)  # the root carries no delta


def test_revisions(repo):
    c1 = repo.commit_delta(random_delta(repo, seed=1), "one", req("France", "Rome"))
    c2 = repo.commit_delta(random_delta(repo, seed=2), "two", req("Spain", "Oslo"))
    repo.tag("v1", c1)
    assert repo.resolve("HEAD") == c2 == repo.resolve("@") == repo.resolve("main")
    assert repo.resolve("HEAD~1") == c1 == repo.resolve("HEAD^") == repo.resolve("v1")
    assert repo.resolve(c2[:7]) == c2
    for bad in ("nope", "HEAD~9", "HEAD^2", "", "HEAD~x"):
        with pytest.raises(RevisionError):
            repo.resolve(bad)


def test_ambiguous_prefix(repo):
    from nmkevc.history.commit import Commit
    from nmkevc.storage.objects import encode, object_id

    seen = {}
    root = repo.resolve()
    for i in range(200000):
        c = Commit("edit", (root,), repo.commit(root).base, f"m{i}", "t", 0)
        oid = object_id(encode("commit", c.to_bytes()))
        if oid[:4] in seen:
            repo.plumbing.store.put("commit", seen[oid[:4]].to_bytes())
            repo.plumbing.store.put("commit", c.to_bytes())
            with pytest.raises(RevisionError, match="ambiguous"):
                repo.resolve(oid[:4])
            return
        seen[oid[:4]] = c
    pytest.fail("no prefix collision found")


def test_export_loads_and_answers_like_live(repo, tmp_path):
    from transformers import AutoModelForCausalLM

    repo.commit_delta(random_delta(repo, seed=1, scale=0.5), "one", req("France", "Rome"))
    out = tmp_path / "exported"
    rep = repo.export("HEAD", out)
    assert rep.edited_tensors == 2
    m = AutoModelForCausalLM.from_pretrained(out)
    live = repo.load_model()
    ids = live.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(m(**ids).logits, live.model(**ids).logits)
    # exporting twice gives identical bytes; exporting the root gives the base tensors
    out2 = tmp_path / "again"
    repo.export("HEAD", out2)
    assert (out / "model.safetensors").read_bytes() == (out2 / "model.safetensors").read_bytes()
    root_out = tmp_path / "root"
    repo.export(repo.log()[-1].id, root_out)
    base = load_file(next(live.model_dir.glob("*.safetensors")))
    got = load_file(root_out / "model.safetensors")
    assert set(base) == set(got) and all(torch.equal(base[k], got[k]) for k in base)


def test_diff_show_status_log(repo):
    c1 = repo.commit_delta(random_delta(repo, seed=1), "one", req("France", "Rome"))
    repo.commit_delta(random_delta(repo, seed=2, layers=(3,)), "two", req("Spain", "Oslo"))
    d = repo.diff(c1, "HEAD")
    assert [f["target_new"] for f in d.facts_added] == ["Oslo"] and not d.facts_removed
    assert [ld.layer for ld in d.layers] == [3]
    back = repo.diff("HEAD", c1)
    assert [f["target_new"] for f in back.facts_removed] == ["Oslo"]
    s = repo.show(c1)
    assert s.stored_bytes > 0 and s.dense_bytes > s.stored_bytes and len(s.weights) == 2
    st = repo.status()
    assert st.facts_in_effect == 2 and st.branch == "main"
    assert [e.message for e in repo.log(max_count=2)] == ["two", "one"]


def test_base_changed_is_refused(repo, base_dir):
    from safetensors.torch import load_file, save_file

    f = base_dir / "model.safetensors"
    t = load_file(f)
    k = sorted(t)[0]
    t[k] = t[k] + 1
    save_file(t, f, metadata={"format": "pt"})
    from nmkevc.errors import BaseMismatchError

    with pytest.raises(BaseMismatchError, match="differs"):
        Repository.open(repo.dir).load_model()
