"""Crash injection: every writing command killed at its write boundaries and at moments
in time, on a tiny model; the repository must come back whole every time.

A forked child runs the CLI in-process (no interpreter start-up per kill, so the whole
matrix takes seconds) and dies either by `os._exit` at a named boundary
(NMKEVC_CRASH_AT, see nmkevc/storage/faults.py) or by SIGKILL from the parent. After
each death: fsck is clean, HEAD resolves, the lock is free, every commit that existed
is still there and every ref the command was not about is unchanged; then gc removes
every leftover (temp files, a half-written export, a half-built init).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from random_deltas import random_delta, request

from nmkevc import Repository
from nmkevc.cli.app import main
from nmkevc.storage.faults import CRASH_ENV, CRASH_EXIT
from nmkevc.storage.lock import RepoLock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

EDIT = ["edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--layers", "1,2",
        "--stats-tokens", "200"]


def run_forked(args: list[str], crash_at: str | None = None, kill_after: float | None = None,
               timeout: float = 120.0) -> int:
    """Run `nmkevc ARGS` in a forked child; its exit code, or -signal if killed."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            if crash_at:
                os.environ[CRASH_ENV] = crash_at
            torch.set_num_threads(1)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            code = main(args)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        now = time.monotonic()
        if (kill_after is not None and not killed and now >= deadline - timeout + kill_after) or now > deadline:
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.01)


@pytest.fixture(scope="module")
def template(model_dirs, tmp_path_factory, commit):
    """main (2 commits) with tag v1, side (1 commit of its own), done (merged), a
    dangling delta for gc to find, and an edit file of two requests."""
    root = tmp_path_factory.mktemp("crash-template")
    repo = Repository.init(root / "repo", base=str(model_dirs["llama"]))
    commit(repo, 1, "France", "Rome")
    repo.tag("v1")
    repo.branch("done")
    repo.branch("side")
    repo.switch("side")
    commit(repo, 2, "Spain", "Oslo")
    repo.switch("main")
    commit(repo, 3, "Italy", "Paris")
    repo.plumbing.put_delta(random_delta(repo, seed=9))
    edits = root / "edits.jsonl"
    edits.write_text("".join(json.dumps(request(s, t)) + "\n" for s, t in
                             [("France", "Rome"), ("Spain", "Oslo")]))
    return root


def refs_of(repo) -> dict[str, str]:
    return {**{"refs/heads/" + k: v for k, v in repo.branches().items()},
            **{"refs/tags/" + k: v for k, v in repo.tags().items()}}


def all_commits(repo) -> set[str]:
    plumbing = repo.plumbing
    return {oid for oid in plumbing.store if plumbing.is_commit(oid)}


def leftovers(root: Path) -> list[str]:
    """Anything of ours an interrupted command may leave: temp files, claims, hidden
    export directories, half-built repositories."""
    out = [str(p) for p in (root / "repo" / ".nmkevc").rglob(".*.tmp")]
    out += [str(p) for p in (root / "repo" / ".nmkevc" / "tmp").glob(".claim.*")]
    out += [str(p) for p in root.glob(".out.*")]
    out += [str(p) for p in root.glob("new/.nmkevc.init-*")]
    return out


def expand(arg: str, root: Path, model_dirs: dict[str, Path]) -> str:
    return (arg.replace("{root}", str(root)).replace("{base2}", str(model_dirs["gpt2"]))
            .replace("{base}", str(model_dirs["llama"])))


