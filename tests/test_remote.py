"""Remotes on local paths: clone, push, fetch, the refusals, and crash-safety of transfers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nmkevc.errors import NmkevcError
from nmkevc.porcelain.maintenance import fsck
from nmkevc.remote import remotes, transfer
from nmkevc.remote.location import RemoteRepo
from nmkevc.repo.repository import Repo
from nmkevc.workbench import Workbench

ROOT = Path(__file__).resolve().parents[1]


def _state(path: Path, rev: str = "HEAD") -> dict[str, torch.Tensor]:
    bench = Workbench(Repo.open(path))
    return {k: v.clone() for k, v in bench.model_at(bench.repo.resolve(rev)).model.state_dict().items()}


@pytest.fixture
def origin(repo, tmp_path, commit) -> Path:
    """A repository with two edits on main, the shared starting point."""
    root = tmp_path / "repo"
    commit(root, 1, "France")
    commit(root, 2, "Spain")
    return root


def test_clone_edit_push_pull_round_trip(origin, tmp_path, commit):
    alice = tmp_path / "alice"
    rep = transfer.clone(str(origin), alice)
    assert rep.branch == "main" and rep.transfer.objects > 0
    a, o = Repo.open(alice), Repo.open(origin)
    assert a.resolve("main") == o.resolve("main") == a.resolve("origin/main")
    assert fsck(a).ok and not fsck(a).dangling
    # same model, bit for bit
    sa, so = _state(alice), _state(origin)
    assert all(torch.equal(sa[k], so[k]) for k in so)

    # alice edits and pushes; only the new commit and its delta travel
    new = commit(alice, 3, "Italy")
    pushed = transfer.push(Repo.open(alice), "origin")
    assert pushed.objects == 2
    assert [u.status for u in pushed.updates] == ["fast-forward"]
    assert Repo.open(origin).resolve("main") == new
    assert Repo.open(alice).resolve("origin/main") == new

    # bob clones, alice pushes again, bob fetches only what he lacks
    bob = tmp_path / "bob"
    transfer.clone(str(origin), bob)
    newer = commit(alice, 4, "Japan")
    transfer.push(Repo.open(alice), "origin")
    got = transfer.fetch(Repo.open(bob), "origin")
    assert got.objects == 2
    assert Repo.open(bob).resolve("origin/main") == newer
    assert fsck(Repo.open(bob)).ok and fsck(Repo(origin / ".nmkevc")).ok


def test_non_fast_forward_push_refused_then_forced(origin, tmp_path, commit):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    transfer.clone(str(origin), alice)
    transfer.clone(str(origin), bob)
    a_tip = commit(alice, 3, "Italy")
    transfer.push(Repo.open(alice), "origin")
    b_tip = commit(bob, 4, "Japan")
    with pytest.raises(NmkevcError, match="non-fast-forward|commits you do not have"):
        transfer.push(Repo.open(bob), "origin")
    assert Repo.open(origin).resolve("main") == a_tip  # nothing moved
    rep = transfer.push(Repo.open(bob), "origin", force=True)
    assert rep.updates[0].status == "forced"
    assert Repo.open(origin).resolve("main") == b_tip


def test_fetch_verifies_hashes_before_moving_refs(origin, tmp_path, commit):
    alice = tmp_path / "alice"
    transfer.clone(str(origin), alice)
    tip = commit(origin, 5, "Peru")
    o = Repo.open(origin)
    delta = o.commit(tip).delta
    p = o.store.path(delta)
    data = bytearray(p.read_bytes())
    os.chmod(p, 0o644)
    # a same-length forgery: compress different content under the old name
    import zstandard

    from nmkevc.storage.objects import encode

    forged = zstandard.ZstdCompressor().compress(encode("delta", b"x" * 10))
    p.write_bytes(forged if forged != bytes(data) else b"junk")
    a = Repo.open(alice)
    before = a.refs.read("refs/remotes/origin/main")
    with pytest.raises(NmkevcError, match="corrupt"):
        transfer.fetch(a, "origin")
    a = Repo.open(alice)
    assert a.refs.read("refs/remotes/origin/main") == before
    assert not a.store.exists(delta)
    assert fsck(a).ok


def test_remote_config_and_names(origin, tmp_path):
    r = Repo.open(origin)
    with pytest.raises(NmkevcError, match="password"):
        remotes.add_remote(r, "x", "s3://user:secret@bucket/repo")
    with pytest.raises(NmkevcError):
        remotes.add_remote(r, "a/b", str(tmp_path / "elsewhere"))
    remotes.add_remote(r, "backup", str(tmp_path / "backup"))
    with pytest.raises(NmkevcError, match="already exists"):
        remotes.add_remote(r, "backup", "x")
    # pushing to an empty URL creates a bare repository there
    transfer.push(r, "backup")
    bare = Repo(tmp_path / "backup")
    assert fsck(bare).ok and bare.resolve("main") == r.resolve("main")
    assert RemoteRepo(str(tmp_path / "backup")).head_branch() == "main"
    assert "secret" not in (origin / ".nmkevc" / "config.json").read_text()
    remotes.remove_remote(Repo.open(origin), "backup")
    r = Repo.open(origin)
    assert "backup" not in r.config.remotes and not r.refs.list("refs/remotes/backup/")
    with pytest.raises(NmkevcError, match="no remote named"):
        transfer.fetch(r, "backup")


def test_statistics_travel_only_on_request(origin, tmp_path):
    from nmkevc import tensorio

    o = Repo.open(origin)
    with o.writing():  # a statistics cache entry, as an edit stores one
        oid = o.store.put("stats", tensorio.dumps({"sigma": torch.eye(4)}))
        o.refs.set("refs/stats/" + "5" * 40, oid, "stats")
    plain, full = tmp_path / "plain", tmp_path / "full"
    transfer.clone(str(origin), plain)
    assert not Repo.open(plain).refs.list("refs/stats/")
    transfer.clone(str(origin), full, with_stats=True)
    assert len(Repo.open(full).refs.list("refs/stats/")) == 1
    assert fsck(Repo.open(full)).ok
    # and on push: left behind unless asked for
    o = Repo.open(origin)
    remotes.add_remote(o, "lean", str(tmp_path / "lean"))
    remotes.add_remote(o, "fat", str(tmp_path / "fat"))
    transfer.push(o, "lean")
    transfer.push(o, "fat", with_stats=True)
    assert not any(r.startswith("refs/stats/") for r in RemoteRepo(str(tmp_path / "lean")).refs())
    assert any(r.startswith("refs/stats/") for r in RemoteRepo(str(tmp_path / "fat")).refs())
    assert not Repo(tmp_path / "lean").store.exists(oid) and Repo(tmp_path / "fat").store.exists(oid)


_KILLER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from nmkevc.repo.repository import Repo
    from nmkevc.remote import transfer
    def die(done, total):
        if done == {after}:
            os._exit(9)   # a crash: no cleanup, no finally blocks
    verb, path = sys.argv[1], sys.argv[2]
    if verb == "push":
        transfer.push(Repo.open(path), "origin", progress=die)
    else:
        transfer.fetch(Repo.open(path), "origin", progress=die)
    sys.exit(0)
""")


