"""The CLI is a thin layer: drive the version-control verbs end to end through it."""

import json

from nmkevc import Repository


def test_version_control_flow(repo, tmp_path, run, commit):
    c1 = commit(repo, 1, "France", "Rome")
    assert run(repo, "branch", "side")[0] == 0
    assert run(repo, "switch", "side")[0] == 0
    commit(Repository.open(repo.dir), 2, "Spain", "Oslo", layers=(0,))
    assert run(repo, "switch", "main")[0] == 0
    commit(Repository.open(repo.dir), 3, "Italy", "Paris", layers=(3,))

    code, out, _ = run(repo, "merge", "side", "--no-functional")
    assert code == 0 and "Merge made" in out
    code, out, _ = run(repo, "log", "--oneline", "--graph")
    assert code == 0 and out.count("*") == 5 and "HEAD -> main" in out
    code, out, _ = run(repo, "log", "--json", "-n", "2")
    entries = json.loads(out)
    assert len(entries) == 2 and entries[0]["kind"] == "merge" and len(entries[0]["parents"]) == 2
    code, out, _ = run(repo, "log", "--stat")
    assert "neurons" in out and "stored" in out and "'Oslo'" in out
    code, out, _ = run(repo, "show", c1[:8])
    assert code == 0 and "The capital of France is -> 'Rome'" in out and "KiB stored" in out
    code, out, _ = run(repo, "diff", c1, "HEAD", "--json")
    d = json.loads(out)
    assert sorted(f["target_new"] for f in d["facts_added"]) == ["Oslo", "Paris"]
    code, out, _ = run(repo, "status", "--json")
    assert json.loads(out)["facts_in_effect"] == 3

    code, out, _ = run(repo, "revert", c1[:10])
    assert code == 0
    code, out, _ = run(repo, "diff", "HEAD~1", "HEAD")
    assert "- The capital of France is -> 'Rome'" in out
    assert run(repo, "tag", "v1")[0] == 0
    assert run(repo, "checkout", "v1")[0] == 0
    code, out, _ = run(repo, "status")
    assert "detached" in out
    assert run(repo, "switch", "main")[0] == 0
    code, out, _ = run(repo, "cherry-pick", c1)
    assert code == 0
    code, out, _ = run(repo, "export", "HEAD", str(tmp_path / "out"), "--json")
    assert code == 0 and json.loads(out)["edited_tensors"] == 4
    code, out, _ = run(repo, "fsck")
    assert code == 0 and out.strip().endswith("ok")
    code, out, _ = run(repo, "reflog", "-n", "3")
    assert code == 0 and len(out.strip().splitlines()) == 3
    code, out, _ = run(repo, "branch", "-d", "side")
    assert code == 0
    code, out, _ = run(repo, "base", "list")
    assert code == 0 and repo.plumbing.config.bases and list(repo.plumbing.config.bases)[0][:12] in out


def test_merge_conflict_report_and_json(repo, run, commit):
    repo.branch("other")
    commit(repo, 1, "France", "Rome", layers=(0,))
    repo.switch("other")
    commit(repo, 2, "France", "Berlin", layers=(3,))
    repo.switch("main")
    head = repo.resolve()
    code, out, err = run(repo, "merge", "other", "--no-functional")
    assert code == 1 and "fact conflict" in err and "Rome" in err and "Berlin" in err
    assert err.strip().splitlines()[-1].startswith("error: merge of 'other' stopped")
    code, out, err = run(repo, "merge", "other", "--no-functional", "--json")
    report = json.loads(out)
    assert code == 1 and report["conflicted"] and report["fact_conflicts"][0]["theirs_target"] == "Berlin"
    assert Repository.open(repo.dir).resolve() == head
    code, out, _ = run(repo, "merge", "other", "--no-functional", "--strategy", "theirs")
    assert code == 0 and "dropped 1 commit" in out
    facts = [r.target_new for _, r in Repository.open(repo.dir).facts()]
    assert facts == ["Berlin"]
