"""Links, the lock, one-line errors and fsck --repair's promises (issue 24, items 2, 4, 5)."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from random_deltas import commit_random as _commit

from nmkevc.cli.base import main
from nmkevc.errors import NmkevcError, RepositoryLockedError
from nmkevc.porcelain.maintenance import fsck, gc
from nmkevc.remote import remotes, transfer
from nmkevc.repo.repository import Repo
from nmkevc.storage.lock import RepoLock


@pytest.fixture
def arch() -> str:
    return "llama"


@pytest.fixture
def remote(src, tmp_path) -> Path:
    """A bare remote holding src's history, src knowing it as `r`."""
    url = tmp_path / "remote"
    remotes.add_remote(src, "r", str(url))
    transfer.push(Repo.open(src.dir.parent), "r")
    return url


def _one_line(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    assert len([x for x in err.splitlines() if x.startswith("error:")]) == (1 if rc else 0), err
    return rc, err


# -- item 2: no symlink followed, the lock never truncates what it did not create ----------
@pytest.mark.parametrize("how", ["symlink", "hardlink", "foreign"])
def test_remote_lock_never_writes_outside(how, src, remote, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me\n" * 10)
    lock = remote / "lock"
    lock.unlink(missing_ok=True)
    if how == "symlink":
        lock.symlink_to(precious)
    elif how == "hardlink":
        os.link(precious, lock)
    else:
        lock.write_text("a file someone else put here\n")
    _commit(src.dir.parent, 2, "Spain")
    rc, err = _one_line(["-C", str(src.dir.parent), "push", "r"], capsys)
    assert rc != 0 and "lock" in err
    assert precious.read_text() == "do not truncate me\n" * 10


def test_local_lock_symlink_refused(src, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    lock = src.dir / "lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(precious)
    rc, err = _one_line(["-C", str(src.dir.parent), "branch", "side"], capsys)
    assert rc != 0 and "symbolic link" in err
    assert precious.read_text() == "keep"


@pytest.mark.parametrize("what", ["objects", "refs", "fanout", "refs/heads"])
def test_remote_with_a_symlinked_directory_is_refused(what, src, remote, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    if what == "fanout":
        new = _commit(src.dir.parent, 2, "Spain")
        target = remote / "objects" / new[:2]
        if target.exists():
            os.rename(target, outside / "moved")
    else:
        target = remote / what
        os.rename(target, outside / "moved")
        (outside / "moved").rename(outside / "x")
        (outside / "x").rename(outside / what.replace("/", "_"))
    target.symlink_to(outside)
    if what != "fanout":
        _commit(src.dir.parent, 2, "Spain")
    before = sorted(p.name for p in outside.rglob("*"))
    rc, err = _one_line(["-C", str(src.dir.parent), "push", "r"], capsys)
    assert rc != 0 and "symbolic link" in err
    assert sorted(p.name for p in outside.rglob("*")) == before  # nothing written outside
    if what != "fanout":  # (the link there holds only what the refused push would have sent)
        rc, err = _one_line(["clone", str(remote), str(tmp_path / "c")], capsys)
        assert rc != 0 and "symbolic link" in err


def test_wait_applies_to_a_remotes_lock(src, remote):
    _commit(src.dir.parent, 2, "Spain")
    held = RepoLock(remote / "lock")
    held.acquire()
    try:
        with pytest.raises(RepositoryLockedError, match="after waiting"):
            transfer.push(Repo.open(src.dir.parent, wait=0.4), "r")
        threading.Timer(0.4, held.release).start()
        t0 = time.monotonic()
        transfer.push(Repo.open(src.dir.parent, wait=10), "r")
        assert time.monotonic() - t0 >= 0.3
    finally:
        held.release()
    assert Repo(remote).resolve("main") == Repo.open(src.dir.parent).resolve("main")


def test_gc_runs_on_a_full_disk(src, monkeypatch):
    """The lock's holder record is a courtesy: when the disk is full, gc (which frees space)
    still takes the lock and runs."""
    import nmkevc.storage.lock as lockmod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lockmod.os, "pwrite", full)
    monkeypatch.setattr(lockmod.os, "ftruncate", full)
    gc(Repo.open(src.dir.parent))


def test_lock_record_is_written_and_cleared(src):
    lock = RepoLock(src.dir / "lock")
    with lock:
        assert lock.holder() is not None and lock.holder().pid == os.getpid()
    assert lock.holder() is None
    with pytest.raises(NmkevcError):
        (src.dir / "lock").write_text("x" * 10_000)
        RepoLock(src.dir / "lock").acquire()


# -- item 5: one clear line for every input, history text made printable ------------------
def test_inputs_that_were_internal_errors(src, tmp_path, capsys, monkeypatch):
    root = str(src.dir.parent)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    for argv in (
        ["-C", root, "log", "HEAD~" + "9" * 5000],
        ["-C", root, "show", "HEAD^" + "1" * 5000],
        ["-C", root, "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome",
         "--stats-tokens", "9" * 23],
        ["-C", root, "edit", "--file", str(deep)],
    ):
        rc, err = _one_line(argv, capsys)
        assert rc != 0, argv


def test_s3_without_credentials_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("s3fs")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    rc, err = _one_line(["clone", "s3://nmkevc-no-such-bucket-x/edits", str(tmp_path / "c")], capsys)
    assert rc != 0 and "s3://" in err
    assert not (tmp_path / "c").exists()


def test_fetched_history_text_reaches_the_terminal_printable(src, tmp_path, capsys):
    from forge import commit_payload, history_objects, obj, write_bundle

    tip = src.resolve("main")
    evil = "pwned \x1b]0;title\x07 \x1b[2J\x1b[H \r\x08\x9b31m text"
    cid, data = obj("commit", commit_payload(src.commit(tip).base, [tip], message=evil, author="m\x1b[8mx",
                                             requests=[{"subject": "S\x1b[2J", "prompt": "{} is\x07",
                                                        "target_new": "T"}]))
    path = write_bundle(tmp_path / "e.bundle", {"refs/heads/main": cid}, {**history_objects(src), cid: data},
                        bases={b: s.to_json() for b, s in src.config.bases.items()})
    rc, _ = _one_line(["clone", str(path), str(tmp_path / "c")], capsys)
    assert rc == 0
    for argv in (["log"], ["log", "--oneline"], ["show"], ["branch"], ["log", "--stat"]):
        capsys.readouterr()
        assert main(["-C", str(tmp_path / "c"), *argv]) == 0
        out = capsys.readouterr().out
        assert "pwned" in out or "S" in out
        assert not any(ch in out for ch in "\x07\x08\r\x9b"), (argv, out)
        assert "\x1b]" not in out and "\x1b[2J" not in out and "\x1b[H" not in out and "\x1b[8m" not in out


# -- item 4: fsck --repair keeps every promise ---------------------------------------------
def _damage(path: Path) -> None:
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _repairs_cleanly(root: Path, capsys) -> None:
    """fsck says every problem is repairable, --repair repairs, then fsck and gc pass."""
    rep = fsck(Repo.open(root))
    assert not rep.ok and rep.repairable == len(rep.problems), rep.problems
    rc, err = _one_line(["-C", str(root), "fsck", "--repair"], capsys)
    assert rc == 0, err
    assert fsck(Repo.open(root)).ok
    gc(Repo.open(root))


@pytest.mark.parametrize("head", ["garbage", "\xff\xfe", "ref: refs/tags/v1", "ref: refs/heads/../../x", ""])
def test_a_corrupt_head_is_repaired(head, src, capsys):
    (src.dir / "HEAD").write_bytes(head.encode("latin-1"))
    _repairs_cleanly(src.dir.parent, capsys)
    assert Repo.open(src.dir.parent).head().branch == "main"


def test_a_branch_at_a_missing_commit_is_restored_from_its_reflog(src, capsys):
    before = src.resolve("main")
    lost = _commit(src.dir.parent, 2, "Spain")
    Repo.open(src.dir.parent).store.delete(lost)
    _repairs_cleanly(src.dir.parent, capsys)
    assert Repo.open(src.dir.parent).resolve("main") == before


def test_repair_takes_lost_and_damaged_history_back_from_a_remote(src, remote, capsys):
    tip = src.resolve("main")
    c = src.commit(tip)
    _damage(src.store.path(tip))
    src.store.delete(c.delta)
    rc, err = _one_line(["-C", str(src.dir.parent), "fsck", "--repair"], capsys)
    assert rc == 0, err
    r = Repo.open(src.dir.parent)
    assert r.resolve("main") == tip and r.store.intact(tip) and r.store.intact(c.delta)
    assert fsck(r).ok


def test_a_damaged_base_manifest_is_rebuilt(src, capsys):
    base = src.commit(src.resolve("main")).base
    _damage(src.store.path(base))
    _repairs_cleanly(src.dir.parent, capsys)
    assert Repo.open(src.dir.parent).store.intact(base)


def test_an_unreferenced_damaged_object_is_repairable(src, capsys):
    from forge import obj

    oid, data = obj("blob", b'{"templates": []}')
    p = src.store.path(oid)
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data[:-3])
    _repairs_cleanly(src.dir.parent, capsys)
    assert not Repo.open(src.dir.parent).store.exists(oid)


@pytest.mark.parametrize("at", ["delete:ref", "delete:object"])
def test_a_repair_cut_off_is_completed_by_the_next(at, src, tmp_path, capsys):
    import subprocess
    import sys

    from nmkevc.repo.caches import TemplatesKey

    base = src.commit(src.resolve("main")).base
    oids = [src.caches.put_templates(TemplatesKey(base), ["{}", "Say: {}"])]
    oids.append(src.caches.put_templates(TemplatesKey(base, seed=7), ["{}"]))
    for oid in oids:
        _damage(src.store.path(oid))
    code = "import sys; from nmkevc.cli.base import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "-C", str(src.dir.parent), "fsck", "--repair"],
                       env={**os.environ, "NMKEVC_CRASH_AT": at}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 97, p.stderr
    rc, err = _one_line(["-C", str(src.dir.parent), "fsck", "--repair"], capsys)
    assert rc == 0, err
    assert fsck(Repo.open(src.dir.parent)).ok
    gc(Repo.open(src.dir.parent))


# -- item 3: no lost update on any remote ---------------------------------------------------
def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reliability_bench", ROOT / "benchmarks" / "reliability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ROOT = Path(__file__).resolve().parent.parent


def test_racing_pushes_one_winner_no_lost_update(model_dirs):
    """A bounded soak (3 pushers, 3 rounds, each ref read slowed to widen the race) on a
    path and on S3 (moto); benchmarks/reliability.py runs the long one."""
    pytest.importorskip("moto.moto_server.threaded_moto_server")
    pytest.importorskip("s3fs")
    got = _bench_module().races(3, 3, lambda work: model_dirs["llama"])
    for backend, r in got.items():
        assert r["rounds_with_one_winner"] == r["rounds"], (backend, r)
        assert r["lost_updates"] == 0 and r["succeeded"] == r["rounds"], (backend, r)


def test_push_refused_where_refs_cannot_move_atomically(src, tmp_path, capsys):
    import fsspec

    url = f"memory://nmkevc-{os.getpid()}-{time.monotonic_ns()}/repo"
    remotes.add_remote(src, "m", url)
    rc, err = _one_line(["-C", str(src.dir.parent), "push", "m"], capsys)
    assert rc != 0 and "allow_unsafe_push" in err
    assert not fsspec.filesystem("memory").exists(url.split("://", 1)[1] + "/objects")
    r = Repo.open(src.dir.parent)
    r.config.settings["allow_unsafe_push"] = True
    r.config.save(r.dir / "config.json")
    rc, err = _one_line(["-C", str(src.dir.parent), "push", "m"], capsys)
    assert rc == 0, err


def test_reliability_doc_block_is_generated_from_its_json():
    mod = _bench_module()
    data = json.loads(mod.DEFAULT_OUT.read_text()) if mod.DEFAULT_OUT.exists() else None
    text = mod.DOC.read_text()
    assert mod.BEGIN in text and mod.END in text
    assert text.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0].strip("\n") == mod.markdown(data)


def test_init_checks_the_device_and_leaves_nothing_when_it_fails(model_dirs, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    target = tmp_path / "new" / "repo"
    rc, err = _one_line(["--device", "cuda", "init", "--base", str(model_dirs["llama"]), str(target)], capsys)
    assert rc != 0 and "CUDA" in err and not (tmp_path / "new").exists()
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    rc, err = _one_line(["init", "--base", str(empty), str(target)], capsys)
    assert rc != 0 and not (tmp_path / "new").exists()
    # the Python API keeps the same promise (the checks live in the porcelain, not the CLI)
    from nmkevc import NmkevcError, Repository

    with pytest.raises(NmkevcError, match="CUDA"):
        Repository.init(target, base=str(model_dirs["llama"]), device="cuda")
    with pytest.raises(NmkevcError):  # fails after the directory was made: it goes again
        Repository.init(target, base=str(model_dirs["llama"]), branch="bad..name")
    assert not (tmp_path / "new").exists()


def test_empty_options_are_refused(src, capsys):
    root = str(src.dir.parent)
    for argv in (["-C", root, "--device", "", "status"],
                 ["-C", root, "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--layers", ""]):
        rc, err = _one_line(argv, capsys)
        assert rc == 2, (argv, err)


def test_a_symlinked_reflog_is_never_appended_to(src, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    log = src.dir / "logs" / "refs" / "heads" / "side"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.symlink_to(outside)
    rc, err = _one_line(["-C", str(src.dir.parent), "branch", "side"], capsys)
    assert rc == 0, err
    assert outside.read_text() == "keep\n"
