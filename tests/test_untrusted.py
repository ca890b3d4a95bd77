"""Everything received is untrusted until checked (issue 24, item 1).

A hostile bundle or remote hands over objects that hash correctly to their ids. Each
case here must be refused by fetch and clone with one clear error, before anything is
stored: afterwards the receiving repository's refs are unchanged, fsck passes and gc runs.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
import zstandard
from forge import bomb_frame, commit_payload, delta_payload, history_objects, obj, write_bundle

from nmkevc.cli.base import main
from nmkevc.errors import NmkevcError
from nmkevc.models.adapters import adapter_for
from nmkevc.porcelain.maintenance import fsck, gc
from nmkevc.remote import bundle, remotes, transfer
from nmkevc.repo.repository import Repo
from nmkevc.storage.objects import encode


@pytest.fixture
def arch() -> str:
    return "llama"


@pytest.fixture
def dst(src, tmp_path) -> Repo:
    """A good clone of src: the repository a hostile peer is fetched into."""
    transfer.clone(str(src.dir.parent), tmp_path / "dst")
    return Repo.open(tmp_path / "dst")


def _weight(src: Repo) -> tuple[str, str, int, int]:
    tip = src.commit(src.resolve("main"))
    m = src.manifest(tip.base)
    ad = adapter_for(m.config)
    name = ad.weight_name(1)
    shape = m.tensors[name]["shape"]
    d_model, d_ff = (shape[0], shape[1]) if ad.orientation == "out_in" else (shape[1], shape[0])
    return name, ad.orientation, d_model, d_ff


def _on_tip(src: Repo, extra: dict[str, bytes], **fields) -> tuple[str, dict[str, bytes]]:
    """A commit on src's main with `fields` (and the extra objects it needs)."""
    tip = src.resolve("main")
    base = src.commit(tip).base
    oid, data = obj("commit", commit_payload(base, [tip], **fields))
    return oid, {**extra, oid: data}


def _delta_case(fill: float | None = None, d_ff_delta: int = 0, huge: bool = False):
    def make(src: Repo):
        name, orient, d_model, d_ff = _weight(src)
        d_ff = 10**12 if huge else d_ff + d_ff_delta
        did, data = obj("delta", delta_payload(name, 1, orient, d_model, d_ff, fill))
        return _on_tip(src, {did: data}, delta=did)
    return make


def _fields_case(**fields):
    def make(src: Repo):
        return _on_tip(src, {}, **fields)
    return make


def _delta_is_base(src: Repo):
    return _on_tip(src, {}, delta=src.commit(src.resolve("main")).base)


def _parent_is_delta(src: Repo):
    tip = src.resolve("main")
    return _on_tip(src, {}, parents=[tip, src.commit(tip).delta])


def _base_is_local_delta(src: Repo):
    tip = src.resolve("main")
    return _on_tip(src, {}, base=src.commit(tip).delta)


def _bomb_tib(src: Repo):
    frame = bomb_frame("commit", 1 << 40)
    from nmkevc.storage.objects import object_id

    # the id cannot match a content never delivered; the size must be refused before that
    return object_id(b"x"), {object_id(b"x"): frame}


def _ratio_bomb(src: Repo):
    raw = encode("delta", bytes(80 << 20))
    from nmkevc.storage.objects import object_id

    did = object_id(raw)
    data = zstandard.ZstdCompressor(level=3).compress(raw)
    return _on_tip(src, {did: data}, delta=did)


def _no_content_size(src: Repo):
    tip = src.resolve("main")
    payload = commit_payload(src.commit(tip).base, [tip])
    raw = encode("commit", payload)
    from nmkevc.storage.objects import object_id

    return object_id(raw), {object_id(raw): zstandard.ZstdCompressor(write_content_size=False).compress(raw)}


CASES = {
    "delta d_ff 10**12": (_delta_case(huge=True), "refused"),
    "delta full of NaN": (_delta_case(fill=math.nan), "NaN or infinite"),
    "delta full of inf": (_delta_case(fill=math.inf), "NaN or infinite"),
    "delta shape not the base's": (_delta_case(d_ff_delta=1), "shape"),
    "delta id is the base id": (_delta_is_base, "two roles|both as a|expected a delta"),
    "parent id is a delta": (_parent_is_delta, "two roles|both as a|expected a commit|as a commit"),
    "base id is a delta here": (_base_is_local_delta, "it is a delta here|both as a"),
    "message is a number": (_fields_case(message=5), "'message'"),
    "time is text": (_fields_case(time="soon"), "'time'"),
    "time is huge": (_fields_case(time=10**30), "'time'"),
    "parents is a string": (_fields_case(parents="abc"), "'parents'"),
    "requests hold numbers": (_fields_case(requests=[5]), "'requests'"),
    "info is a list": (_fields_case(info=[]), "'info'"),
    "method is a number": (_fields_case(method=3), "'method'"),
    "frame claims 1 TiB": (_bomb_tib, "exceeds the limit"),
    "80 MiB of zeros in 2 KiB": (_ratio_bomb, "decompression bomb"),
    "frame without content size": (_no_content_size, "does not declare its size"),
}


