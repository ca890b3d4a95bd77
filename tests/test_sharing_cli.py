"""Sharing through the CLI: clone -> commit -> push -> pull round trip, graph of the merge,
refusals as one-line errors, bundles, and the PEFT export."""

from __future__ import annotations

import json

import pytest
import torch

from nmkevc import Repository


def test_clone_push_pull_round_trip(repo, tmp_path, run, commit):
    origin = repo.root
    commit(origin, 1, "France")
    code, out, _ = run(tmp_path, "clone", str(origin), "alice")
    assert code == 0 and "on branch main" in out
    code, out, _ = run(tmp_path, "clone", str(origin), "bob", "--json")
    assert code == 0 and json.loads(out)["branch"] == "main"
    alice, bob = tmp_path / "alice", tmp_path / "bob"

    a_tip = commit(alice, 2, "Spain", layers=(0,))
    code, out, _ = run(alice, "push")
    assert code == 0 and f"..{a_tip[:10]}  main -> main" in out and "2 object(s)" in out
    b_tip = commit(bob, 3, "Italy", layers=(3,))
    code, _, err = run(bob, "push")
    assert code != 0 and err.startswith("error: push rejected") and err.count("\n") == 1

    code, out, err = run(bob, "pull", "--no-functional")  # fetch + a merge
    assert code == 0 and "Merge made" in out, err
    b = Repository.open(bob)
    merged = b.commit("HEAD")
    assert set(merged.parents) == {a_tip, b_tip}
    code, out, _ = run(bob, "push")
    assert code == 0
    code, out, _ = run(alice, "pull")
    assert code == 0 and "Fast-forward" in out
    assert Repository.open(alice).resolve("HEAD") == Repository.open(origin).resolve("main") == b.resolve("HEAD")

    # the merge as git draws it
    code, out, _ = run(alice, "log", "--graph", "--oneline")
    lines = out.splitlines()
    assert lines[0].startswith("* ") and "origin/main" in lines[0]
    assert lines[1] == "|\\"
    assert any(line.startswith("| * ") for line in lines) and any(line.startswith("* | ") for line in lines)
    assert "|/" in lines and lines[-1].startswith("* ")
    code, out, _ = run(alice, "log", "--graph")
    assert code == 0 and "|\\" in out and "|/" in out
    code, out, _ = run(alice, "fsck")
    assert code == 0
    code, out, _ = run(alice, "branch", "-a")
    assert code == 0 and "* main" in out and "remotes/origin/main" in out
    code, out, _ = run(alice, "branch", "-r", "--json")
    assert json.loads(out)["remote_branches"] == {"origin/main": b.resolve("HEAD")}


def test_remote_verbs_and_errors(repo, tmp_path, run):
    code, _, _ = run(repo.root, "remote", "add", "backup", str(tmp_path / "backup"))
    assert code == 0
    code, out, _ = run(repo.root, "remote", "-v")
    assert out.strip() == f"backup\t{tmp_path / 'backup'}"
    code, out, _ = run(repo.root, "push", "backup", "--json")
    assert code == 0 and json.loads(out)["updates"][0]["status"] == "new"
    code, out, _ = run(tmp_path / "backup", "fsck")  # the bare remote is a repository too
    assert code == 0
    code, out, _ = run(tmp_path / "backup", "log", "--oneline")
    assert code == 0 and "main" in out
    code, _, err = run(repo.root, "remote", "add", "bad", "s3://me:pw@bucket/x")
    assert code != 0 and "password" in err
    code, _, err = run(repo.root, "fetch", "nowhere")
    assert code != 0 and "no remote named 'nowhere'" in err
    code, _, err = run(repo.root, "push", "backup", "no-such-branch")
    assert code != 0 and "not a local branch or tag" in err
    code, _, err = run(tmp_path, "clone", str(tmp_path / "nothing-here"), "x")
    assert code != 0 and "not an nmkevc repository" in err
    code, _, err = run(tmp_path, "clone", str(tmp_path / "backup"))  # ./backup is the remote itself
    assert code != 0 and "not empty" in err
    (tmp_path / "sub").mkdir()
    code, _, _ = run(tmp_path / "sub", "clone", str(tmp_path / "backup"))  # named after the URL
    assert code == 0 and Repository.open(tmp_path / "sub" / "backup").resolve("main") == repo.resolve("main")
    code, _, _ = run(repo.root, "remote", "remove", "backup")
    assert code == 0 and Repository.open(repo.root).remotes() == {}


def test_bundle_and_peft_export_cli(repo, tmp_path, run, commit):
    commit(repo.root, 1, "France")
    out_file = tmp_path / "x.bundle"
    code, out, _ = run(repo.root, "bundle", "create", str(out_file), "main")
    assert code == 0 and "1 ref(s)" in out
    code, out, _ = run(repo.root, "bundle", "verify", str(out_file))
    assert code == 0 and "is okay" in out
    out_file.write_bytes(out_file.read_bytes()[:-40])
    code, _, err = run(repo.root, "bundle", "verify", str(out_file))
    assert code != 0 and err.startswith("error:")

    code, out, _ = run(repo.root, "export", "--format", "peft", "HEAD", str(tmp_path / "ad"), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["exact"] and rep["rank"] == 2 and rep["layers"] == [1, 2]
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    code, out, _ = run(repo.root, "export", "--format", "peft", "HEAD", str(tmp_path / "ad1"),
                       "--rank", "1")
    assert code == 0 and "truncated, max relative error" in out
    code, _, err = run(repo.root, "export", "HEAD", str(tmp_path / "full"), "--rank", "1")
    assert code != 0 and "--rank" in err


@pytest.mark.parametrize("arch", ["llama"])
def test_real_edit_travels_clone_edit_push_pull(repo, tmp_path, run):
    origin = repo.root
    assert run(tmp_path, "clone", str(origin), "alice")[0] == 0
    assert run(tmp_path, "clone", str(origin), "bob")[0] == 0
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    code, _, err = run(alice, "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome",
                       "--layers", "1-2", "--stats-tokens", "400")
    assert code == 0, err
    code, out, _ = run(alice, "push", "--json")
    sent = json.loads(out)
    assert code == 0 and sent["objects"] == 3  # commit, delta, context templates; statistics stay
    code, out, _ = run(bob, "pull")
    assert code == 0 and "Fast-forward" in out
    a, b = Repository.open(alice), Repository.open(bob)
    assert a.resolve() == b.resolve()
    wa = a.load_model().model.state_dict()
    wb = b.load_model().model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same model, bit for bit
    _, out_a, _ = run(alice, "ask", "The capital of France is", "--json")
    _, out_b, _ = run(bob, "ask", "The capital of France is", "--json")
    assert json.loads(out_a) == json.loads(out_b)
