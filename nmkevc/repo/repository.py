"""One repository on disk: its objects, refs, lock, history and caches of derived objects.

The only way above it to storage: porcelain and the model workbench speak to this layer,
never to storage/. It owns the ref namespaces (`namespaces`), the caches of a base and
their object kinds (`caches`), the materialised states (`materialised`) and what gc must
keep (`gc_roots`). It runs no model and imports nothing of models/ or editing/: loading,
verifying and running bases is the workbench's (nmkevc/workbench). Its caches (loaded
deltas, parsed manifests) belong to this object, never to the module.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..bases import BaseManifest, BaseSource
from ..errors import BaseMismatchError, NmkevcError, RefError
from ..history.commit import Commit
from ..history.dag import CommitGraph
from ..storage.faults import crash_point
from ..storage.fsutil import atomic_write, fsync_dir
from ..storage.lock import LockHolder, RepoLock
from ..storage.objects import BASE_KIND, COMMIT_KIND, DELTA_KIND, canonical_json, decode
from ..storage.refs import HEADS, Head, ReflogEntry, RefStore, check_ref_name
from ..storage.store import ObjectStore
from ..storage.temps import claimed_tempdir, make_init_dir, reap_claims, reap_init_dirs, remove_stale_temps
from .caches import BaseCaches
from .layout import REPO_DIR, RepoConfig, find_repo_dir, make_layout
from .materialised import MaterialisedCache
from .namespaces import ALL_REFS, branch_namespace, remote_namespace, tag_namespace
from .revisions import resolve_revision

if TYPE_CHECKING:
    from ..deltas.delta import Delta, WeightDelta
    from ..deltas.stored import Factors

# Deltas are imported where they are used: a verb that only moves refs (checkout, branch,
# log) then runs without loading torch, which alone takes ~1 s.

Progress = Callable[[int, int], None] | None
DELTA_CACHE_SIZE = 4096
#: deltas from which `factor_plan` reads on several threads (a short history is read too soon to split)
PARALLEL_READS = 32


class Repo:
    def __init__(self, repo_dir: Path, wait: float | None = None,
                 on_lock_wait: Callable[[LockHolder], None] | None = None):
        """`wait`: seconds a writer waits for a busy lock (None: the config's `lock_wait`
        setting, else 0 = refuse at once; math.inf: forever); `on_lock_wait` is told who
        holds it when waiting starts."""
        self.dir = Path(repo_dir)
        self.root = self.dir.parent
        self.store = ObjectStore(self.dir / "objects")
        self.refs = RefStore(self.dir)
        self.config = RepoConfig.load(self.dir / "config.json")
        self.lock = RepoLock(self.dir / "lock", wait=self.config.lock_wait if wait is None else wait,
                             on_wait=on_lock_wait)
        self.graph = CommitGraph(self._load_commit)
        self.branch_refs = branch_namespace(self.refs)
        self.tag_refs = tag_namespace(self.refs)
        self.remote_refs = remote_namespace(self.refs)
        self.caches = BaseCaches(self.store, self.refs)
        self.materialised = MaterialisedCache(self.dir / "cache")
        self._deltas: OrderedDict[str, Delta] = OrderedDict()
        self._manifests: dict[str, BaseManifest] = {}

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path = ".", wait: float | None = None,
             on_lock_wait: Callable[[LockHolder], None] | None = None) -> Repo:
        return cls(find_repo_dir(Path(path)), wait=wait, on_lock_wait=on_lock_wait)

    @classmethod
    def create(cls, path: str | Path, source: BaseSource, manifest: BaseManifest, hash_cache: dict | None = None,
               branch: str = "main", message: str | None = None, settings: dict | None = None) -> Repo:
        """Make `.nmkevc` with the base recorded and a root commit on `branch`. The manifest
        (and the file hashes that made it) come from the caller, who read the base's files."""
        root = Path(path)
        made = _missing_ancestors(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NmkevcError(f"cannot create {root}: {e.strerror or e}") from None
        try:
            return cls._create_in(root, source, manifest, hash_cache, branch, message, settings)
        except BaseException:
            for d in made:  # a failed init leaves no directory it created (only empty ones go)
                try:
                    d.rmdir()
                except OSError:
                    break
            raise

    @classmethod
    def _create_in(cls, root: Path, source: BaseSource, manifest: BaseManifest, hash_cache: dict | None,
                   branch: str, message: str | None, settings: dict | None) -> Repo:
        repo_dir = root / REPO_DIR
        if (repo_dir / "config.json").exists():
            raise NmkevcError(f"{root} is already an nmkevc repository")
        if repo_dir.exists() or repo_dir.is_symlink():
            raise NmkevcError(f"{repo_dir} exists but is not an nmkevc repository; move it away first")
        if not os.access(root, os.W_OK | os.X_OK):
            raise NmkevcError(f"cannot create a repository in {root}: permission denied")
        check_ref_name(branch)
        reap_init_dirs(root)
        tmp = make_init_dir(root)
        lock = RepoLock(tmp / "lock")
        try:
            lock.acquire()  # marks the half-built repository as alive (see storage/temps.py)
            os.chmod(tmp, 0o755)
            make_layout(tmp)
            store = ObjectStore(tmp / "objects")
            base_id = store.put(BASE_KIND, manifest.to_bytes())
            RepoConfig(bases={base_id: source}, settings=dict(settings or {})).save(tmp / "config.json")
            atomic_write(tmp / "cache" / "hashes.json", json.dumps(hash_cache or {}).encode())
            root_commit = Commit(
                kind="init",
                parents=(),
                base=base_id,
                message=message or f"Initial commit: base {source.describe()}",
                author=default_author(),
                time=int(time.time()),
            )
            cid = store.put(COMMIT_KIND, root_commit.to_bytes())
            refs = RefStore(tmp)
            refs.set(HEADS + branch, cid, "init")
            atomic_write(tmp / "HEAD", f"ref: {HEADS}{branch}\n".encode())
            fsync_dir(tmp)
            crash_point("init")
            os.rename(tmp, repo_dir)  # the repository appears whole or not at all
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            lock.release()
        return cls(repo_dir)

    # -- locking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the repository lock while objects are written and refs moved."""
        with self.lock:
            yield

    @contextlib.contextmanager
    def staging_dir(self, target: Path, what: str) -> Iterator[Path]:
        """A hidden directory beside `target` to fill; on a clean exit it is fsynced and
        renamed onto `target` (absent or empty), so the result appears whole or not at
        all. If the process dies instead, `gc` finds the directory by its claim and
        removes it."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with claimed_tempdir(self.dir, target.parent, f".{target.name}.", f".{what}") as tmp:
            yield tmp
            fsync_dir(tmp)
            crash_point(what)
            if target.exists():
                target.rmdir()
            os.rename(tmp, target)
            fsync_dir(target.parent)

    # -- objects -------------------------------------------------------------------------
    def _load_commit(self, oid: str) -> Commit:
        return Commit.from_bytes(self.store.get(oid, COMMIT_KIND), oid)

    def read_object(self, oid: str) -> tuple[str, bytes]:
        """(kind, payload) of any object, verified against its id."""
        return decode(self.store.read_raw(oid))  # verified as it was read

    def is_commit(self, oid: str) -> bool:
        try:
            return self.store.kind(oid) == COMMIT_KIND
        except NmkevcError:
            return False

    def commit(self, oid: str) -> Commit:
        return self.graph.commit(oid)

    def delta(self, oid: str) -> Delta:
        d = self._deltas.get(oid)
        if d is None:
            from ..deltas.delta import Delta

            d = Delta.from_bytes(self.store.get(oid, DELTA_KIND), oid)
            self._deltas[oid] = d
            while len(self._deltas) > DELTA_CACHE_SIZE:
                self._deltas.popitem(last=False)
        else:
            self._deltas.move_to_end(oid)
        return d

    def factors(self, oid: str) -> tuple[Factors, ...]:
        """Each weight's factors of delta `oid`, for what only sums them: the held delta's own,
        else read without torch and without its keys, and not kept (a long history's export)."""
        d = self._deltas.get(oid)
        if d is not None:
            return d.weights
        from ..deltas.stored import read_factors

        return read_factors(self.store.get(oid, DELTA_KIND), oid)

    def put_delta(self, delta: Delta) -> str:
        oid = self.store.put(DELTA_KIND, delta.to_bytes())
        self._deltas[oid] = delta
        return oid

    def manifest(self, base_id: str) -> BaseManifest:
        m = self._manifests.get(base_id)
        if m is None:
            m = BaseManifest.from_bytes(self.store.get(base_id, BASE_KIND))
            self._manifests[base_id] = m
        return m

    # -- revisions -----------------------------------------------------------------------
    def head(self) -> Head:
        return self.refs.head()

    def resolve(self, rev: str = "HEAD") -> str:
        return resolve_revision(rev, self.refs, self.store, self.graph, self.is_commit)

    def branches(self) -> dict[str, str]:
        return self.branch_refs.list()

    def tags(self) -> dict[str, str]:
        return self.tag_refs.list()

    def remote_branches(self) -> dict[str, str]:
        """{"<remote>/<branch>": commit} as last fetched or pushed."""
        return self.remote_refs.list()

    def reflog(self, ref: str = "HEAD") -> list[ReflogEntry]:
        """Where a full ref name (or HEAD) has pointed, oldest first."""
        return self.refs.reflog(ref)

    # -- maintenance ---------------------------------------------------------------------
    def gc_roots(self) -> set[str]:
        """What gc keeps, with all it reaches: every ref (branches, tags, caches), HEAD, the bases.

        A ref that cannot be read is skipped here; fsck reports it."""
        roots: set[str] = set()
        with contextlib.suppress(NmkevcError):
            roots |= set(self.refs.list(ALL_REFS).values())
        with contextlib.suppress(NmkevcError):
            h = self.head().commit
            if h:
                roots.add(h)
        roots |= set(self.config.bases)
        return roots

    def remove_stale_temps(self) -> int:
        """Delete temp files an interrupted write left in the repository; returns how many.
        Only under the lock (a live writer's temp file would go too)."""
        return remove_stale_temps(self.dir)

    def remove_leftover_dirs(self) -> int:
        """Delete directories of killed commands that are provably ours and dead: exports
        whose claim nobody holds, half-built repositories of killed inits beside this one."""
        return reap_claims(self.dir) + reap_init_dirs(self.root)

    # -- the effective set ---------------------------------------------------------------
    def effective(self, cid: str) -> list[str]:
        return self.graph.active(cid)

    def plan(self, cid: str) -> dict[str, list[tuple[str, WeightDelta]]]:
        """weight name → [(delta id, weight delta)] in canonical order, for commit cid."""
        return self.plan_of(self.effective(cid))

    def delta_ids(self, commits: list[str], extra: Sequence[str] = ()) -> list[str]:
        """Delta ids of an ordered commit list, plus stored deltas not yet committed."""
        return [d for _, d in self.graph.deltas_of(commits)] + [d for d in extra]

    def plan_of(self, commits: list[str], extra: Sequence[str] = ()) -> dict[str, list[tuple[str, WeightDelta]]]:
        """The plan of any effective set (e.g. a merge not yet committed), plus extra deltas."""
        out: dict[str, list[tuple[str, WeightDelta]]] = {}
        for did in self.delta_ids(commits, extra):
            for w in self.delta(did).weights:
                out.setdefault(w.name, []).append((did, w))
        return out

    def factor_plan(self, commits: list[str], extra: Sequence[str] = ()) -> dict[str, list[Factors]]:
        """weight name → its deltas' factors in canonical order (`plan_of` for sums only, read
        by `factors`: no torch, no keys)."""
        ids = self.delta_ids(commits, extra)
        if len(ids) < PARALLEL_READS:
            read = map(self.factors, ids)
        else:  # reading, decompressing and hashing release the GIL: a long history's read splits
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                read = list(pool.map(self.factors, ids))
        out: dict[str, list[Factors]] = {}
        for factors in read:
            for w in factors:
                out.setdefault(w.name, []).append(w)
        return out

    def state_key(self, base_id: str, commits: list[str], extra: Sequence[str] = ()) -> str:
        """An id of a model state: the base and the ordered deltas in effect."""
        return hashlib.sha256(canonical_json([base_id, self.delta_ids(commits, extra)])).hexdigest()

    # -- bases ---------------------------------------------------------------------------
    def base_source(self, base_id: str) -> BaseSource:
        try:
            return self.config.bases[base_id]
        except KeyError:
            raise BaseMismatchError(f"the repository has no location for base {base_id[:12]}") from None

    def record_base(self, source: BaseSource, read_manifest: Callable[[], BaseManifest]) -> str:
        """Record another base (e.g. for an orphan branch on a newer model); `read_manifest`
        hashes its files, under the lock."""
        with self.writing():
            base_id = self.store.put(BASE_KIND, read_manifest().to_bytes())
            self.config.bases[base_id] = source
            self.config.save(self.dir / "config.json")
            return base_id

    def move_base(self, base_id: str, source: BaseSource, verify: Callable[[], object]) -> None:
        """Point a recorded base at a new location once `verify` (which reads it there
        against the manifest) has passed; on failure the old location stays."""
        with self.writing():
            if base_id not in self.config.bases:
                raise NmkevcError(f"unknown base {base_id[:12]}")
            old = self.config.bases[base_id]
            self.config.bases[base_id] = source
            try:
                verify()
            except NmkevcError:
                self.config.bases[base_id] = old
                raise
            self.config.save(self.dir / "config.json")

    # -- writing -------------------------------------------------------------------------
    def write_commit(self, commit: Commit) -> str:
        for p in commit.parents:
            if not self.is_commit(p):
                raise RefError(f"parent {p[:12]} is not a commit")
        return self.store.put(COMMIT_KIND, commit.to_bytes())

    def advance_head(self, commit: Commit, reflog: str) -> str:
        """Write a commit whose first parent is HEAD and move HEAD (or its branch) to it."""
        with self.writing():
            head = self.head()
            if commit.parents[:1] != ((head.commit,) if head.commit else ()):
                raise RefError("HEAD moved while the command ran; nothing was changed")
            cid = self.write_commit(commit)
            self.refs.update_head(cid, reflog)
        return cid


def _missing_ancestors(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    out = []
    d = Path(os.path.abspath(path))
    while not d.exists() and d != d.parent:
        out.append(d)
        d = d.parent
    return out


def default_author() -> str:
    env = os.environ.get("NMKEVC_AUTHOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
