"""Hostile and careless input, table-driven: each case refused with one clear line
(never a traceback, never "internal error") and nothing changed; then the damage cases
that must be repaired rather than refused."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from random_deltas import random_delta, request

from nmkevc import Repository
from nmkevc.facts import EditRequest
from nmkevc.models import live as live_module

#: one architecture: these tests are about input and files, not models
llama_only = pytest.mark.parametrize("arch", ["llama"])

EDIT = ["edit", "--layers", "1,2", "--stats-tokens", "200"]
FACT = ["-s", "France", "-t", "Rome"]


def one_line_error(err: str) -> bool:
    lines = [x for x in err.strip().splitlines() if x]
    return (len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in err
            and "Traceback" not in err)


def snapshot(repo) -> dict:
    """Everything a refused command must leave as it was: refs, HEAD and their files."""
    d = repo.dir
    files = {}
    for sub in ("refs", "logs"):
        for p in sorted((d / sub).rglob("*")):
            if p.is_file():
                files[p.relative_to(d).as_posix()] = p.read_bytes()
    files["HEAD"] = (d / "HEAD").read_bytes()
    return files


def populate(repo, files_dir):
    """main with two commits, tag v1 on the first, branch side; a regular file and an
    edit file in files_dir."""
    repo.commit_delta(random_delta(repo, seed=1), "one", [EditRequest.from_json(request("France", "Rome"))])
    repo.tag("v1")
    repo.branch("side")
    repo.commit_delta(random_delta(repo, seed=2), "two", [EditRequest.from_json(request("Spain", "Oslo"))])
    (files_dir / "afile").write_text("x")
    (files_dir / "edits.jsonl").write_text(json.dumps(request("France", "Rome")) + "\n")
    return repo


@pytest.fixture
def hostile(repo, tmp_path):
    """A repository of its own for a test that changes it (see populate)."""
    return populate(repo, tmp_path)


@pytest.fixture(scope="module")
def shared(model_dirs, tmp_path_factory):
    """One repository for the whole table: every case must leave it byte for byte as it
    was (the test checks), so sharing it is itself part of the claim."""
    root = tmp_path_factory.mktemp("hostile")
    return populate(Repository.init(root / "repo", base=str(model_dirs["llama"])), root)


LONG = "x" * 300_000
CASES = [
    # 1. refs that would escape their namespace, or clash
    (["tag", "-d", "../heads/main"], "not a valid tag name"),
    (["branch", "-D", "../../HEAD"], "not a valid branch name"),
    (["branch", "-D", "../tags/v1"], "not a valid branch name"),
    (["branch", "-d", "../tags/v1"], "not a valid branch name"),
    (["switch", "../tags/v1"], "not a valid branch name"),
    (["switch", "-c", "../x"], "not a valid branch name"),
    (["checkout", "-b", "../../HEAD", "HEAD"], "not a valid branch name"),
    (["tag", "../heads/main"], "not a valid tag name"),
    (["tag", "/abs"], "not a valid tag name"),
    (["branch", "@"], "'@' alone"),
    (["branch", "a@{1}"], "'@{'"),
    (["branch", "x.lock"], ".lock"),
    (["branch", "a/.hidden"], "starts with '.'"),
    (["branch", "a//b"], "'//'"),
    (["branch", "a\x01b"], "contains"),
    (["branch", "a b"], "contains"),
    (["branch", "a~1"], "contains"),
    (["branch", "end."], "ends with '.'"),
    (["branch", "HEAD"], "reserved"),
    (["branch", "n" * 300], "longer than"),
    (["branch", "/".join(["abc"] * 300)], "longer than"),
    (["branch", "main/sub"], "branch 'main' exists"),
    (["branch", "v1"], "a tag named 'v1' exists"),
    (["reflog", "../../config.json"], "invalid ref"),
    (["reflog", "refs/../HEAD"], "invalid ref"),
    (["log", "../tags/v1"], "unknown revision"),
    (["show", "refs/heads/../../HEAD"], "unknown revision"),
    # 2. edit input refused before any model loads
    (EDIT + ["-p", "The capital of {} is {x}", *FACT], "stray brace"),
    (EDIT + ["-p", "The capital of {0} is", *FACT], "'{}'"),
    (EDIT + ["-p", "The capital of {} is {}", *FACT], "exactly once"),
    (EDIT + ["-p", "The capital of {} is }", *FACT], "stray brace"),
    (EDIT + ["-s", LONG, "-p", "The capital of {} is", "-t", "Rome"], "subject is 300000 characters"),
    (EDIT + ["-s", "France", "-p", "The capital of {} is", "-t", "y" * 600_000], "target is 600000 characters"),
    (EDIT + ["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--stats-tokens", "-5"],
     "--stats-tokens must be a positive"),
    (EDIT + ["-f", "{tmp}/edits.jsonl", "-b", "0"], "batch size must be at least 1"),
    (EDIT + ["-f", "{tmp}/edits.jsonl", "-b", "-3"], "batch size must be at least 1"),
    # other verbs that run the model
    (["ask", LONG], "prompt is 300000 characters"),
    (["ask", ""], "prompt is empty"),
    (["ask", "The capital of France is", "-k", "-3"], "--top-k must be between"),
    (["ask", "The capital of France is", "--max-new-tokens", "-1"], "--max-new-tokens must be between"),
    (["ask", "Paris London Rome " * 40], "the model's context is 128"),
    (["blame", LONG], "prompt is 300000 characters"),
    (["merge", "side", "--mask-threshold", "-1"], "between 0 and 1"),
    # export where nothing can be written
    (["export", "HEAD", "{tmp}/afile/out"], "is not a directory"),
    (["export", "HEAD", "{tmp}/afile"], "not an empty directory"),
    (["export", "HEAD", "/proc/nmkevc-cannot/out"], "cannot"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_hostile_input_refused(shared, monkeypatch, args, needle, run):
    def no_model(*a, **k):
        raise AssertionError("the model was loaded for input that should have been refused")

    monkeypatch.setattr(live_module.LiveModel, "load", classmethod(no_model))
    before = snapshot(shared)
    args = [a.replace("{tmp}", str(shared.root.parent)) for a in args]
    code, _, err = run(shared, *args)
    assert code != 0 and one_line_error(err), err
    assert needle in err, err
    assert snapshot(shared) == before
    assert Repository.open(shared.dir).fsck().ok


@llama_only
def test_token_cap_against_the_context(hostile, monkeypatch, run):
    """Under the character cap but longer than the tiny model's 128-token context:
    refused by the tokenizer count, still before the weights load."""
    def no_model(*a, **k):
        raise AssertionError("model loaded")

    monkeypatch.setattr(live_module.LiveModel, "load", classmethod(no_model))
    subject = "Paris London Rome " * 80
    code, _, err = run(hostile, *EDIT, "-s", subject, "-p", "The capital of {} is", "-t", "Rome")
    assert code != 0 and one_line_error(err) and "tokens" in err and "context of 128" in err


@llama_only
def test_refs_cases_from_the_issue_leave_the_repository_usable(hostile, run):
    """The probe's sequence: detached at v1, then try to delete HEAD; move a tag via a
    switch; everything refused and HEAD, tags and branches intact."""
    main_id = hostile.resolve("main")
    v1 = hostile.resolve("v1")
    assert run(hostile, "checkout", "v1")[0] == 0
    assert run(hostile, "branch", "-D", "../../HEAD")[0] != 0
    assert run(hostile, "switch", "../tags/v1")[0] != 0
    fresh = Repository.open(hostile.dir)
    assert fresh.resolve("HEAD") == v1 and fresh.resolve("main") == main_id and fresh.resolve("v1") == v1
    assert fresh.fsck().ok


@llama_only
def test_ref_hierarchy_both_ways_and_reuse(hostile):
    from nmkevc.errors import RefError

    hostile.branch("feat/a")
    with pytest.raises(RefError, match="'feat/a' exists"):
        hostile.branch("feat")
    hostile.delete_branch("feat/a", force=True)
    hostile.branch("feat")  # the emptied directory is gone, the name is free again
    assert hostile.resolve("feat") == hostile.resolve("HEAD")
    with pytest.raises(RefError, match="'feat' exists"):
        hostile.branch("feat/b")
    with pytest.raises(RefError, match="not a valid branch name"):
        hostile.branch("-x")
    hostile.branch("v1", force=True)  # forced: a branch may share a tag's name
    assert hostile.fsck().ok


@llama_only
def test_garbage_ref_is_reported_and_skipped(hostile, run):
    side = hostile.dir / "refs" / "heads" / "side"
    side.write_bytes(b"\x00garbage\xff")
    code, out, err = run(hostile, "log", "--oneline", "main")
    assert code == 0 and "two" in out
    assert "refs/heads/side" in err and "corrupt" in err
    code, out, _ = run(hostile, "branch")
    assert code == 0 and "main" in out
    rep = Repository.open(hostile.dir).fsck()
    assert not rep.ok and any("refs/heads/side" in p for p in rep.problems)
    rep = Repository.open(hostile.dir).fsck(repair=True)  # restored from its reflog
    assert rep.ok and any("restored refs/heads/side" in r for r in rep.repaired)
    assert Repository.open(hostile.dir).resolve("side") == hostile.resolve("v1")


@llama_only
def test_lost_head_is_restored(hostile):
    hostile.switch("v1", detach=True)
    (hostile.dir / "HEAD").unlink()
    rep = Repository.open(hostile.dir).fsck()
    assert not rep.ok and rep.repairable == 1
    rep = Repository.open(hostile.dir).fsck(repair=True)
    assert rep.ok, rep.problems
    assert Repository.open(hostile.dir).resolve("HEAD") == hostile.resolve("v1")


@llama_only
def test_store_replaces_a_damaged_file(hostile):
    cid = hostile.resolve("HEAD")
    raw_payload = hostile.plumbing.store.get(cid, "commit")
    p = hostile.plumbing.store.path(cid)
    os.chmod(p, 0o644)
    p.write_bytes(p.read_bytes()[:20])
    assert not hostile.plumbing.store.intact(cid)
    assert hostile.plumbing.store.put("commit", raw_payload) == cid
    assert hostile.plumbing.store.intact(cid) and Repository.open(hostile.dir).fsck().ok


def _damage(path):
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


@llama_only
def test_damaged_derived_objects_rebuilt(hostile):
    """Statistics and context templates are derived from the base: damage to them is
    repaired by the edit that needs them, and by fsck --repair, and never blocks gc."""
    hostile.edit(EditRequest("France", "The capital of {} is", "Rome"), layers=[1, 2], stats_tokens=200)
    stats = sorted((hostile.dir / "refs" / "stats").iterdir())
    ctx = sorted((hostile.dir / "refs" / "context").iterdir())
    assert stats and ctx
    stats_id = stats[0].read_text().strip()
    _damage(hostile.plumbing.store.path(stats_id))
    _damage(hostile.plumbing.store.path(ctx[0].read_text().strip()))
    fresh = Repository.open(hostile.dir)
    rep = fresh.fsck()
    assert not rep.ok and rep.repairable == len(rep.problems) == 2
    with pytest.raises(Exception, match="fsck --repair"):
        fresh.gc()
    # the edit that needs them rebuilds them (and the store overwrites the bad file)
    fresh.edit(EditRequest("Spain", "The capital of {} is", "Oslo"), layers=[1, 2], stats_tokens=200)
    assert fresh.plumbing.store.intact(stats_id)
    assert Repository.open(hostile.dir).fsck().ok
    # fsck --repair rebuilds them itself when no edit comes first: same bytes, same id
    ctx_id = ctx[0].read_text().strip()
    _damage(hostile.plumbing.store.path(stats_id))
    _damage(hostile.plumbing.store.path(ctx_id))
    fresh = Repository.open(hostile.dir)
    rep = fresh.fsck(repair=True)
    assert rep.ok and len(rep.repaired) == 2 and all(r.startswith("rebuilt") for r in rep.repaired), rep.repaired
    assert fresh.plumbing.store.intact(stats_id) and fresh.plumbing.store.intact(ctx_id)
    assert fresh.gc().removed >= 0 and fresh.fsck().ok


@llama_only
def test_projectors_stored_once_and_damage_recomputed(hostile, monkeypatch):
    """Σ_l's eigendecomposition is stored the first time (refs/projectors/) and read back by
    an edit in a later process; a damaged projector is decomposed again, or dropped by fsck."""
    import nmkevc.editing.covariance as covariance

    hostile.edit(EditRequest("France", "The capital of {} is", "Rome"), layers=[1, 2], stats_tokens=200)
    refs = sorted((hostile.dir / "refs" / "projectors").iterdir())
    assert len(refs) == 2
    ids = [r.read_text().strip() for r in refs]

    def refuse(*_a, **_k):
        raise AssertionError("decomposed again although stored")

    with monkeypatch.context() as m:
        m.setattr(covariance, "nullspace_projector", refuse)
        Repository.open(hostile.dir).edit(EditRequest("Spain", "The capital of {} is", "Oslo"),
                                          layers=[1, 2], stats_tokens=200)
    _damage(hostile.plumbing.store.path(ids[0]))
    rep = Repository.open(hostile.dir).fsck()
    assert not rep.ok and rep.repairable == 1 and "refs/projectors/" in rep.problems[0]
    Repository.open(hostile.dir).edit(EditRequest("Italy", "The capital of {} is", "Bern"),
                                      layers=[1, 2], stats_tokens=200)
    assert hostile.plumbing.store.intact(ids[0])  # same Σ, same rule: the same bytes again
    _damage(hostile.plumbing.store.path(ids[1]))
    rep = Repository.open(hostile.dir).fsck(repair=True)
    assert rep.ok and len(rep.repaired) == 1 and "dropped damaged" in rep.repaired[0]
    assert Repository.open(hostile.dir).fsck().ok


@llama_only
def test_base_changed_in_place_caught_by_full_check(hostile, base_dir, run):
    """A byte changed with size, mtime and inode kept slips past the fast path (which
    trusts the stat key); fsck --full rehashes, reports it, and from then on the base
    is refused."""
    f = sorted(base_dir.glob("*.safetensors"))[0]
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-7] ^= 0x01
    with open(f, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Repository.open(hostile.dir).fsck().ok  # the fast path trusts the stat key
    rep = Repository.open(hostile.dir).fsck(full=True)
    assert not rep.ok and any("differs" in p for p in rep.problems)
    code, _, err = run(hostile, "export", "HEAD", str(hostile.root / "out"))
    assert code != 0 and one_line_error(err) and "differs" in err


@llama_only
def test_init_leftover_reaped(tmp_path, base_dir):
    """A killed init's half-built repository (not locked by anyone) goes on the next init."""
    root = tmp_path / "new"
    root.mkdir()
    dead = root / ".nmkevc.init-abc123"
    (dead / "objects").mkdir(parents=True)
    (dead / "lock").write_text("")
    Repository.init(root, base=str(base_dir))
    assert not dead.exists()


