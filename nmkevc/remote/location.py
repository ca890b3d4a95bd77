"""A repository at a URL, read and written through fsspec.

The layout is the on-disk one: `objects/ab/cdef…` (zstandard-compressed, named by
id), `refs/…` (one id per file), `HEAD` and `config.json`. The URL names either a
working repository (its `.nmkevc` directory is used) or a bare layout (what `push`
creates at an empty URL). Any fsspec URL works: a local path, file://, s3://, gs://,
hf://…; credentials come from the backend's own mechanisms (environment, its config
files), never from the repository.

Writes keep a reader safe at every moment: an object is complete before its name
exists (a rename on local disks and file systems with one, a single PUT on object
stores, where a PUT is atomic), and refs are written only after the objects they
reach, each compared against the value read before (compare-and-swap).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
import uuid
from collections.abc import Callable, Iterator

from ..errors import NmkevcError, RefError
from ..repo.layout import REPO_DIR
from ..storage.fsutil import atomic_write
from ..storage.lock import LockHolder, RepoLock
from ..storage.objects import is_object_id
from ..storage.refs import HEADS

#: Stores whose single write is atomic (a reader never sees a partial object): object
#: stores' PUT, and the Hugging Face Hub, where every write is a commit. Elsewhere a write
#: goes to a temporary name and is renamed.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf", "memory"})
#: Objects read or written per request batch (async backends run a batch concurrently).
BATCH = 32
#: Stores whose writes can be made conditional on what they replace (S3 and S3-compatible
#: servers: If-Match on the ETag read, If-None-Match "*" for a new name), which is how a ref
#: moves atomically there. Local paths get the same from the remote repository's lock.
CONDITIONAL_PROTOCOLS = frozenset({"s3", "s3a"})
#: The config setting that accepts ref updates without either (see RemoteRepo).
UNSAFE_PUSH_SETTING = "allow_unsafe_push"


class RemoteError(NmkevcError):
    pass


#: What a backend raises when it cannot do what was asked: OSError from most, and each
#: library's own types (botocore's NoCredentialsError, ...). Caught around backend calls
#: only, and reported in one line naming the remote.
_BACKEND_ERRORS = (Exception,)


def open_url(url: str):
    """(filesystem, root path) of a URL; a missing backend is a one-line error."""
    import fsspec.core

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except NmkevcError:
        raise
    except _BACKEND_ERRORS as e:
        raise RemoteError(f"cannot open {url}: {type(e).__name__}: {e}") from None
    return fs, path.rstrip("/") or "/"


def _precondition_failed(e: BaseException) -> bool:
    """A conditional write refused because the object changed (HTTP 412), or because
    another conditional write to it was in flight (409): someone else won the race."""
    if isinstance(e, FileExistsError):
        return True
    text = f"{e} {e.__cause__!r}"
    return any(k in text for k in ("PreconditionFailed", "pre-condition", "precondition",
                                   "ConditionalRequestConflict", "412", "409"))


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


class RemoteRepo:
    """The refs and objects of a repository at `url` (which may not exist yet)."""

    def __init__(self, url: str, allow_unsafe_push: bool = False):
        """`allow_unsafe_push`: write refs on a backend that offers no atomic conditional
        update (the user's opt-in; two pushes racing there can lose one's update)."""
        self.url = url
        self.fs, path = open_url(url)
        self.local = "file" in _protocols(self.fs) or "local" in _protocols(self.fs)
        self.atomic_put = bool(ATOMIC_PUT_PROTOCOLS & set(_protocols(self.fs)))
        #: refs are updated by a conditional write (S3's If-Match / If-None-Match)
        self.conditional = bool(CONDITIONAL_PROTOCOLS & set(_protocols(self.fs)))
        self.allow_unsafe_push = allow_unsafe_push
        inner = posixpath.join(path, REPO_DIR)
        self.root = path
        if self.local:
            self._no_symlink(inner)
        if self._exists(posixpath.join(inner, "config.json")):
            self.root = inner
        with contextlib.suppress(AttributeError):
            self.fs.invalidate_cache()

    # -- paths and low-level access ------------------------------------------------------
    def _p(self, *parts: str) -> str:
        path = posixpath.join(self.root, *parts)
        if self.local:
            self._no_symlink(path)
        return path

    def _no_symlink(self, path: str) -> None:
        """Refuse a path inside a local remote that passes through a symbolic link (objects/,
        refs/, a fan-out directory, a ref...): a write through it would land outside the
        remote, a read would bring in a file it does not hold. The root itself is the user's."""
        rel = posixpath.relpath(path, self.root)
        if rel == "." or rel.startswith(".."):
            return
        cur = self.root
        for part in rel.split("/"):
            cur = posixpath.join(cur, part)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                return
            except OSError as e:
                raise RemoteError(f"cannot reach {cur}: {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                raise RemoteError(f"{posixpath.relpath(cur, self.root)} in the remote {self.url} is a symbolic "
                                  "link; nmkevc never follows one out of a repository")

    def _exists(self, path: str) -> bool:
        try:
            return bool(self.fs.exists(path))
        except _BACKEND_ERRORS as e:
            raise RemoteError(f"cannot reach {self.url}: {type(e).__name__}: {e}") from None

    def _read(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except _BACKEND_ERRORS as e:
            raise RemoteError(f"cannot read {path} at {self.url}: {type(e).__name__}: {e}") from None

    def _write(self, path: str, data: bytes) -> None:
        """Write so that `path` holds the old bytes or all the new ones, never a part."""
        try:
            if self.local:
                atomic_write(path, data)  # temp file, fsync, rename, fsync the directory
            elif self.atomic_put:
                self.fs.pipe_file(path, data)
            else:
                parent, name = posixpath.split(path)
                tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, path)
        except _BACKEND_ERRORS as e:
            raise RemoteError(f"cannot write {path} at {self.url}: {type(e).__name__}: {e}") from None

    # -- the repository ------------------------------------------------------------------
    def exists(self) -> bool:
        return self._exists(self._p("config.json"))

    def _config_json(self) -> dict | None:
        data = self._read(self._p("config.json"))
        if data is None:
            return None
        try:
            d = json.loads(data)
        except (ValueError, RecursionError):
            raise RemoteError(f"{self.url}: config.json is corrupt") from None
        if not isinstance(d, dict):
            raise RemoteError(f"{self.url}: config.json is corrupt")
        return d

    def config(self) -> dict:
        d = self._config_json()
        if d is None:
            raise RemoteError(f"{self.url} is not an nmkevc repository (no config.json)")
        bases = d.get("bases") if d.get("bases") is not None else {}
        if not isinstance(bases, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                                  for k, v in bases.items()):
            raise RemoteError(f"{self.url}: config.json is corrupt (its list of bases is not a mapping)")
        return {"bases": bases}

    def write_config(self, bases: dict[str, dict]) -> None:
        """Record where the bases live, keeping whatever else the remote's config holds
        (a working repository's own remotes and settings)."""
        from ..storage.objects import canonical_json

        path = self._p("config.json")
        before = self._read(path)
        d = self._config_json() if before is not None else None
        d = d or {"format": 1, "settings": {}}
        d["bases"] = dict(sorted(bases.items()))
        if not self._write_if(path, before, canonical_json(d)):
            raise RemoteError(f"config.json at {self.url} changed while pushing; try again")

    def head_branch(self) -> str | None:
        data = self._read(self._p("HEAD"))
        text = data.decode("utf-8", "replace").strip() if data else ""
        if text.startswith("ref: " + HEADS):
            return text[len("ref: " + HEADS):]
        return None

    def set_head_branch(self, branch: str) -> None:
        self._write(self._p("HEAD"), f"ref: {HEADS}{branch}\n".encode())

    @contextlib.contextmanager
    def locked(self, wait: float = 0.0, on_wait: Callable[[LockHolder], None] | None = None) -> Iterator[None]:
        """On a local path, hold the remote repository's own lock while writing to it,
        waiting for it as long as the local command would (`--wait`).

        Object stores have no lock; there the conditional write of each ref is the guard."""
        if not self.local:
            yield
            return
        self.fs.makedirs(self.root, exist_ok=True)
        with RepoLock(self._p("lock"), wait=wait, on_wait=on_wait):
            yield

    # -- refs ----------------------------------------------------------------------------
    def refs(self) -> dict[str, str]:
        """{full ref name: id} for everything under refs/."""
        base = self._p("refs")
        try:
            paths = self.fs.find(base)
        except FileNotFoundError:
            return {}
        except _BACKEND_ERRORS as e:
            raise RemoteError(f"cannot list refs at {self.url}: {type(e).__name__}: {e}") from None
        out: dict[str, str] = {}
        for path in sorted(paths):
            if self.local:
                self._no_symlink(path.rstrip("/"))
            rel = posixpath.relpath(path.rstrip("/"), base)
            if posixpath.basename(rel).startswith("."):
                continue
            oid = self.read_ref("refs/" + rel)
            if oid is not None:
                out["refs/" + rel] = oid
        return out

    def read_ref(self, ref: str) -> str | None:
        data = self._read(self._p(ref))
        if data is None:
            return None
        text = data.decode("utf-8", "replace").strip()
        if not is_object_id(text):
            raise RefError(f"remote ref {ref} at {self.url} is corrupt")
        return text

    def check_atomic_refs(self) -> None:
        """Refuse, before anything is sent, to push where a ref cannot move atomically
        (unless the user accepted the risk): there two pushes can both succeed and one
        commit silently vanish from the branch."""
        if self.local or self.conditional or self.allow_unsafe_push:
            return
        proto = "/".join(_protocols(self.fs))
        raise RemoteError(f"{self.url}: the {proto} backend offers no atomic ref update, so a push racing "
                          f"another could silently drop a commit; to push anyway set "
                          f'"settings": {{"{UNSAFE_PUSH_SETTING}": true}} in .nmkevc/config.json')

    def compare_and_set_ref(self, ref: str, expected: str | None, new: str) -> None:
        """Move `ref` to `new` only if it still holds `expected`, atomically: under the
        remote's lock on a path, by a conditional write on S3; refuse if someone moved it."""
        self.check_atomic_refs()
        path = self._p(ref)
        data = self._read(path)
        now = self.read_ref(ref) if data is not None else None
        ok = now == expected and self._write_if(path, data, (new + "\n").encode())
        if not ok:
            now = self.read_ref(ref)
            raise RemoteError(
                f"{ref} at {self.url} changed while pushing (now {str(now)[:10]}, expected "
                f"{str(expected)[:10]}); fetch and try again"
            )

    def _write_if(self, path: str, before: bytes | None, data: bytes) -> bool:
        """Write `data` at `path` if it still holds `before` (None: absent); False if not.

        On S3 the write carries the precondition, so the check and the write are one
        request; on a local path the caller holds the remote's lock; elsewhere (the user
        opted in) it is a read then a write."""
        if not self.conditional:
            if self._read(path) != before:
                return False
            self._write(path, data)
            return True
        try:
            if before is None:
                self.fs.pipe_file(path, data, IfNoneMatch="*")
                return True
            with contextlib.suppress(AttributeError):
                self.fs.invalidate_cache(path)
            etag = self.fs.info(path).get("ETag")
            if not etag or self._read(path) != before:
                return False
            self.fs.pipe_file(path, data, IfMatch=etag)
            return True
        except FileNotFoundError:
            return False
        except _BACKEND_ERRORS as e:
            if _precondition_failed(e):
                return False
            raise RemoteError(f"cannot write {path} at {self.url}: {type(e).__name__}: {e}") from None

    # -- objects -------------------------------------------------------------------------
    def object_path(self, oid: str) -> str:
        return self._p("objects", oid[:2], oid[2:])

    def object_ids(self) -> set[str]:
        """Every object id present (one listing; skips temp files of interrupted writes)."""
        base = self._p("objects")
        try:
            paths = self.fs.find(base)
        except FileNotFoundError:
            return set()
        except _BACKEND_ERRORS as e:
            raise RemoteError(f"cannot list objects at {self.url}: {type(e).__name__}: {e}") from None
        out = set()
        for path in paths:
            parent, name = posixpath.split(path.rstrip("/"))
            oid = posixpath.basename(parent) + name
            if is_object_id(oid):
                out.add(oid)
        return out

    def get_objects(self, oids: list[str]) -> dict[str, bytes]:
        """Compressed bytes of objects (a batch read concurrently where the backend can)."""
        paths = {self.object_path(o): o for o in oids}
        by_key = {p.strip("/"): o for p, o in paths.items()}
        try:
            got = self.fs.cat(list(paths), on_error="return")
        except _BACKEND_ERRORS as e:
            raise RemoteError(f"cannot read objects at {self.url}: {type(e).__name__}: {e}") from None
        out = {}
        for path, data in got.items():
            oid = by_key.get(path.strip("/"))
            if oid is None:
                continue
            if isinstance(data, BaseException):
                raise RemoteError(f"object {oid[:12]} is missing at {self.url}")
            out[oid] = data
        missing = [o for o in oids if o not in out]
        if missing:
            raise RemoteError(f"object {missing[0][:12]} is missing at {self.url}")
        return out

    def put_object(self, oid: str, data: bytes) -> None:
        self._write(self.object_path(oid), data)

    def describe(self) -> str:
        return self.url
