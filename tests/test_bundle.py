"""Bundles: one file holding revisions; verify, clone and fetch from it."""

from __future__ import annotations

import json
import zipfile

import pytest

from nmkevc.errors import NmkevcError
from nmkevc.porcelain.maintenance import fsck
from nmkevc.remote import bundle, remotes, transfer
from nmkevc.repo.repository import Repo


@pytest.fixture
def history(repo, tmp_path, commit):
    root = tmp_path / "repo"
    commit(root, 1, "France")
    from nmkevc import Repository

    Repository.open(root).tag("v1")
    commit(root, 2, "Spain")
    return root


def test_bundle_create_verify_clone(history, tmp_path):
    r = Repo.open(history)
    out = tmp_path / "paper.bundle"
    rep = bundle.create_bundle(r, out, ["main", "v1"])
    assert rep.refs == {"refs/heads/main": r.resolve("main"), "refs/tags/v1": r.resolve("v1")}
    assert rep.objects == 6 and rep.head == "main"  # base, 3 commits, 2 deltas
    with zipfile.ZipFile(out) as z:
        m = json.loads(z.read("nmkevc-bundle.json"))
        assert m["format"] == "nmkevc-bundle" and len(z.namelist()) == 7
    assert bundle.verify_bundle(str(out)).ok

    c = tmp_path / "c"
    transfer.clone(str(out), c)
    cr = Repo.open(c)
    assert cr.resolve("main") == r.resolve("main") and cr.resolve("v1") == r.resolve("v1")
    assert fsck(cr).ok and not fsck(cr).dangling
    with pytest.raises(NmkevcError, match="read-only|bundle"):
        transfer.push(cr, "origin")


def test_fetch_from_bundle(history, tmp_path, commit):
    r = Repo.open(history)
    old = tmp_path / "old.bundle"
    bundle.create_bundle(r, old, ["v1"])
    assert bundle.BundleReader(str(old)).head_branch() is None
    c = tmp_path / "c"
    with pytest.raises(NmkevcError, match="no branches"):
        transfer.clone(str(old), c)
    bundle.create_bundle(r, tmp_path / "new.bundle", ["HEAD"])
    transfer.clone(str(tmp_path / "new.bundle"), tmp_path / "d")
    d = Repo.open(tmp_path / "d")
    tip = commit(history, 3, "Italy")
    bundle.create_bundle(Repo.open(history), tmp_path / "newer.bundle", ["main"])
    remotes.add_remote(d, "mail", str(tmp_path / "newer.bundle"))
    got = transfer.fetch(Repo.open(tmp_path / "d"), "mail")
    assert got.objects == 2 and Repo.open(tmp_path / "d").resolve("mail/main") == tip


def test_corrupt_bundle_refused(history, tmp_path):
    r = Repo.open(history)
    out = tmp_path / "b.bundle"
    bundle.create_bundle(r, out, ["main"])
    bad = tmp_path / "bad.bundle"
    delta = r.commit(r.resolve("main")).delta
    with zipfile.ZipFile(out) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(delta[2:]):
                data = data[:-8] + b"\0" * 8
            zout.writestr(info, data)
    rep = bundle.verify_bundle(str(bad))
    assert not rep.ok and any(delta[:12] in p for p in rep.problems)
    with pytest.raises(NmkevcError, match="corrupt"):
        transfer.clone(str(bad), tmp_path / "c")
    with pytest.raises(NmkevcError, match="not a bundle"):
        bundle.verify_bundle(str(r.dir / "config.json"))
    with pytest.raises(NmkevcError, match="branch or tag"):
        bundle.create_bundle(r, tmp_path / "x.bundle", [r.resolve("main")[:10]])


def test_bundle_ref_names_cannot_escape(history, tmp_path):
    r = Repo.open(history)
    out = tmp_path / "b.bundle"
    bundle.create_bundle(r, out, ["main"])
    evil = tmp_path / "evil.bundle"
    with zipfile.ZipFile(out) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "nmkevc-bundle.json":
                m = json.loads(data)
                m["refs"] = {"refs/heads/../../../config.json": m["refs"]["refs/heads/main"]}
                data = json.dumps(m).encode()
            zout.writestr(info, data)
    with pytest.raises(NmkevcError, match="not a valid ref name"):
        transfer.clone(str(evil), tmp_path / "c")
    assert json.loads((history / ".nmkevc" / "config.json").read_text())["bases"]