@llama_only
def test_gc_removes_dead_export_but_not_live_one(hostile, tmp_path):
    from nmkevc.storage.temps import claimed_tempdir

    with claimed_tempdir(hostile.dir, tmp_path, ".live.", ".export") as live_tmp:
        (live_tmp / "model.safetensors").write_bytes(b"partial")
        assert hostile.gc().temp_dirs == 0 and live_tmp.exists()  # its writer is alive
        shutil.rmtree(live_tmp)
        live_tmp.mkdir()
    # a dead writer: a claim record nobody holds
    dead = tmp_path / ".out.zz11.export"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    claims = hostile.dir / "tmp"
    (claims / ".claim.dead.json").write_text(json.dumps({"path": str(dead), "prefix": ".out.",
                                                         "suffix": ".export"}))
    user = tmp_path / ".out.mine"  # not ours: no claim names it
    user.mkdir()
    assert hostile.gc().temp_dirs == 1
    assert not dead.exists() and user.exists() and not list(claims.iterdir())


@llama_only
def test_lock_waits_and_names_its_holder(hostile):
    """A writer refused at once says who holds the lock; with a wait it waits, is told
    who is in the way, and proceeds when the holder lets go."""
    import time

    from nmkevc.errors import RepositoryLockedError
    from nmkevc.storage.lock import RepoLock

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder: takes the lock, says so, holds it 2.5 s, dies
        try:
            lock = RepoLock(hostile.dir / "lock")
            lock.acquire()
            os.write(ready_w, b"x")
            time.sleep(2.5)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        with pytest.raises(RepositoryLockedError, match=rf"process {pid} .*since .*--wait"):
            Repository.open(hostile.root).tag("t0")
        with pytest.raises(RepositoryLockedError, match="after waiting 0.3s"):
            Repository.open(hostile.root, wait=0.3).tag("t0")
        told = []
        t0 = time.monotonic()
        Repository.open(hostile.root, wait=60, on_lock_wait=told.append).tag("t1")
        assert time.monotonic() - t0 > 0.5 and told and told[0].pid == pid
        assert Repository.open(hostile.root).resolve("t1") == hostile.resolve("HEAD")
    finally:
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)