def _run_killer(verb: str, path: Path, after: int) -> int:
    script = _KILLER.format(tests=str(ROOT / "tests"), after=after)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script, verb, str(path)], env=env).returncode


def _many_commits(commit, path: Path, n: int, start: int) -> str:
    tip = None
    for i in range(n):
        tip = commit(path, start + i, f"S{start + i}")
    return tip


@pytest.mark.parametrize("arch", ["llama"])
def test_killed_push_leaves_both_sides_valid_and_resumes(origin, tmp_path, commit):
    alice = tmp_path / "alice"
    transfer.clone(str(origin), alice)
    old = Repo.open(origin).resolve("main")
    tip = _many_commits(commit, alice, 3, 10)
    assert _run_killer("push", alice, after=3) == 9  # killed after 3 of 6 objects
    o = Repo.open(origin)
    assert o.resolve("main") == old  # refs move last: the remote still says the old tip
    assert fsck(o).ok and fsck(Repo.open(alice)).ok
    assert len(fsck(o).dangling) == 3  # what was sent is kept, unreferenced
    rep = transfer.push(Repo.open(alice), "origin")
    assert rep.objects == 3  # resumed: only the rest travelled
    assert Repo.open(origin).resolve("main") == tip
    assert fsck(Repo.open(origin)).ok and not fsck(Repo.open(origin)).dangling


