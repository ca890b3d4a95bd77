"""Bad input and faults: one-line errors, non-zero exits, and a repository that survives."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

from nmkevc import Repository
from nmkevc.history.commit import Commit


def one_line_error(err: str) -> bool:
    lines = [x for x in err.strip().splitlines() if x]
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def test_not_a_repository(tmp_path, run):
    code, _, err = run(tmp_path, "log")
    assert code != 0 and one_line_error(err) and "not an nmkevc repository" in err


@pytest.mark.parametrize("args,needle", [
    (["show", "deadbeef"], "unknown revision"),
    (["log", "HEAD~5"], "no parent"),
    (["branch", "main"], "already exists"),
    (["branch", "-d", "nope"], "not found"),
    (["switch", "nope"], "no branch"),
    (["revert", "HEAD"], "initial commit"),
    (["branch", "bad..name"], "not a valid"),
    (["diff", "HEAD", "zzz"], "unknown revision"),
])
def test_bad_input_one_line(repo, args, needle, run):
    code, _, err = run(repo, *args)
    assert code != 0 and one_line_error(err) and needle in err


def test_init_twice_and_bad_base(tmp_path, repo, run):
    code, _, err = run(None, "init", str(repo.root), "--base", str(repo.root))
    assert code != 0 and one_line_error(err)
    code, _, err = run(None, "init", str(tmp_path / "x"), "--base", str(tmp_path / "missing"))
    assert code != 0 and one_line_error(err) and "no such directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(None, "init", str(tmp_path / "y"), "--base", str(empty))
    assert code != 0 and one_line_error(err)
    assert not (tmp_path / "y" / ".nmkevc").exists()


def test_unsupported_architecture(tmp_path, run):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "t5"}')
    (d / "model.safetensors").write_bytes(b"")
    code, _, err = run(None, "init", str(tmp_path / "r"), "--base", str(d))
    assert code != 0 and one_line_error(err) and "not supported" in err


def test_merge_unrelated_and_different_base(repo, model_dirs, run, commit):
    commit(repo, 1)
    repo.switch_orphan("island")
    commit(repo, 2, "Spain", "Oslo")
    repo.switch("main")
    code, _, err = run(repo, "merge", "island")
    assert code != 0 and one_line_error(err) and "unrelated histories" in err
    other = "gpt_neox"
    bid = Repository.open(repo.dir).add_base(str(model_dirs[other]))
    Repository.open(repo.dir).switch_orphan("neox", base_id=bid)
    Repository.open(repo.dir).switch("main")
    code, _, err = run(repo, "merge", "neox")
    assert code != 0 and one_line_error(err) and "different base" in err


def test_corrupt_delta_named_by_fsck_and_refused(repo, run, commit):
    cid = commit(repo, 1)
    did = repo.commit(cid).delta
    p = repo.plumbing.store.path(did)
    os.chmod(p, 0o644)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x55
    p.write_bytes(bytes(data))
    code, out, _ = run(repo, "fsck")
    assert code != 0 and did[:12] in out
    code, _, err = run(repo, "export", "HEAD", str(repo.root / "out"))
    assert code != 0 and one_line_error(err) and "corrupt" in err
    assert not (repo.root / "out").exists()


def test_fsck_names_a_cycle_of_parents(repo, monkeypatch, commit):
    """Ids that verify rule a cycle out; were one read all the same, fsck names it."""
    root = repo.resolve()
    commit(repo, 1)
    tip = commit(repo, 2, "Spain", "Oslo")
    parse = Commit.from_bytes

    def looped(payload, oid="?"):
        c = parse(payload, oid)
        return dataclasses.replace(c, parents=(tip,)) if oid == root else c

    monkeypatch.setattr(Commit, "from_bytes", staticmethod(looped))
    rep = Repository.open(repo.dir).fsck()
    (cycle,) = [p for p in rep.problems if p.startswith("commits are their own ancestors: ")]
    assert root[:12] in cycle and tip[:12] in cycle


def test_truncated_commit_refused(repo, run, commit):
    cid = commit(repo, 1)
    p = repo.plumbing.store.path(cid)
    os.chmod(p, 0o644)
    p.write_bytes(p.read_bytes()[:10])
    code, _, err = run(repo, "log")
    assert code != 0 and one_line_error(err) and "corrupt" in err


def test_interrupt_between_objects_and_ref(repo, monkeypatch, commit):
    head = repo.resolve()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(repo.plumbing.refs, "update_head", interrupted)
    with pytest.raises(KeyboardInterrupt):
        commit(repo, 1)
    fresh = Repository.open(repo.dir)
    assert fresh.resolve() == head
    rep = fresh.fsck()
    assert rep.ok and len(rep.dangling) == 2  # the orphaned delta and commit
    assert fresh.gc().removed == 2 and fresh.fsck().dangling == []
    assert not fresh.plumbing.lock.held


def test_hard_crash_mid_commit(repo, commit):
    """A process killed between writing objects and moving the ref (os._exit: no cleanup)."""
    head = repo.resolve()
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from random_deltas import commit_random
        from nmkevc import Repository
        repo = Repository.open({str(repo.root)!r})
        repo.plumbing.refs.set = lambda *a, **k: os._exit(9)
        commit_random(repo, 5, "A", "B")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    fresh = Repository.open(repo.dir)
    assert fresh.resolve() == head and fresh.fsck().ok
    commit(fresh, 2)  # and the lock died with the process
    assert fresh.fsck().ok


def test_locked_repository(repo):
    with repo.plumbing.writing():
        proc = subprocess.run([sys.executable, "-m", "nmkevc", "-C", str(repo.root), "branch", "x"],
                              capture_output=True, text=True)
    assert proc.returncode != 0
    assert "repository is locked" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_export_into_non_empty_directory(repo, tmp_path, run):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(repo, "export", "HEAD", str(out))
    assert code != 0 and one_line_error(err) and "not an empty directory" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_changed_base_refused_by_cli(repo, base_dir, run):
    (base_dir / "tokenizer_config.json").write_text("{}")
    code, _, err = run(repo, "export", "HEAD", str(repo.root / "o"))
    assert code != 0 and one_line_error(err) and "tokenizer" in err