@llama_only
def test_dash_C_applies_to_path_arguments(hostile, tmp_path, monkeypatch, run):
    """`nmkevc -C repo export HEAD ../x` writes beside the repository, as git would,
    whatever directory the command starts in; so do --file, dataset build and init."""
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    code, _, err = run(hostile, "export", "HEAD", "../x")
    assert code == 0, err
    assert (hostile.root.parent / "x" / "nmkevc.json").is_file() and not (tmp_path / "a" / "x").exists()
    (hostile.root / "e.jsonl").write_text("not json\n")
    code, _, err = run(hostile, "edit", "-f", "e.jsonl")
    assert code != 0 and str(hostile.root / "e.jsonl") in err  # read relative to -C
    code, _, err = run(tmp_path, "init", "sub", "--base", os.path.relpath(
        Repository.open(hostile.dir).bases()[0].location, tmp_path))
    assert code == 0 and (tmp_path / "sub" / ".nmkevc").is_dir()


@llama_only
def test_wait_option_parsing(hostile, run):
    from nmkevc.cli.base import hoist_wait

    assert hoist_wait(["--wait", "tag", "x"]) == (["tag", "x"], "")
    assert hoist_wait(["tag", "--wait=2.5", "x"]) == (["tag", "x"], "2.5")
    assert hoist_wait(["tag", "-m", "x", "--", "--wait"]) == (["tag", "-m", "x", "--", "--wait"], None)
    code, _, err = run(hostile, "--wait=soon", "tag", "x")
    assert code != 0 and one_line_error(err) and "--wait=soon" in err
    code, _, err = run(hostile, "tag", "x", "--wait=1")  # a free lock: no wait at all
    assert code == 0, err


@llama_only
def test_os_failure_is_one_line(hostile, monkeypatch, run):
    """A full disk (or any refusal by the OS) mid-command: the system's words in one line."""
    from nmkevc.porcelain import branching

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(hostile.dir / "refs" / "heads" / "x"))

    monkeypatch.setattr(branching, "create_branch", full)
    code, _, err = run(hostile, "branch", "x")
    assert code == 74 and one_line_error(err) and "No space left on device" in err
