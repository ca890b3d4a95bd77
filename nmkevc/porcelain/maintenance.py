"""fsck (check everything), gc (drop what nothing reaches), and recording bases."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..deltas.delta import Delta
from ..errors import NmkevcError
from ..history.commit import Commit
from ..models.manifest import BaseManifest
from ..repo.repository import Repo
from .changes import check_delta_against_base


@dataclass
class FsckReport:
    objects: int = 0
    problems: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def fsck(repo: Repo) -> FsckReport:
    rep = FsckReport()
    kinds: dict[str, str] = {}
    commits: dict[str, Commit] = {}
    for oid in repo.store:
        rep.objects += 1
        try:
            kind, payload = repo.read_object(oid)
            kinds[oid] = kind
            if kind == "commit":
                commits[oid] = Commit.from_bytes(payload, oid)
            elif kind == "delta":
                Delta.from_bytes(payload, oid)
            elif kind == "base":
                BaseManifest.from_bytes(payload)
        except NmkevcError as e:
            rep.problems.append(str(e))
        except Exception:
            rep.problems.append(f"object {oid[:12]} cannot be parsed")
    for cid, c in commits.items():
        for p in c.parents:
            if kinds.get(p) != "commit":
                rep.problems.append(f"commit {cid[:12]}: parent {p[:12]} is missing or not a commit")
        if kinds.get(c.base) != "base":
            rep.problems.append(f"commit {cid[:12]}: base {c.base[:12]} is missing")
        for x in c.cancels:
            if kinds.get(x) != "commit":
                rep.problems.append(f"commit {cid[:12]}: cancelled commit {x[:12]} is missing")
        if c.delta is not None:
            if kinds.get(c.delta) != "delta":
                rep.problems.append(f"commit {cid[:12]}: delta {c.delta[:12]} is missing or corrupt")
            elif kinds.get(c.base) == "base":
                try:
                    check_delta_against_base(repo, c.base, repo.delta(c.delta))
                except NmkevcError as e:
                    rep.problems.append(f"commit {cid[:12]}: {e}")
    try:
        head = repo.head()
        if head.commit is None or kinds.get(head.commit) != "commit":
            rep.problems.append("HEAD does not point at a valid commit")
    except NmkevcError as e:
        rep.problems.append(str(e))
    for namespace in (repo.branch_refs, repo.tag_refs, repo.remote_refs):
        try:
            for name, oid in namespace.list().items():
                if kinds.get(oid) != "commit":
                    rep.problems.append(f"ref {namespace.ref(name)} points at missing commit {oid[:12]}")
        except NmkevcError as e:
            rep.problems.append(str(e))
    for base_id in repo.config.bases:
        if kinds.get(base_id) != "base":
            rep.problems.append(f"config names base {base_id[:12]}, which is missing")
    reachable = _reachable(repo, commits, kinds)
    rep.dangling = sorted(o for o in kinds if o not in reachable)
    return rep


def _reachable(repo: Repo, commits: dict[str, Commit], kinds: dict[str, str]) -> set[str]:
    seen: set[str] = set()
    stack = list(repo.gc_roots())
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        c = commits.get(oid)
        if c is not None:
            stack.extend(c.parents)
            stack.extend(c.cancels)
            stack.append(c.base)
            if c.delta:
                stack.append(c.delta)
    return seen


@dataclass
class GcReport:
    removed: int
    freed_bytes: int
    temp_files: int

    def to_json(self) -> dict:
        return asdict(self)


def gc(repo: Repo) -> GcReport:
    with repo.writing():
        rep = fsck(repo)
        if not rep.ok:
            raise NmkevcError("gc refused: fsck reports problems; fix them first ('nmkevc fsck')")
        freed = 0
        for oid in rep.dangling:
            freed += repo.store.stored_size(oid)
            repo.store.delete(oid)
        temps = repo.remove_stale_temps()
        return GcReport(len(rep.dangling), freed, temps)


@dataclass(frozen=True)
class BaseInfo:
    id: str
    architecture: str
    num_parameters: int
    location: str

    def to_json(self) -> dict:
        return asdict(self)


def bases(repo: Repo) -> list[BaseInfo]:
    """The recorded bases: content id, architecture, size and where the weights live."""
    out = []
    for bid, src in sorted(repo.config.bases.items()):
        m = repo.manifest(bid)
        out.append(BaseInfo(bid, m.architecture, m.num_parameters, src.describe()))
    return out


def resolve_base_id(repo: Repo, prefix: str) -> str:
    """A recorded base id from a unique prefix (as revisions take short commit ids)."""
    matches = [b for b in repo.config.bases if b.startswith(prefix)] if prefix else []
    if len(matches) != 1:
        raise NmkevcError(f"{'ambiguous' if matches else 'unknown'} base id {prefix!r} (see 'nmkevc base list')")
    return matches[0]
