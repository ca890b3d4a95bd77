"""Moving history between repositories: fetch, push, clone.

Objects are content-addressed and immutable, so a transfer is git's: walk from the
refs being moved, stop where the other side already has the history, send only
what it lacks. Every received object is decompressed and checked against its id
before it is stored, and refs move only after every object they reach is in place,
so a transfer cut off at any moment leaves both sides valid (at worst with a few
unreferenced objects) and the next run picks up where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import CorruptObjectError, NmkevcError, RefError
from ..history.commit import Commit
from ..repo.layout import REPO_DIR, RepoConfig, base_source, make_layout
from ..repo.namespaces import CONTEXT, REMOTES, STATS
from ..repo.repository import Repo
from ..storage.objects import BASE_KIND, BLOB_KIND, COMMIT_KIND, DELTA_KIND, STATS_KIND, is_object_id
from ..storage.refs import HEADS, TAGS, check_ref_name
from .location import BATCH, UNSAFE_PUSH_SETTING, RemoteError, RemoteRepo
from .remotes import check_remote_name, remote_url
from .untrusted import ExpectedKinds, check_delta_fits, check_received

Progress = Callable[[int, int], None] | None


class Peer(Protocol):
    """What a transfer reads from the other side: a remote repository or a bundle."""

    def describe(self) -> str: ...
    def exists(self) -> bool: ...
    def config(self) -> dict: ...
    def head_branch(self) -> str | None: ...
    def refs(self) -> dict[str, str]: ...
    def get_objects(self, oids: list[str]) -> dict[str, bytes]: ...


def open_peer(url: str) -> Peer:
    """A bundle file or a repository at an fsspec URL."""
    from .bundle import BundleReader, is_bundle

    if is_bundle(url):
        return BundleReader(url)
    return RemoteRepo(url)


@dataclass
class RefUpdate:
    ref: str  # the ref moved (on the receiving side)
    old: str | None
    new: str | None
    status: str  # "new" | "fast-forward" | "forced" | "up-to-date" | "rejected" | "deleted"
    reason: str = ""


@dataclass
class TransferReport:
    url: str
    objects: int = 0
    bytes: int = 0
    updates: list[RefUpdate] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


# -- walking history ------------------------------------------------------------------------
def _ancestry(repo: Repo, oids: Iterable[str]) -> set[str]:
    """Commits reachable from local commits, all of them intact and their deltas and bases
    present. If anything on the way is damaged or missing, nothing is taken as known
    (empty set): the transfer then walks the whole history, checking every object here,
    which is how a fetch heals a damaged commit or a lost delta from a good peer."""
    out: set[str] = set()
    stack = [o for o in oids if o]
    while stack:
        oid = stack.pop()
        if oid in out:
            continue
        try:
            c = repo.commit(oid)
        except NmkevcError:
            return set()
        if not repo.store.exists(c.base) or (c.delta and not repo.store.exists(c.delta)):
            return set()
        out.add(oid)
        stack.extend(c.parents)
        stack.extend(c.cancels)
    return out


def _local_tips(repo: Repo) -> list[str]:
    tips = [oid for ref, oid in _all_refs(repo).items() if ref.startswith((HEADS, TAGS, REMOTES))]
    try:
        head = repo.head().commit
        if head:
            tips.append(head)
    except NmkevcError:
        pass
    return tips


def _all_refs(repo: Repo) -> dict[str, str]:
    return {"refs/" + name: oid for name, oid in repo.refs.list("refs/").items()}


def _commit_refs(c: Commit) -> tuple[list[str], list[str]]:
    """(commits, other objects) a commit needs: parents and cancelled commits; base and delta."""
    others = [c.base] + ([c.delta] if c.delta else [])
    return list(c.parents) + list(c.cancels), others


def _have(repo: Repo, oid: str, want: str, peer: Peer) -> bool:
    """The object is stored here, intact and of the kind the peer's history needs. Missing
    or damaged: False (it is fetched, and a damaged copy replaced). Present as another
    kind: the peer's history is refused."""
    if not repo.store.exists(oid):
        return False
    try:
        kind = repo.store.kind(oid)
    except NmkevcError:
        return False  # damaged here: take the peer's copy
    if kind != want:
        raise CorruptObjectError(f"{peer.describe()} names object {oid[:12]} as a {want}, "
                                 f"but it is a {kind} here; refusing the transfer")
    return True


