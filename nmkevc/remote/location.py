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
import posixpath
import uuid
from collections.abc import Iterator

from ..errors import NmkevcError, RefError
from ..repo.layout import REPO_DIR
from ..storage.fsutil import atomic_write
from ..storage.lock import RepoLock
from ..storage.objects import is_object_id
from ..storage.refs import HEADS

#: Stores whose single write is atomic (a reader never sees a partial object): object
#: stores' PUT, and the Hugging Face Hub, where every write is a commit. Elsewhere a write
#: goes to a temporary name and is renamed.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf", "memory"})
#: Objects read or written per request batch (async backends run a batch concurrently).
BATCH = 32


class RemoteError(NmkevcError):
    pass


def open_url(url: str):
    """(filesystem, root path) of a URL; a missing backend is a one-line error."""
    import fsspec.core

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise RemoteError(f"cannot open {url}: {e}") from None
    return fs, path.rstrip("/") or "/"


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


class RemoteRepo:
    """The refs and objects of a repository at `url` (which may not exist yet)."""

    def __init__(self, url: str):
        self.url = url
        self.fs, path = open_url(url)
        self.local = "file" in _protocols(self.fs) or "local" in _protocols(self.fs)
        self.atomic_put = bool(ATOMIC_PUT_PROTOCOLS & set(_protocols(self.fs)))
        inner = posixpath.join(path, REPO_DIR)
        self.root = inner if self._exists(posixpath.join(inner, "config.json")) else path
        with contextlib.suppress(AttributeError):
            self.fs.invalidate_cache()

    # -- paths and low-level access ------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _exists(self, path: str) -> bool:
        try:
            return bool(self.fs.exists(path))
        except OSError as e:
            raise RemoteError(f"cannot reach {self.url}: {type(e).__name__}: {e}") from None

    def _read(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except OSError as e:
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
        except OSError as e:
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
        except ValueError:
            raise RemoteError(f"{self.url}: config.json is corrupt") from None
        if not isinstance(d, dict):
            raise RemoteError(f"{self.url}: config.json is corrupt")
        return d

    def config(self) -> dict:
        d = self._config_json()
        if d is None:
            raise RemoteError(f"{self.url} is not an nmkevc repository (no config.json)")
        return {"bases": d.get("bases") or {}}

    def write_config(self, bases: dict[str, dict]) -> None:
        """Record where the bases live, keeping whatever else the remote's config holds
        (a working repository's own remotes and settings)."""
        from ..storage.objects import canonical_json

        d = self._config_json() or {"format": 1, "settings": {}}
        d["bases"] = dict(sorted(bases.items()))
        self._write(self._p("config.json"), canonical_json(d))

    def head_branch(self) -> str | None:
        data = self._read(self._p("HEAD"))
        text = data.decode("utf-8", "replace").strip() if data else ""
        if text.startswith("ref: " + HEADS):
            return text[len("ref: " + HEADS):]
        return None

    def set_head_branch(self, branch: str) -> None:
        self._write(self._p("HEAD"), f"ref: {HEADS}{branch}\n".encode())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """On a local path, hold the remote repository's own lock while writing to it.

        Object stores have no lock; there the compare-and-swap on each ref is the guard."""
        if not self.local:
            yield
            return
        self.fs.makedirs(self.root, exist_ok=True)
        with RepoLock(self._p("lock")):
            yield

    # -- refs ----------------------------------------------------------------------------
    def refs(self) -> dict[str, str]:
        """{full ref name: id} for everything under refs/."""
        base = self._p("refs")
        try:
            paths = self.fs.find(base)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise RemoteError(f"cannot list refs at {self.url}: {type(e).__name__}: {e}") from None
        out: dict[str, str] = {}
        for path in sorted(paths):
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

    def compare_and_set_ref(self, ref: str, expected: str | None, new: str) -> None:
        """Move `ref` to `new` if it still holds `expected`; refuse if someone moved it."""
        now = self.read_ref(ref)
        if now != expected:
            raise RemoteError(
                f"{ref} at {self.url} changed while pushing (now {str(now)[:10]}, expected "
                f"{str(expected)[:10]}); fetch and try again"
            )
        self._write(self._p(ref), (new + "\n").encode())

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
        except OSError as e:
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
        except OSError as e:
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
