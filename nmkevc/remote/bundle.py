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
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import NmkevcError, RefError
from ..history.commit import Commit
from ..repo.repository import Repo
from ..storage.fsutil import fsync_dir
from ..storage.objects import canonical_json, decode, is_object_id
from ..storage.refs import HEADS, TAGS, check_ref_name
from ..storage.store import decompress_object

MANIFEST = "nmkevc-bundle.json"
FORMAT = "nmkevc-bundle"
VERSION = 1


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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    total = 0
    try:
        with os.fdopen(fd, "wb") as fh:
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
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
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
        except zipfile.BadZipFile:
            raise NmkevcError(f"{self.url} is not a bundle (not a zip archive)") from None

    def manifest(self) -> dict:
        if self._manifest is None:
            with self._zip() as z:
                try:
                    m = json.loads(z.read(MANIFEST))
                except (KeyError, ValueError):
                    raise NmkevcError(f"{self.url} is not a bundle (no valid {MANIFEST})") from None
            if m.get("format") != FORMAT or m.get("version") != VERSION:
                raise NmkevcError(f"{self.url}: unsupported bundle format {m.get('format')!r} "
                                  f"version {m.get('version')!r}")
            refs = m.get("refs")
            if not isinstance(refs, dict) or not all(
                isinstance(r, str) and r.startswith((HEADS, TAGS)) and is_object_id(str(o))
                for r, o in refs.items()
            ):
                raise NmkevcError(f"{self.url}: the bundle's ref list is corrupt")
            for r in refs:
                check_ref_name(r.split("/", 2)[2], "ref")
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
                    out[oid] = z.read(_object_name(oid))
                except KeyError:
                    raise NmkevcError(f"the bundle {self.url} lacks object {oid[:12]}") from None
        return out


def verify_bundle(url: str) -> BundleReport:
    """Check every object against its id and that the refs' history is complete in the file."""
    reader = BundleReader(url)
    m = reader.manifest()
    problems: list[str] = []
    kinds: dict[str, str] = {}
    commits: dict[str, Commit] = {}
    total = 0
    with reader._zip() as z:
        for info in z.infolist():
            if info.filename == MANIFEST or info.is_dir():
                continue
            oid = info.filename.replace("objects/", "", 1).replace("/", "")
            if not is_object_id(oid):
                problems.append(f"unexpected entry {info.filename}")
                continue
            data = z.read(info)
            total += len(data)
            try:
                kind, payload = decode(decompress_object(oid, data), expected_id=oid)
                kinds[oid] = kind
                if kind == "commit":
                    commits[oid] = Commit.from_bytes(payload, oid)
            except NmkevcError as e:
                problems.append(str(e))
    for ref, oid in m["refs"].items():
        stack, seen = [oid], set()
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            c = commits.get(cur)
            if c is None:
                problems.append(f"{ref}: commit {cur[:12]} is missing or corrupt")
                continue
            stack.extend(c.parents)
            for o, want in ((c.base, "base"), (c.delta, "delta")):
                if o and kinds.get(o) != want:
                    problems.append(f"{ref}: {want} {o[:12]} of commit {cur[:12]} is missing or corrupt")
    problems = list(dict.fromkeys(problems))
    return BundleReport(url, dict(m["refs"]), m.get("head"), len(kinds), total, problems)