_RECEIVE_ORDER = {BASE_KIND: 0, DELTA_KIND: 1, BLOB_KIND: 2, STATS_KIND: 3}


def _receive(repo: Repo, peer: Peer, todo: list[str], kinds: ExpectedKinds,
             delta_bases: dict[str, set[str]], report: TransferReport,
             tick: Callable[[int], None]) -> dict[str, object]:
    """Download objects, check each (hash, kind, caps, values; a delta against its bases,
    which are received first) and only then store it; returns the parsed deltas."""
    todo = sorted(todo, key=lambda o: (_RECEIVE_ORDER.get(kinds[o], 9), o))
    parsed: dict[str, object] = {}
    for i in range(0, len(todo), BATCH):
        chunk = todo[i : i + BATCH]
        got = peer.get_objects(chunk)
        for oid in chunk:  # in order: a delta's bases are stored before it is checked against them
            data = got.get(oid)
            if data is None:
                raise RemoteError(f"object {oid[:12]} is missing at {peer.describe()}")
            want = kinds[oid]
            _, obj = check_received(oid, data, want)
            if want == DELTA_KIND:
                for b in sorted(delta_bases.get(oid, ())):
                    check_delta_fits(obj, repo.manifest(b), oid)
                parsed[oid] = obj
            repo.store.put_verified(oid, data, want)
            report.objects += 1
            report.bytes += len(data)
            tick(1)
    return parsed


def fetch_objects(repo: Repo, peer: Peer, tips: list[str], extra: dict[str, str],
                  report: TransferReport, progress: Progress = None, heal: bool = False) -> None:
    """Bring every object reachable from `tips` (commits) and `extra` ({id: kind}) into repo.

    Everything received is untrusted until checked: each id gets one expected kind for
    the whole transfer (objects already here included), and each object is checked
    (storage caps, hash, kind, values) before it is stored. Commits are held in memory
    while the walk learns which deltas and bases they need; those are stored next, and
    the commits last, parents first. So a stored commit always has its parents, delta
    and base, and a fetch cut off or refused anywhere leaves a repository fsck passes.
    With `heal`, the walk does not stop at local history: every object is checked here
    and a missing or damaged one taken from the peer."""
    kinds = ExpectedKinds(peer.describe())
    for t in tips:
        kinds.want(t, COMMIT_KIND, "a ref")
    for o, k in extra.items():
        kinds.want(o, k, "a ref")
    have = set() if heal else _ancestry(repo, _local_tips(repo))
    done = [0]
    total = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], max(total[0], done[0]))

    pending: dict[str, tuple[bytes, Commit]] = {}
    seen: set[str] = set()
    delta_bases: dict[str, set[str]] = {}
    frontier = list(tips)
    while frontier:
        batch = list(dict.fromkeys(o for o in frontier if o not in seen and o not in have))
        seen.update(batch)
        missing = [o for o in batch if not _have(repo, o, COMMIT_KIND, peer)]
        total[0] += len(missing)
        got: dict[str, Commit] = {}
        for i in range(0, len(missing), BATCH):
            for oid, data in peer.get_objects(missing[i : i + BATCH]).items():
                if oid not in kinds:
                    continue
                _, c = check_received(oid, data, COMMIT_KIND)  # refused here if bad in any way
                got[oid] = c
                pending[oid] = (data, c)
                report.objects += 1
                report.bytes += len(data)
        frontier = []
        for oid in batch:
            c = got.get(oid) or repo.commit(oid)
            for p in c.parents:
                kinds.want(p, COMMIT_KIND, f"a parent of {oid[:12]}")
            for x in c.cancels:
                kinds.want(x, COMMIT_KIND, f"cancelled by {oid[:12]}")
            kinds.want(c.base, BASE_KIND, f"the base of {oid[:12]}")
            if c.delta:
                kinds.want(c.delta, DELTA_KIND, f"the delta of {oid[:12]}")
                delta_bases.setdefault(c.delta, set()).add(c.base)
            frontier.extend(c.parents)
            frontier.extend(c.cancels)
    others = [o for o, k in kinds.kinds.items() if k != COMMIT_KIND]
    todo = [o for o in others if not _have(repo, o, kinds[o], peer)]
    total[0] += len(todo)
    tick(len(pending))
    parsed = _receive(repo, peer, todo, kinds, delta_bases, report, tick)
    for _data, c in pending.values():  # a new commit on a delta already here: it must fit too
        if c.delta and c.delta not in parsed:
            check_delta_fits(repo.delta(c.delta), repo.manifest(c.base), c.delta)
    for oid in _parents_first(pending):
        repo.store.put_verified(oid, pending[oid][0], COMMIT_KIND)