def _refs_of(r: Repo) -> dict[str, str]:
    return dict(r.refs.list("refs/"))


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bundle_refused_before_anything_is_stored(case, src, dst, tmp_path):
    make, match = CASES[case]
    tip, extra = make(src)
    objects = {**history_objects(src), **extra}
    bases = {b: s.to_json() for b, s in src.config.bases.items()}
    path = write_bundle(tmp_path / "evil.bundle", {"refs/heads/main": tip}, objects, bases=bases)

    with pytest.raises(NmkevcError, match=match):
        transfer.clone(str(path), tmp_path / "c")

    remotes.add_remote(dst, "evil", str(path))
    before = _refs_of(dst)
    with pytest.raises(NmkevcError, match=match):
        transfer.fetch(Repo.open(dst.dir.parent), "evil")
    after = Repo.open(dst.dir.parent)
    assert _refs_of(after) == before
    assert not any(after.store.exists(o) for o in extra)  # nothing forged was stored
    rep = fsck(after)
    assert rep.ok, rep.problems
    gc(after)
    assert not bundle.verify_bundle(str(path)).ok


def test_hostile_fetch_is_one_line_on_the_cli(src, dst, tmp_path, capsys):
    tip, extra = _delta_case(huge=True)(src)
    path = write_bundle(tmp_path / "evil.bundle", {"refs/heads/main": tip}, {**history_objects(src), **extra},
                        bases={b: s.to_json() for b, s in src.config.bases.items()})
    remotes.add_remote(dst, "evil", str(path))
    for argv in (["-C", str(dst.dir.parent), "fetch", "evil"], ["bundle", "verify", str(path)],
                 ["-C", str(dst.dir.parent), "fsck"], ["-C", str(dst.dir.parent), "gc"]):
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert "internal error" not in err and "Traceback" not in err
        if argv[-1] in ("fsck", "gc"):
            assert rc == 0, err
        elif argv[0] == "bundle":
            assert rc == 1, err
        else:
            assert rc != 0 and len([x for x in err.splitlines() if x.startswith("error:")]) == 1, err