# (name, arguments, the refs it may change, crash boundaries, kill times in s)
CASES = [
    ("edit", EDIT, {"refs/heads/main"},
     ["rename:object-stats", "write:object-delta", "write:object-commit", "rename:ref", "reflog"], [0.4, 1.2]),
    ("edit-file", ["edit", "-f", "{root}/edits.jsonl", "-b", "1", "--layers", "1,2", "--stats-tokens", "200"],
     {"refs/heads/main"}, ["rename:ref"], [2.5]),
    ("merge", ["merge", "side", "-s", "sum", "-m", "merge side"], {"refs/heads/main"},
     ["write:object-commit", "rename:ref", "reflog"], [0.3]),
    ("revert", ["revert", "HEAD"], {"refs/heads/main"}, ["rename:object-commit", "write:ref", "reflog"], []),
    ("cherry-pick", ["cherry-pick", "side"], {"refs/heads/main"}, ["write:object-commit", "rename:ref"], []),
    ("branch", ["branch", "new", "v1"], {"refs/heads/new"}, ["write:ref", "rename:ref", "reflog"], []),
    ("branch-delete", ["branch", "-D", "done"], {"refs/heads/done"}, ["delete:branch"], []),
    ("tag", ["tag", "v2", "side"], {"refs/tags/v2"}, ["write:ref", "reflog"], []),
    ("tag-delete", ["tag", "-d", "v1"], {"refs/tags/v1"}, ["delete:tag"], []),
    ("switch", ["switch", "side"], set(), ["write:head", "rename:head", "reflog"], []),
    ("checkout-b", ["checkout", "-b", "nb", "v1"], {"refs/heads/nb"}, ["rename:ref", "write:head"], []),
    ("orphan", ["switch", "--orphan", "island"], {"refs/heads/island"},
     ["write:object-commit", "write:ref", "rename:head"], []),
    ("base-add", ["base", "add", "{base2}"], set(), ["write:object-base", "write:config"], []),
    ("gc", ["gc"], set(), ["lock", "delete:object"], []),
    ("export", ["export", "HEAD", "{root}/out"], set(), ["export"], [0.05]),
    ("export-peft", ["export", "HEAD", "{root}/out", "--format", "peft"], set(), ["export"], []),
    ("init", ["init", "{root}/new", "--base", "{base}"], set(), ["init", "rename:ref"], []),
]
POINTS = [(name, args, may, ("hook", b)) for name, args, may, hooks, _ in CASES for b in hooks]
POINTS += [(name, args, may, ("time", t)) for name, args, may, _, times in CASES for t in times]


@pytest.mark.parametrize("name,args,may_change,point", POINTS,
                         ids=[f"{p[0]}-{p[3][0]}-{p[3][1]}" for p in POINTS])
def test_killed_command_leaves_a_whole_repository(template, model_dirs, tmp_path, name, args, may_change, point):
    root = tmp_path / "r"
    shutil.copytree(template, root, symlinks=True)
    repo_dir = root / "repo"
    before = Repository.open(repo_dir)
    refs_before = refs_of(before)
    commits_before = all_commits(before)
    argv = ["-C", str(repo_dir)] + [expand(a, root, model_dirs) for a in args]
    kind, where = point
    if kind == "hook":
        code = run_forked(argv, crash_at=where)
        assert code == CRASH_EXIT, f"{name} never reached boundary {where} (exit {code})"
    else:
        run_forked(argv, kill_after=where)  # killed, or finished first: both must leave a whole repository

    repo = Repository.open(repo_dir)
    rep = repo.fsck()
    assert rep.ok, rep.problems
    repo.resolve("HEAD")
    repo.log("HEAD")
    lock = RepoLock(repo_dir / ".nmkevc" / "lock")
    lock.acquire()  # free: the kernel dropped the dead writer's flock
    lock.release()
    refs_after = refs_of(repo)
    for ref, oid in refs_before.items():
        if ref not in may_change:
            assert refs_after.get(ref) == oid, f"{ref} moved"
    lost = {c for c in commits_before if not repo.plumbing.is_commit(c)}
    if name != "gc":
        assert not lost, f"lost commits {sorted(lost)}"
    else:  # gc may drop only what nothing reaches; every ref's history stays
        for oid in refs_after.values():
            assert repo.plumbing.is_commit(oid)
    if name.startswith("export"):
        assert not (root / "out").exists() or (root / "out" / "nmkevc.json").is_file()
    if name == "init":
        new = root / "new"
        assert not (new / ".nmkevc").exists() or Repository.open(new).fsck().ok
        if not (new / ".nmkevc").exists():  # a second init reaps the dead one's directory
            Repository.init(new, base=str(model_dirs["llama"]))
    repo.gc()
    assert leftovers(root) == []
    assert repo.fsck().ok