def _parents_first(pending: dict[str, tuple[bytes, Commit]]) -> list[str]:
    order: list[str] = []
    placed: set[str] = set()
    for start in sorted(pending):
        stack = [(start, False)]
        while stack:
            oid, expanded = stack.pop()
            if oid in placed or oid not in pending:
                continue
            if expanded:
                placed.add(oid)
                order.append(oid)
                continue
            stack.append((oid, True))
            c = pending[oid][1]
            stack.extend((p, False) for p in (*c.parents, *c.cancels) if p not in placed)
    return order


def _push_order(repo: Repo, tips: list[str], known: set[str]) -> list[str]:
    """Objects reachable from tips but not from `known`: bases and deltas, then commits parents first."""
    commits: set[str] = set()
    for t in tips:
        commits |= repo.graph.ancestors(t) - known
    order = repo.graph.canonical_order(commits)
    others: list[str] = []
    for cid in order:
        for o in _commit_refs(repo.commit(cid))[1]:
            if o not in others:
                others.append(o)
    return others + order


# -- fetch ----------------------------------------------------------------------------------
def _cache_refs(peer_refs: dict[str, str], with_stats: bool) -> dict[str, tuple[str, str]]:
    """Cache refs that travel: context templates always (a few KB), statistics on request."""
    out = {}
    for ref, oid in peer_refs.items():
        if ref.startswith(CONTEXT):
            out[ref] = (oid, BLOB_KIND)
        elif with_stats and ref.startswith(STATS):
            out[ref] = (oid, STATS_KIND)
    return out


def fetch(repo: Repo, name: str, with_stats: bool = False, prune: bool = False,
          progress: Progress = None, peer: Peer | None = None) -> TransferReport:
    """Bring remote `name`'s branches to refs/remotes/NAME/*, its tags, and (optionally) its statistics."""
    check_remote_name(name)
    url = remote_url(repo, name)
    peer = peer or open_peer(url)
    report = TransferReport(url)
    with repo.writing():  # gc must not collect objects received before their refs are set
        if not peer.exists():
            raise RemoteError(f"{url} is not an nmkevc repository")
        peer_refs = _checked_refs(peer)
        heads = {r[len(HEADS):]: o for r, o in peer_refs.items() if r.startswith(HEADS)}
        tags = {r[len(TAGS):]: o for r, o in peer_refs.items() if r.startswith(TAGS)}
        caches = {r: v for r, v in _cache_refs(peer_refs, with_stats).items() if repo.refs.read(r) is None}
        fetch_objects(repo, peer, sorted(set(heads.values()) | set(tags.values())),
                      {oid: kind for oid, kind in caches.values()}, report, progress)
        _learn_bases(repo, peer)
        # every object is verified and stored: now, and only now, refs move
        track = REMOTES + name + "/"
        for branch, new in sorted(heads.items()):
            ref = track + branch
            old = repo.refs.read(ref)
            status = _ff_status(repo, old, new, allowed=True)
            if status != "up-to-date":
                repo.refs.set(ref, new, f"fetch {name}: {status}")
            report.updates.append(RefUpdate(ref, old, new, status))
        for tag, new in sorted(tags.items()):
            ref = TAGS + tag
            old = repo.refs.read(ref)
            if old is None:
                repo.refs.set(ref, new, f"fetch {name}")
                report.updates.append(RefUpdate(ref, None, new, "new"))
            elif old != new:
                report.updates.append(RefUpdate(ref, old, new, "rejected", "would clobber an existing tag"))
        for ref, (oid, _kind) in sorted(caches.items()):
            repo.refs.set(ref, oid, f"fetch {name}")
        if prune:
            for branch, old in sorted(repo.refs.list(track).items()):
                if branch not in heads:
                    repo.refs.delete(track + branch, f"fetch {name}: pruned")
                    report.updates.append(RefUpdate(track + branch, old, None, "deleted"))
    return report


