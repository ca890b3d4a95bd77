"""Bundles: a set of revisions in one file, to mail or to attach to a paper.

A bundle is a zip archive (entries stored, not deflated: objects are already
zstandard-compressed) holding

* `nmkevc-bundle.json`: `{"format": "nmkevc-bundle", "version": 1, "refs": {ref: id},
  "head": branch or null, "bases": {base id: where it lives}, "objects": [ids]}`;
* `objects/ab/cdef…`: every object the refs reach (commits, deltas, base manifests),
  byte for byte as the object store keeps them.

It is self-contained (no prerequisites): cloning it gives the full history of its refs.
Reading trusts nothing: each object is checked against its id as it is received.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import NmkevcError, RefError
from ..history.commit import Commit
from ..repo.repository import Repo
from ..storage.faults import crash_point
from ..storage.fsutil import fsync_dir
from ..storage.objects import BASE_KIND, COMMIT_KIND, DELTA_KIND, MAX_BYTES, canonical_json, is_object_id
from ..storage.refs import HEADS, TAGS, check_ref_name
from ..storage.store import peek_header
from ..storage.temps import claimed_tempdir
from .untrusted import ExpectedKinds, check_delta_fits, check_received

MANIFEST = "nmkevc-bundle.json"
FORMAT = "nmkevc-bundle"
VERSION = 1
#: Largest manifest read (ids of a long history are 67 bytes each: room for a million).
MAX_MANIFEST_BYTES = 128 << 20
#: Largest object entry read: the biggest kind a bundle carries, compressed no better than stored.
MAX_ENTRY_BYTES = MAX_BYTES[DELTA_KIND] + (1 << 20)


def is_bundle(url: str) -> bool:
    """A bundle is named *.bundle, or is a local zip file holding a bundle manifest."""
    if url.endswith(".bundle"):
        return True
    p = Path(url)
    if "://" not in url and p.is_file():
        with contextlib.suppress(OSError, zipfile.BadZipFile):
            with zipfile.ZipFile(p) as z:
                return MANIFEST in z.namelist()
    return False


def _object_name(oid: str) -> str:
    return f"objects/{oid[:2]}/{oid[2:]}"


@dataclass
class BundleReport:
    path: str
    refs: dict[str, str]
    head: str | None
    objects: int
    bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def bundle_refs(repo: Repo, revs: list[str]) -> tuple[dict[str, str], str | None]:
    """({ref: commit}, head branch) for the named branches / tags; HEAD means its branch."""
    if not revs:
        raise NmkevcError("name at least one branch or tag to bundle")
    refs: dict[str, str] = {}
    head = None
    for rev in revs:
        name = rev
        if rev in ("HEAD", "@"):
            h = repo.head()
            if h.branch is None or h.commit is None:
                raise RefError("HEAD is detached or unborn; name a branch or tag to bundle")
            name = head = h.branch
        if repo.refs.read(HEADS + name):
            refs[HEADS + name] = repo.refs.read(HEADS + name)
            head = head or name
        elif repo.refs.read(TAGS + name):
            refs[TAGS + name] = repo.refs.read(TAGS + name)
        else:
            raise RefError(f"{rev!r} is not a branch or tag (a bundle carries named refs)")
    return refs, head


def create_bundle(repo: Repo, path: str | Path, revs: list[str], progress=None) -> BundleReport:
    """Write the bundle of `revs` to `path` (atomically: a temp file renamed into place)."""
    refs, head = bundle_refs(repo, revs)
    commits: set[str] = set()
    for cid in refs.values():
        commits |= repo.graph.ancestors(cid)
    order = repo.graph.canonical_order(commits)
    objects: list[str] = []
    for cid in order:
        c = repo.commit(cid)
        for o in (c.base, c.delta):
            if o and o not in objects:
                objects.append(o)
    objects += order
    bases = {b: repo.config.bases[b].to_json() for b in {repo.commit(c).base for c in order}
             if b in repo.config.bases}
    manifest = {"format": FORMAT, "version": VERSION, "refs": refs, "head": head,
                "bases": bases, "objects": objects}
    out = Path(path)
    if out.exists() or out.is_symlink():
        raise NmkevcError(f"{out} exists; a bundle is never written over a file (remove it first)")
    out.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    # the bundle is written inside a directory claimed in the repository, so gc removes
    # what a killed `bundle create` leaves; it appears at `out` whole, by a link that
    # fails rather than replace a file created meanwhile
    with claimed_tempdir(repo.dir, out.parent, f".{out.name}.", ".bundle") as tmpdir:
        tmp = tmpdir / out.name
        with open(tmp, "xb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as z:
                z.writestr(MANIFEST, canonical_json(manifest))
                for i, oid in enumerate(objects):
                    data = repo.store.read_compressed(oid)
                    z.writestr(_object_name(oid), data)
                    total += len(data)
                    if progress:
                        progress(i + 1, len(objects))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        crash_point("bundle")
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise NmkevcError(f"{out} appeared while the bundle was written; not replaced") from None
        fsync_dir(out.parent)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return BundleReport(str(out), refs, head, len(objects), total)


class BundleReader:
    """A bundle file (local path or fsspec URL) read as a peer of fetch and clone."""

    def __init__(self, url: str):
        self.url = url
        self._manifest: dict | None = None

    def describe(self) -> str:
        return self.url

    @contextlib.contextmanager
    def _zip(self):
        import fsspec

        try:
            with fsspec.open(self.url, "rb") as fh, zipfile.ZipFile(fh) as z:
                yield z
        except FileNotFoundError:
            raise NmkevcError(f"no bundle at {self.url}") from None
        except IsADirectoryError:
            raise NmkevcError(f"{self.url} is a directory, not a bundle") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError,
                RuntimeError) as e:
            raise NmkevcError(f"{self.url} is not a bundle (not a readable zip archive: {type(e).__name__})") from None

    def _read(self, z: zipfile.ZipFile, name: str, cap: int) -> bytes:
        """One entry's bytes, refused unless stored (never inflated: a deflated entry can
        expand a thousandfold), unencrypted and within `cap` bytes, checked as it is read."""
        info = z.getinfo(name)  # KeyError when absent
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise NmkevcError(f"{self.url}: entry {name[:60]} is compressed or encrypted; a bundle stores "
                              "its entries as they are")
        if info.file_size > cap or info.compress_size > cap:
            raise NmkevcError(f"{self.url}: entry {name[:60]} is {info.file_size} bytes, above the limit of {cap}")
        with z.open(info) as fh:
            data = fh.read(cap + 1)
        if len(data) > cap:
            raise NmkevcError(f"{self.url}: entry {name[:60]} is larger than it says")
        return data

    def manifest(self) -> dict:
        if self._manifest is None:
            with self._zip() as z:
                try:
                    m = json.loads(self._read(z, MANIFEST, MAX_MANIFEST_BYTES))
                except (KeyError, ValueError, RecursionError):
                    raise NmkevcError(f"{self.url} is not a bundle (no valid {MANIFEST})") from None
            if not isinstance(m, dict):
                raise NmkevcError(f"{self.url} is not a bundle ({MANIFEST} is not a JSON object)")
            if m.get("format") != FORMAT or m.get("version") != VERSION:
                raise NmkevcError(f"{self.url}: unsupported bundle format {str(m.get('format'))[:40]!r} "
                                  f"version {str(m.get('version'))[:20]!r}")
            refs = m.get("refs")
            if not isinstance(refs, dict) or not all(
                isinstance(r, str) and r.startswith((HEADS, TAGS)) and isinstance(o, str) and is_object_id(o)
                for r, o in refs.items()
            ):
                raise NmkevcError(f"{self.url}: the bundle's ref list is corrupt")
            for r in refs:
                check_ref_name(r.split("/", 2)[2], "ref")
            head = m.get("head")
            if head is not None and (not isinstance(head, str) or HEADS + head not in refs):
                raise NmkevcError(f"{self.url}: the bundle's head is not one of its branches")
            bases = m.get("bases") if m.get("bases") is not None else {}
            if not isinstance(bases, dict) or not all(isinstance(v, dict) for v in bases.values()):
                raise NmkevcError(f"{self.url}: the bundle's list of bases is corrupt")
            self._manifest = m
        return self._manifest

    def exists(self) -> bool:
        self.manifest()
        return True

    def config(self) -> dict:
        return {"bases": self.manifest().get("bases") or {}}

    def head_branch(self) -> str | None:
        return self.manifest().get("head")

    def refs(self) -> dict[str, str]:
        return dict(self.manifest()["refs"])

    def get_objects(self, oids: list[str]) -> dict[str, bytes]:
        out = {}
        with self._zip() as z:
            for oid in oids:
                try:
                    out[oid] = self._read(z, _object_name(oid), MAX_ENTRY_BYTES)
                except KeyError:
                    raise NmkevcError(f"the bundle {self.url} lacks object {oid[:12]}") from None
        return out


def verify_bundle(url: str) -> BundleReport:
    """Check every object (caps, hash, kind, values) and that the refs' history is complete
    in the file, each id in one role only and each delta fitting its base."""
    reader = BundleReader(url)
    m = reader.manifest()
    problems: list[str] = []
    kinds: dict[str, str] = {}
    parsed: dict[str, object] = {}
    total = 0
    with reader._zip() as z:
        for info in z.infolist():
            if info.filename == MANIFEST or info.is_dir():
                continue
            oid = info.filename.replace("objects/", "", 1).replace("/", "")
            if not is_object_id(oid) or info.filename != _object_name(oid):
                problems.append(f"unexpected entry {info.filename[:80]}")
                continue
            try:
                data = reader._read(z, info.filename, MAX_ENTRY_BYTES)
                total += len(data)
                kind = peek_header(oid, data)[0]
                parsed[oid] = check_received(oid, data, kind)[1]
                kinds[oid] = kind
            except NmkevcError as e:
                problems.append(str(e))
    roles = ExpectedKinds(url)
    for ref, oid in m["refs"].items():
        stack, seen = [oid], set()
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            c = parsed.get(cur) if kinds.get(cur) == COMMIT_KIND else None
            if not isinstance(c, Commit):
                problems.append(f"{ref}: commit {cur[:12]} is missing or corrupt")
                continue
            stack.extend(c.parents)
            stack.extend(c.cancels)
            try:
                for p in (*c.parents, *c.cancels, cur):
                    roles.want(p, COMMIT_KIND)
                roles.want(c.base, BASE_KIND)
                if c.delta:
                    roles.want(c.delta, DELTA_KIND)
            except NmkevcError as e:
                problems.append(str(e))
                continue
            for o, want in ((c.base, BASE_KIND), (c.delta, DELTA_KIND)):
                if o and kinds.get(o) != want:
                    problems.append(f"{ref}: {want} {o[:12]} of commit {cur[:12]} is missing or corrupt")
            if c.delta and kinds.get(c.delta) == DELTA_KIND and kinds.get(c.base) == BASE_KIND:
                try:
                    check_delta_fits(parsed[c.delta], parsed[c.base], c.delta)
                except NmkevcError as e:
                    problems.append(str(e))
    problems = list(dict.fromkeys(problems))
    return BundleReport(url, dict(m["refs"]), m.get("head"), len(kinds), total, problems)