@pytest.mark.parametrize("arch", ["llama"])
def test_killed_fetch_leaves_both_sides_valid_and_resumes(origin, tmp_path, commit):
    alice = tmp_path / "alice"
    transfer.clone(str(origin), alice)
    old = Repo.open(alice).resolve("origin/main")
    tip = _many_commits(commit, origin, 3, 20)
    # killed once the 3 commits are verified and 1 of the 3 deltas is stored
    assert _run_killer("fetch", alice, after=4) == 9
    a = Repo.open(alice)
    assert a.resolve("origin/main") == old
    assert fsck(a).ok and fsck(Repo.open(origin)).ok
    assert len(fsck(a).dangling) == 1
    rep = transfer.fetch(Repo.open(alice), "origin")
    assert rep.objects == 5  # the commits again (held in memory, never half-stored) and 2 deltas
    assert Repo.open(alice).resolve("origin/main") == tip
    assert fsck(Repo.open(alice)).ok and not fsck(Repo.open(alice)).dangling


def test_interrupted_clone_resumes(origin, tmp_path, monkeypatch):
    target = tmp_path / "c"
    calls = []

    def boom(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transfer.clone(str(origin), target, progress=boom)
    assert not (target / ".nmkevc").exists() and (target / ".nmkevc.clone").is_dir()
    rep = transfer.clone(str(origin), target)
    assert rep.transfer.objects < 6 and Repo.open(target).resolve("main") == Repo.open(origin).resolve("main")
    assert fsck(Repo.open(target)).ok


def test_remote_config_write_keeps_the_remotes_own_settings(origin, tmp_path):
    remotes.add_remote(Repo.open(origin), "upstream", str(tmp_path / "up"))
    loc = RemoteRepo(str(origin))
    bases = loc.config()["bases"]
    loc.write_config({**bases, "f" * 64: {"kind": "hub", "location": "org/model"}})
    r = Repo.open(origin)
    assert r.config.remotes == {"upstream": str(tmp_path / "up")} and "f" * 64 in r.config.bases


def test_push_refuses_when_the_remote_ref_moved_meanwhile(origin, tmp_path, commit):
    alice = tmp_path / "alice"
    transfer.clone(str(origin), alice)
    commit(alice, 3, "Italy")
    ref = origin / ".nmkevc" / "refs" / "heads" / "main"
    theirs = Repo.open(origin).resolve("main~1")  # someone else moves main while we send objects

    def meanwhile(done, total):
        if done == total:
            ref.write_text(theirs + "\n")

    with pytest.raises(NmkevcError, match="changed while pushing"):
        transfer.push(Repo.open(alice), "origin", progress=meanwhile)
    assert Repo.open(origin).resolve("main") == theirs  # their move stands; ours was refused
    assert fsck(Repo.open(origin)).ok


def test_fetch_prune_drops_branches_deleted_on_the_remote(origin, tmp_path):
    from nmkevc import Repository

    Repository.open(origin).branch("side")
    alice = tmp_path / "alice"
    transfer.clone(str(origin), alice)
    assert set(Repo.open(alice).remote_branches()) == {"origin/main", "origin/side"}
    Repository.open(origin).delete_branch("side")
    transfer.fetch(Repo.open(alice), "origin")
    assert "origin/side" in Repo.open(alice).remote_branches()  # kept without --prune, as git does
    rep = transfer.fetch(Repo.open(alice), "origin", prune=True)
    assert [u.status for u in rep.updates if u.ref.endswith("side")] == ["deleted"]
    assert set(Repo.open(alice).remote_branches()) == {"origin/main"}
    assert fsck(Repo.open(alice)).ok


def test_tags_are_never_moved_silently(origin, tmp_path):
    from nmkevc import Repository

    Repository.open(origin).tag("v1", "main~1")
    alice = tmp_path / "alice"
    transfer.clone(str(origin), alice)
    old = Repo.open(alice).resolve("v1")
    Repository.open(origin).tag("v1", "main", force=True)  # the remote moves its tag
    rep = transfer.fetch(Repo.open(alice), "origin")
    assert [(u.ref, u.status) for u in rep.updates if u.ref.startswith("refs/tags/")] == [("refs/tags/v1", "rejected")]
    assert Repo.open(alice).resolve("v1") == old  # fetch does not clobber a tag
    with pytest.raises(NmkevcError, match="the tag exists there"):
        transfer.push(Repo.open(alice), "origin", refs=["v1"])
    transfer.push(Repo.open(alice), "origin", refs=["v1"], force=True)
    assert Repo.open(origin).resolve("v1") == old