def _checked_refs(peer: Peer) -> dict[str, str]:
    """The peer's refs, refused if a name could not be a ref here (or escape refs/)."""
    out = {}
    for ref, oid in peer.refs().items():
        prefix = next((p for p in (HEADS, TAGS, CONTEXT, STATS) if ref.startswith(p)), None)
        if prefix is None:
            continue  # namespaces we do not take (another side's remote-tracking refs)
        check_ref_name(ref[len(prefix):], "ref")
        if not is_object_id(oid):
            raise RefError(f"{peer.describe()}: ref {ref} does not hold an object id")
        out[ref] = oid
    return out


def _ff_status(repo: Repo, old: str | None, new: str, allowed: bool) -> str:
    if old is None:
        return "new"
    if old == new:
        return "up-to-date"
    if repo.is_commit(old) and repo.is_commit(new) and repo.graph.is_ancestor(old, new):
        return "fast-forward"
    return "forced" if allowed else "rejected"


def _learn_bases(repo: Repo, peer: Peer) -> None:
    """Record where the peer's bases live, for bases this repository has no location for."""
    changed = False
    for base_id, src in (peer.config().get("bases") or {}).items():
        if base_id not in repo.config.bases and repo.store.exists(base_id):
            try:
                repo.config.bases[base_id] = base_source(src)
                changed = True
            except (KeyError, TypeError):
                continue
    if changed:
        repo.config.save(repo.dir / "config.json")


# -- push -----------------------------------------------------------------------------------
def push_refspecs(repo: Repo, names: list[str]) -> dict[str, str]:
    """{remote ref: local commit} for branch or tag names (default: the current branch)."""
    if not names:
        head = repo.head()
        if head.branch is None:
            raise NmkevcError("HEAD is detached; name the branch to push")
        names = [head.branch]
    out = {}
    for n in names:
        if repo.refs.read(HEADS + n):
            out[HEADS + n] = repo.refs.read(HEADS + n)
        elif repo.refs.read(TAGS + n):
            out[TAGS + n] = repo.refs.read(TAGS + n)
        else:
            raise RefError(f"{n!r} is not a local branch or tag")
    return out


def push(repo: Repo, name: str, refs: list[str] | None = None, force: bool = False,
         with_stats: bool = False, progress: Progress = None) -> TransferReport:
    """Send branches / tags to remote `name`: objects first, then each ref by compare-and-swap."""
    from .bundle import is_bundle

    url = remote_url(repo, check_remote_name(name))
    if is_bundle(url):
        raise NmkevcError(f"remote {name!r} is a bundle, which is read-only; "
                          "write a new one with 'nmkevc bundle create'")
    remote = RemoteRepo(url, allow_unsafe_push=repo.config.settings.get(UNSAFE_PUSH_SETTING) is True)
    remote.check_atomic_refs()
    report = TransferReport(url)
    specs = push_refspecs(repo, refs or [])
    with remote.locked(wait=repo.lock.wait, on_wait=repo.lock.on_wait):
        fresh = not remote.exists()
        remote_refs = {} if fresh else remote.refs()
        for ref, new in sorted(specs.items()):
            old = remote_refs.get(ref)
            status = _push_status(repo, ref, old, new, force)
            if status == "rejected":
                why = ("the tag exists there" if ref.startswith(TAGS) else "non-fast-forward"
                       if repo.is_commit(old) else "the remote has commits you do not have")
                report.updates.append(RefUpdate(ref, old, new, "rejected", why))
        rejected = [u for u in report.updates if u.status == "rejected"]
        if rejected:
            u = rejected[0]
            raise NmkevcError(
                f"push rejected: {u.ref} at {url} ({u.reason}); fetch and merge first, or push --force"
            )
        known = _ancestry(repo, remote_refs.values())
        order = _push_order(repo, list(specs.values()), known)
        caches = {r: oid for r, oid in _all_refs(repo).items()
                  if (r.startswith(CONTEXT) or (with_stats and r.startswith(STATS))) and r not in remote_refs}
        order += [o for o in caches.values() if o not in order]
        present = set() if fresh else remote.object_ids()
        send = [o for o in order if o not in present]
        for i, oid in enumerate(send):
            data = repo.store.read_compressed(oid)  # verified: local corruption never travels
            remote.put_object(oid, data)
            report.objects += 1
            report.bytes += len(data)
            if progress:
                progress(i + 1, len(send))
        # objects are all in place; the config and refs come last
        if fresh or _missing_bases(remote, repo, specs):
            bases = dict(remote.config()["bases"]) if not fresh else {}
            for cid in specs.values():
                b = repo.commit(cid).base
                if b in repo.config.bases:
                    bases.setdefault(b, repo.config.bases[b].to_json())
            remote.write_config(bases)
        for ref, oid in sorted(caches.items()):
            if remote.read_ref(ref) is None:
                remote.compare_and_set_ref(ref, None, oid)
        for ref, new in sorted(specs.items()):
            old = remote_refs.get(ref)
            status = _push_status(repo, ref, old, new, force)
            if status != "up-to-date":
                remote.compare_and_set_ref(ref, old, new)
            report.updates.append(RefUpdate(ref, old, new, status))
        if remote.head_branch() is None:
            first = next((r[len(HEADS):] for r in sorted(specs) if r.startswith(HEADS)), None)
            if first:
                remote.set_head_branch(first)
    with repo.writing():
        for ref, new in specs.items():
            if ref.startswith(HEADS):
                track = REMOTES + name + "/" + ref[len(HEADS):]
                if repo.refs.read(track) != new:
                    repo.refs.set(track, new, f"push {name}")
    return report