def test_deflated_bundle_entries_are_never_inflated(src, tmp_path):
    objects = history_objects(src)
    path = write_bundle(tmp_path / "zip.bundle", {"refs/heads/main": src.resolve("main")}, objects,
                        bases={b: s.to_json() for b, s in src.config.bases.items()},
                        compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(NmkevcError, match="compressed or encrypted"):
        transfer.clone(str(path), tmp_path / "c")
    with pytest.raises(NmkevcError, match="compressed or encrypted"):
        bundle.verify_bundle(str(path))


@pytest.mark.parametrize("manifest", [
    [], "text", {"format": "nmkevc-bundle", "version": 1, "refs": []},
    {"format": "nmkevc-bundle", "version": 1, "refs": {}, "bases": []},
    {"format": "nmkevc-bundle", "version": 1, "refs": {}, "head": 5},
    {"format": "nmkevc-bundle", "version": 1, "refs": {"refs/heads/main": 7}},
    {"format": ["x"], "version": {}},
    b"[" * 100_000,
], ids=["list", "string", "refs list", "bases list", "head number", "id number", "format list", "deep"])
def test_bundle_manifest_of_the_wrong_shape(manifest, src, tmp_path, capsys):
    path = write_bundle(tmp_path / "m.bundle", {}, {}, manifest=manifest)
    with pytest.raises(NmkevcError):
        transfer.clone(str(path), tmp_path / "c")
    with pytest.raises(NmkevcError):
        bundle.verify_bundle(str(path))
    rc = main(["bundle", "verify", str(path)])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error:") and "internal error" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("config", [[], {"bases": []}, {"bases": {"x": 5}}, "[" * 100_000],
                         ids=["list", "bases list", "base number", "deep"])
def test_remote_config_of_the_wrong_shape(config, src, dst, tmp_path):
    remote = tmp_path / "remote"
    remotes.add_remote(src, "r", str(remote))
    transfer.push(Repo.open(src.dir.parent), "r")
    cfg = remote / "config.json"
    cfg.chmod(0o644)
    cfg.write_text(config if isinstance(config, str) else json.dumps(config))
    remotes.add_remote(dst, "r", str(remote))
    with pytest.raises(NmkevcError):
        transfer.fetch(Repo.open(dst.dir.parent), "r")
    with pytest.raises(NmkevcError):
        transfer.clone(str(remote), tmp_path / "c")


@pytest.mark.parametrize("config", [[], {"bases": []}, {"bases": {"x": {"kind": 5}}}, {"settings": []}, "nul"],
                         ids=["list", "bases list", "base kind", "settings list", "not json"])
def test_local_config_of_the_wrong_shape_is_one_line(config, src, capsys):
    (src.dir / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for verb in ("log", "fsck", "status"):
        rc = main(["-C", str(src.dir.parent), verb])
        err = capsys.readouterr().err
        assert rc != 0 and "internal error" not in err and err.count("error:") == 1, err
        assert "config.json is corrupt" in err


def test_fsck_finds_a_stored_delta_full_of_nan(src, tmp_path):
    """A NaN delta already in a store (from an older version) is a problem fsck names."""
    name, orient, d_model, d_ff = _weight(src)
    from nmkevc.deltas.delta import Delta

    d = Delta.from_bytes(delta_payload(name, 1, orient, d_model, d_ff, math.nan))
    from nmkevc import Repository

    Repository.open(src.dir.parent).commit_delta(d, "nan")
    rep = fsck(Repo.open(src.dir.parent))
    assert not rep.ok and any("NaN" in p for p in rep.problems)


def test_bundle_create_never_overwrites_and_gc_reaps_a_killed_one(src, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "x.bundle"
    out.write_text("precious")
    with pytest.raises(NmkevcError, match="exists"):
        bundle.create_bundle(src, out, ["main"])
    assert out.read_text() == "precious"
    out.unlink()
    env = {**os.environ, "NMKEVC_CRASH_AT": "bundle"}
    code = ("import sys; from nmkevc.cli.base import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "-C", str(src.dir.parent), "bundle", "create", str(out),
                        "main"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 97, p.stderr
    left = [x for x in tmp_path.iterdir() if x.name.startswith(".x.bundle.")]
    assert left and not out.exists()
    gc(Repo.open(src.dir.parent))
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".x.bundle.")]


def test_fetch_heals_a_damaged_commit_from_a_good_remote(src, dst, tmp_path):
    tip = dst.resolve("main")
    p = dst.store.path(tip)
    p.chmod(0o644)
    p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\0")
    assert not fsck(Repo.open(dst.dir.parent)).ok
    transfer.fetch(Repo.open(dst.dir.parent), "origin")
    rep = fsck(Repo.open(dst.dir.parent))
    assert rep.ok, rep.problems


def test_unused_path_is_not_a_bundle(tmp_path):
    with pytest.raises(NmkevcError):
        bundle.verify_bundle(str(tmp_path))
    assert Path(tmp_path).is_dir()


@pytest.mark.parametrize("case", ["delta d_ff 10**12", "delta full of NaN", "message is a number", "time is huge"])
def test_what_an_older_version_stored_is_named_by_fsck_and_repaired(case, src, capsys):
    """Objects an older nmkevc let in before checking them: fsck names each, --repair
    removes the unreferenced ones, and gc runs again."""
    tip, extra = CASES[case][0](src)
    if len(extra) > 1:  # an older version stored the delta, then failed; the commit never was
        extra.pop(tip)
    for oid, data in extra.items():
        p = src.store.path(oid)
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
    rep = fsck(Repo.open(src.dir.parent))
    assert not rep.ok and rep.repairable == len(rep.problems)
    assert all(any(o[:12] in p for p in rep.problems) for o in extra), rep.problems
    assert main(["-C", str(src.dir.parent), "fsck", "--repair"]) == 0
    after = Repo.open(src.dir.parent)
    assert fsck(after).ok and not any(after.store.exists(o) for o in extra)
    gc(after)


def test_fetch_brings_back_a_lost_delta(src, dst):
    delta = dst.commit(dst.resolve("main")).delta
    dst.store.delete(delta)
    assert not fsck(Repo.open(dst.dir.parent)).ok
    transfer.fetch(Repo.open(dst.dir.parent), "origin")
    assert Repo.open(dst.dir.parent).store.intact(delta) and fsck(Repo.open(dst.dir.parent)).ok
