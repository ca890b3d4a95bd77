"""One repository: the objects, refs and lock on disk, and the models they describe.

Everything a porcelain verb needs, and nothing about how verbs combine: porcelain speaks
to this layer, never to storage. The layer owns the ref namespaces (`namespaces`), the
caches of a base and their object kinds (`caches`) and what gc must keep (`gc_roots`).
Caches (loaded deltas, verified bases, the live model) belong to this object, never to
the module. Models are handed out as `ModelState` handles at a state: the shared live
model moves only when someone asks for another state, and the base is read from a
model of its own, so reading it never moves the live one.
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

from ..corpus import Corpus, load_corpus
from ..errors import BaseMismatchError, NmkevcError, RefError
from ..history.commit import Commit
from ..history.dag import CommitGraph
from ..models.runtime import Runtime
from ..models.source import BaseSource, resolve_dir
from ..storage.faults import crash_point
from ..storage.fsutil import atomic_write, fsync_dir
from ..storage.lock import LockHolder, RepoLock
from ..storage.objects import canonical_json, decode
from ..storage.refs import HEADS, Head, ReflogEntry, RefStore, check_ref_name
from ..storage.store import ObjectStore
from ..storage.temps import claimed_tempdir, make_init_dir, reap_claims, reap_init_dirs, remove_stale_temps
from ..tensorio import TensorSpec, dtype_name, tensor_buffer
from .caches import BaseCaches
from .layout import REPO_DIR, RepoConfig, find_repo_dir, make_layout
from .materialised import MIN_DELTAS, MaterialisedCache
from .namespaces import ALL_REFS, branch_namespace, remote_namespace, tag_namespace
from .revisions import resolve_revision

if TYPE_CHECKING:
    import torch

    from ..deltas.delta import Delta, WeightDelta
    from ..models.live import LiveModel, ModelState
    from ..models.manifest import BaseManifest
    from ..models.weights import BaseWeights

# Deltas, manifests and models are imported where they are used: a verb that only moves
# refs (checkout, branch, log) then runs without loading torch, which alone takes ~1 s.

Progress = Callable[[int, int], None] | None
DELTA_CACHE_SIZE = 4096
#: Object kinds of history (the caches' kinds are in `caches`).
COMMIT_KIND, DELTA_KIND, BASE_KIND = "commit", "delta", "base"


class Repo:
    def __init__(self, repo_dir: Path, wait: float | None = None,
                 on_lock_wait: Callable[[LockHolder], None] | None = None, runtime: Runtime | None = None):
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
        self._verified: dict[str, Path] = {}
        self._live: LiveModel | None = None
        self._live_base: str | None = None
        self._base_model: tuple[str, LiveModel] | None = None
        self._corpora: dict[str, Corpus] = {}
        self._tokenizers: dict[str, object] = {}
        #: where and in which dtype models run: the caller's choice, else the repository's default
        self.runtime = runtime or Runtime(**{k: self.config.settings[k] for k in ("device", "dtype")
                                             if k in self.config.settings})

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path = ".", wait: float | None = None,
             on_lock_wait: Callable[[LockHolder], None] | None = None, runtime: Runtime | None = None) -> Repo:
        return cls(find_repo_dir(Path(path)), wait=wait, on_lock_wait=on_lock_wait, runtime=runtime)

    @classmethod
    def create(cls, path: str | Path, source: BaseSource, progress: Progress = None,
               branch: str = "main", message: str | None = None, runtime: Runtime | None = None) -> Repo:
        """Make `.nmkevc` with the base recorded and a root commit on `branch`."""
        root = Path(path)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NmkevcError(f"cannot create {root}: {e.strerror or e}") from None
        repo_dir = root / REPO_DIR
        if (repo_dir / "config.json").exists():
            raise NmkevcError(f"{root} is already an nmkevc repository")
        if repo_dir.exists() or repo_dir.is_symlink():
            raise NmkevcError(f"{repo_dir} exists but is not an nmkevc repository; move it away first")
        if not os.access(root, os.W_OK | os.X_OK):
            raise NmkevcError(f"cannot create a repository in {root}: permission denied")
        check_ref_name(branch)
        from ..models.manifest import build_manifest

        model_dir = resolve_dir(source, progress=progress)
        hash_cache: dict = {}
        manifest = build_manifest(model_dir, progress=progress, hash_cache=hash_cache)
        reap_init_dirs(root)
        tmp = make_init_dir(root)
        lock = RepoLock(tmp / "lock")
        try:
            lock.acquire()  # marks the half-built repository as alive (see storage/temps.py)
            os.chmod(tmp, 0o755)
            make_layout(tmp)
            store = ObjectStore(tmp / "objects")
            base_id = store.put(BASE_KIND, manifest.to_bytes())
            settings = {} if runtime is None else {"device": runtime.device, "dtype": runtime.dtype}
            RepoConfig(bases={base_id: source}, settings=settings).save(tmp / "config.json")
            atomic_write(tmp / "cache" / "hashes.json", json.dumps(hash_cache).encode())
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
        repo = cls(repo_dir)
        repo._verified[base_id] = model_dir
        return repo

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
        return decode(self.store.read_raw(oid), oid)

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

    def put_delta(self, delta: Delta) -> str:
        oid = self.store.put(DELTA_KIND, delta.to_bytes())
        self._deltas[oid] = delta
        return oid

    def manifest(self, base_id: str) -> BaseManifest:
        m = self._manifests.get(base_id)
        if m is None:
            from ..models.manifest import BaseManifest

            m = BaseManifest.from_bytes(self.store.get(base_id, BASE_KIND))
            self._manifests[base_id] = m
        return m

    def corpus(self, path: str | Path | None = None) -> Corpus:
        """A text corpus (None = the shipped one), read and hashed once per repository object."""
        key = str(Path(path).resolve()) if path is not None else ""
        if key not in self._corpora:
            self._corpora[key] = load_corpus(path)
        return self._corpora[key]

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

    def state_key(self, base_id: str, commits: list[str], extra: Sequence[str] = ()) -> str:
        """An id of a model state: the base and the ordered deltas in effect."""
        return hashlib.sha256(canonical_json([base_id, self.delta_ids(commits, extra)])).hexdigest()

    def materialise(self, base_id: str, commits: list[str], weights: BaseWeights,
                    extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """{weight name: base + Σ its deltas, in the base dtype} for every weight the state
        edits, as `apply_to_weight` computes it; a long history's result is kept in the
        materialised cache and read back from there (checked against the base's specs)."""
        key = self.state_key(base_id, commits, extra)
        cached = self._cached_state(key, weights)
        if cached is not None:
            return MaterialisedCache.tensors(cached)
        return self._compute_state(key, base_id, commits, weights, extra)

    def materialised_buffers(self, base_id: str, commits: list[str], weights: BaseWeights) -> dict[str, object]:
        """{weight name: its bytes} of `materialise`, where a cached state is read without
        loading torch at all (an export of a long, cached history starts in well under a
        second: docs/benchmarks.md)."""
        key = self.state_key(base_id, commits)
        cached = self._cached_state(key, weights)
        if cached is not None:
            return {name: buf for name, (_, buf) in cached.items()}
        return {name: tensor_buffer(t) for name, t in self._compute_state(key, base_id, commits, weights).items()}

    def _cached_state(self, key: str, weights: BaseWeights) -> dict | None:
        """The cache's {name: (spec, bytes)} for `key`, if every tensor fits this base's weight."""
        raw = self.materialised.get_raw(key)
        if raw is None or not all(_fits(weights, name, spec) for name, (spec, _) in raw.items()):
            return None
        return raw

    def _compute_state(self, key: str, base_id: str, commits: list[str], weights: BaseWeights,
                       extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        from ..deltas.compose import apply_to_weight

        plan = self.plan_of(commits, extra)
        out = {name: apply_to_weight(weights.get(name), [w for _, w in entries])
               for name, entries in sorted(plan.items())}
        if len(self.delta_ids(commits, extra)) >= MIN_DELTAS:
            self.materialised.put(key, out)
        return out

    def keep_live_state(self, cid: str) -> bool:
        """Put the live model's edited weights into the materialised cache when it holds cid's
        state (as it does right after an edit's checks), so the first export or fresh load of
        a long history reads them instead of recomputing every delta. Only where the model
        runs at the base's dtype (its weights are then exactly `materialise`'s sums); best
        effort, as the cache itself. True when a state was stored."""
        live, base_id = self._live, self.commit(cid).base
        commits = self.effective(cid)
        key = self.state_key(base_id, commits)
        if live is None or self._live_base != base_id or live.state_key != key \
                or len(self.delta_ids(commits)) < MIN_DELTAS or self.materialised.path(key).exists():
            return False
        out = {}
        for name in self.plan_of(commits):
            t = live.parameter(name).detach()
            if dtype_name(t.dtype) != live.weights.spec(name).dtype:
                return False
            out[name] = t.cpu()
        self.materialised.put(key, out)
        return True

    def keys_cov(self, commits: list[str], weight_names: list[str],
                 extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """C_l = Σ K Kᵀ over the keys stored with the deltas of an effective set."""
        out: dict[str, torch.Tensor] = {}
        plan = self.plan_of(commits, extra)
        for name in weight_names:
            acc = None
            for _, w in plan.get(name, ()):
                if w.K is None:
                    continue
                k = w.K.double()
                acc = k @ k.T if acc is None else acc + k @ k.T
            if acc is not None:
                out[name] = acc.float()
        return out

    # -- bases ---------------------------------------------------------------------------
    def base_source(self, base_id: str) -> BaseSource:
        try:
            return self.config.bases[base_id]
        except KeyError:
            raise BaseMismatchError(f"the repository has no location for base {base_id[:12]}") from None

    def base_dir(self, base_id: str, progress: Progress = None, full: bool = False) -> Path:
        """The base's directory, verified tensor by tensor against its manifest.

        The fast path trusts the hash cache for a tensor file whose (path, size, mtime,
        inode) is unchanged; config and tokenizer files are always re-read. `full`
        rehashes every tensor and refreshes the cache with what it finds."""
        if base_id in self._verified and not full:
            return self._verified[base_id]
        from ..models.manifest import build_manifest

        source = self.base_source(base_id)
        model_dir = resolve_dir(source, progress=progress)
        cache_path = self.dir / "cache" / "hashes.json"
        try:
            hash_cache = json.loads(cache_path.read_text("utf-8"))
            if not isinstance(hash_cache, dict):
                hash_cache = {}
        except (OSError, ValueError):
            hash_cache = {}
        fresh: dict = {} if full else hash_cache
        found = build_manifest(model_dir, progress=progress, hash_cache=fresh)
        if full:
            hash_cache.update(fresh)  # what the files hold now replaces what was trusted
        with contextlib.suppress(OSError):
            atomic_write(cache_path, json.dumps(hash_cache).encode(), what="cache")
        want = self.manifest(base_id)
        problem = _manifest_difference(want, found)
        if problem:
            self._verified.pop(base_id, None)
            raise BaseMismatchError(
                f"the base at {source.describe()} is not the one this repository was built on "
                f"({problem}); refusing to use it"
            )
        self._verified[base_id] = model_dir
        return model_dir

    def add_base(self, source: BaseSource) -> str:
        """Record another base (e.g. for an orphan branch on a newer model)."""
        from ..models.manifest import build_manifest

        with self.writing():
            manifest = build_manifest(resolve_dir(source))
            base_id = self.store.put(BASE_KIND, manifest.to_bytes())
            self.config.bases[base_id] = source
            self.config.save(self.dir / "config.json")
            return base_id

    def relocate_base(self, base_id: str, source: BaseSource) -> None:
        """Point a recorded base at a new location; the content must match."""
        with self.writing():
            if base_id not in self.config.bases:
                raise NmkevcError(f"unknown base {base_id[:12]}")
            old = self.config.bases[base_id]
            self.config.bases[base_id] = source
            self._verified.pop(base_id, None)
            try:
                self.base_dir(base_id)
            except NmkevcError:
                self.config.bases[base_id] = old
                raise
            self.config.save(self.dir / "config.json")

    def tokenizer(self, base_id: str):
        """The base's tokenizer, without loading its weights (for checks made before any
        forward pass); a loaded model's own when there is one."""
        loaded = [(self._live_base, self._live), *([self._base_model] if self._base_model else [])]
        for bid, live in loaded:
            if live is not None and bid == base_id:
                return live.tokenizer
        tok = self._tokenizers.get(base_id)
        if tok is None:
            from ..models.loading import load_tokenizer

            tok = self._tokenizers[base_id] = load_tokenizer(self.base_dir(base_id))
        return tok

    def model_at(self, cid: str, progress: Progress = None) -> ModelState:
        """The model at commit cid: moving between commits rewrites only changed weights."""
        return self.model_of(self.commit(cid).base, self.effective(cid), progress=progress, label=cid[:12])

    def model_of(self, base_id: str, commits: list[str], extra: Sequence[str] = (),
                 progress: Progress = None, label: str | None = None) -> ModelState:
        """The model of any effective set (plus stored, uncommitted deltas), as a handle.

        The live model is shared: handles given out earlier for another state refuse use
        from now on (StaleModelError) rather than answer for this one."""
        from ..models.live import LiveModel, ModelState

        model_dir = self.base_dir(base_id, progress=progress)
        if self._live is None or self._live_base != base_id:
            self._live = None
            self._live = LiveModel.load(model_dir, runtime=self.runtime)
            self._live_base = base_id
        key = self.state_key(base_id, commits, extra)
        if self._live.state_key != key:
            # a fresh model rewrites every edited weight: a long history's come from (and go to)
            # the materialised cache; later moves rewrite only what changed, as before
            fresh = not self._live.applied and len(self.delta_ids(commits, extra)) >= MIN_DELTAS
            ready = self.materialise(base_id, commits, self._live.weights, extra) if fresh else None
            self._live.sync(self.plan_of(commits, extra), key, ready)
        return ModelState(self._live, key, label or "a revision")

    def base_model(self, base_id: str, progress: Progress = None) -> ModelState:
        """The unedited base, from a model of its own (loaded on first use, then kept with
        this object): statistics, context templates and base references read it without
        moving the live model anyone else holds."""
        from ..models.live import LiveModel, ModelState

        if self._base_model is None or self._base_model[0] != base_id:
            self._base_model = None
            key = self.state_key(base_id, [])
            self._base_model = (base_id, LiveModel.load(self.base_dir(base_id, progress=progress), key, frozen=True,
                                                       runtime=self.runtime))
        live = self._base_model[1]
        return ModelState(live, live.state_key or "", f"base {base_id[:12]}")

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


def default_author() -> str:
    env = os.environ.get("NMKEVC_AUTHOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _fits(weights: BaseWeights, name: str, spec: TensorSpec) -> bool:
    """A cached tensor stands for a weight of this base only with its name, dtype and shape."""
    try:
        want = weights.spec(name)
    except (NmkevcError, KeyError):
        return False
    return want.dtype == spec.dtype and tuple(want.shape) == tuple(spec.shape)


def _manifest_difference(want: BaseManifest, found: BaseManifest) -> str:
    if want.architecture != found.architecture:
        return f"architecture {found.architecture} != {want.architecture}"
    missing = sorted(set(want.tensors) - set(found.tensors))
    if missing:
        return f"tensor {missing[0]} is missing"
    for name, t in want.tensors.items():
        if found.tensors[name] != t:
            return f"tensor {name} differs"
    extra = sorted(set(found.tensors) - set(want.tensors))
    if extra:
        return f"unexpected tensor {extra[0]}"
    if want.tokenizer_sha256 != found.tokenizer_sha256:
        return "the tokenizer files differ"
    if want.config != found.config:
        return "config.json differs"
    return ""