def _push_status(repo: Repo, ref: str, old: str | None, new: str, force: bool) -> str:
    if ref.startswith(TAGS) and old is not None and old != new:
        return "forced" if force else "rejected"  # tags never move without --force
    return _ff_status(repo, old, new, allowed=force)


def _missing_bases(remote: RemoteRepo, repo: Repo, specs: dict[str, str]) -> bool:
    have = remote.config()["bases"]
    return any(repo.commit(c).base not in have for c in specs.values())


# -- clone ----------------------------------------------------------------------------------
@dataclass
class CloneReport:
    path: str
    url: str
    branch: str
    head: str
    transfer: TransferReport

    def to_json(self) -> dict:
        return asdict(self)


def clone(url: str, directory: str | Path, origin: str = "origin", with_stats: bool = False,
          progress: Progress = None) -> CloneReport:
    """A new repository at `directory` with url's history; it appears whole or not at all.

    The repository is built in `.nmkevc.clone` beside where it will live; a clone cut
    off midway leaves only that folder, and running the clone again resumes from it."""
    check_remote_name(origin)
    root = Path(directory)
    if (root / REPO_DIR).exists():
        raise NmkevcError(f"{root} is already an nmkevc repository")
    if root.is_dir() and any(p.name != f"{REPO_DIR}.clone" for p in root.iterdir()):
        raise NmkevcError(f"destination {root} exists and is not empty")
    peer = open_peer(url)
    if not peer.exists():
        raise RemoteError(f"{url} is not an nmkevc repository")
    stored_url = url if "://" in url else str(Path(url).resolve())
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{REPO_DIR}.clone"
    make_layout(tmp)
    if not (tmp / "config.json").exists():
        RepoConfig().save(tmp / "config.json")
    repo = Repo(tmp)
    with repo.writing():
        repo.config.remotes = {origin: stored_url}
        repo.config.save(tmp / "config.json")
        transfer = fetch(repo, origin, with_stats=with_stats, progress=progress, peer=peer)
        branches = repo.refs.list(REMOTES + origin + "/")
        if not branches:
            raise NmkevcError(f"{url} has no branches to clone")
        branch = peer.head_branch()
        if branch not in branches:
            branch = "main" if "main" in branches else sorted(branches)[0]
        repo.refs.set(HEADS + branch, branches[branch], f"clone: from {url}")
        repo.refs.set_head_branch(branch, f"clone: from {url}")
        head = branches[branch]
        for base_id in {repo.commit(c).base for c in branches.values()}:
            if base_id not in repo.config.bases:
                raise NmkevcError(f"{url} does not say where base {base_id[:12]} lives")
    os.rename(tmp, root / REPO_DIR)  # the repository appears whole or not at all
    return CloneReport(str(root), stored_url, branch, head, transfer)
