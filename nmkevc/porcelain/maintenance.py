"""fsck (check everything), gc (drop what nothing reaches), and recording bases."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..deltas.delta import Delta
from ..errors import NmkevcError
from ..history.commit import Commit
from ..models.manifest import BaseManifest
from ..repo.caches import TemplatesKey
from ..repo.namespaces import CONTEXT, PROJECTORS, STATS
from ..repo.repository import Repo
from .changes import check_delta_against_base
from .edit_inputs import context_templates, rebuild_stats, recorded_stats, recorded_templates


@dataclass
class FsckReport:
    objects: int = 0
    problems: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)
    #: what `--repair` fixed (derived objects dropped for rebuilding, refs restored)
    repaired: list[str] = field(default_factory=list)
    #: problems `--repair` would fix
    repairable: int = 0
    #: bases rehashed in full (`--full`)
    bases_verified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


#: Ref namespaces whose objects are derived from the base and rebuilt on demand.
DERIVED_REFS = (STATS, CONTEXT, PROJECTORS)


def fsck(repo: Repo, repair: bool = False, full: bool = False) -> FsckReport:
    """Check every object, ref and delta; with `repair`, drop damaged derived objects
    (statistics, context templates: the next edit rebuilds them), restore a corrupt
    branch or tag from its reflog and a lost HEAD; with `full`, rehash every base."""
    if repair:
        with repo.writing():
            return _fsck(repo, repair=True, full=full)
    return _fsck(repo, repair=False, full=full)


def _fsck(repo: Repo, repair: bool, full: bool) -> FsckReport:
    rep = FsckReport()
    kinds: dict[str, str] = {}
    commits: dict[str, Commit] = {}
    damaged: dict[str, str] = {}
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
            damaged[oid] = str(e)
        except Exception:
            damaged[oid] = f"object {oid[:12]} cannot be parsed"
    _check_refs(repo, rep, kinds, damaged, repair, commits)
    rep.problems.extend(damaged.values())
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
    _check_head(repo, rep, kinds, repair)
    for base_id in repo.config.bases:
        if kinds.get(base_id) != "base":
            rep.problems.append(f"config names base {base_id[:12]}, which is missing")
        elif full:
            try:
                repo.base_dir(base_id, full=True)
                rep.bases_verified.append(base_id)
            except NmkevcError as e:
                rep.problems.append(f"base {base_id[:12]}: {e}")
    reachable = _reachable(repo, commits, kinds)
    rep.dangling = sorted(o for o in kinds if o not in reachable)
    repo.refs.broken.clear()  # reported above as problems, not again as warnings
    return rep


def _check_refs(repo: Repo, rep: FsckReport, kinds: dict[str, str], damaged: dict[str, str],
                repair: bool, commits: dict[str, Commit]) -> None:
    """Every ref file: readable, well named, pointing at an object of the right kind."""
    recorded: dict | None = None
    refs_root = repo.dir / "refs"
    namespaces = sorted(p.name for p in refs_root.iterdir() if p.is_dir()) if refs_root.is_dir() else []
    for ns in namespaces:
        prefix = f"refs/{ns}/"
        derived = prefix in DERIVED_REFS
        good, bad = repo.refs.scan(prefix)
        for ref, problem in bad.items():
            if derived:
                _fix(rep, repair, problem, lambda r=ref: _drop_ref(repo, r), f"removed {ref} (rebuilt when needed)")
            else:
                restored = _reflog_target(repo, ref, kinds)
                if restored:
                    _fix(rep, repair, problem, lambda r=ref, o=restored: repo.refs.set(r, o, "fsck: restored"),
                         f"restored {ref} to {restored[:12]} from its reflog")
                else:
                    verb = {repo.branch_refs.prefix: "branch -D", repo.tag_refs.prefix: "tag -d"}.get(prefix)
                    rep.problems.append(f"{problem} (delete it with 'nmkevc {verb}')" if verb else problem)
        for name, oid in good.items():
            ref = prefix + name
            if derived:
                if oid in damaged or oid not in kinds:
                    what = damaged.pop(oid, f"object {oid[:12]} is missing")
                    if repair and recorded is None:
                        recorded = {**recorded_stats(repo, commits.values()),
                                    **recorded_templates(repo, commits.values())}
                    _fix(rep, repair, f"{ref}: {what}",
                         lambda r=ref, o=oid, known=recorded: _repair_derived(repo, r, o, known or {}), None)
            elif kinds.get(oid) != "commit":
                rep.problems.append(f"ref {ref} points at missing commit {oid[:12]}")


def _check_head(repo: Repo, rep: FsckReport, kinds: dict[str, str], repair: bool) -> None:
    try:
        head = repo.head()
        if head.commit is not None and kinds.get(head.commit) == "commit":
            return
        problem = "HEAD does not point at a valid commit"
    except NmkevcError as e:
        problem = str(e)
    fix = _head_fix(repo, kinds)
    if fix is None:
        rep.problems.append(problem)
        return
    branch, oid = fix
    if branch:
        _fix(rep, repair, problem, lambda: repo.refs.set_head_branch(branch, "fsck: restored HEAD"),
             f"HEAD restored to branch {branch}")
    else:
        _fix(rep, repair, problem, lambda: repo.refs.set_head_detached(oid, "fsck: restored HEAD"),
             f"HEAD restored (detached) at {oid[:12]} from the reflog")


def _head_fix(repo: Repo, kinds: dict[str, str]) -> tuple[str | None, str] | None:
    """Where a lost HEAD should go: the branch its reflog last named, else the commit."""
    branches = repo.refs.scan(repo.branch_refs.prefix)[0]
    last = _reflog_target(repo, "HEAD", kinds)
    if last:
        on = sorted(b for b, o in branches.items() if o == last)
        return (("main" if "main" in on else on[0]) if on else None), last
    for b in ("main", *sorted(branches)):
        if b in branches and kinds.get(branches[b]) == "commit":
            return b, branches[b]
    return None


def _reflog_target(repo: Repo, ref: str, kinds: dict[str, str]) -> str | None:
    for e in reversed(repo.refs.reflog(ref)):
        if e.new and kinds.get(e.new) == "commit":
            return e.new
    return None


def _fix(rep: FsckReport, repair: bool, problem: str, action, done: str | None) -> None:
    """Repair (recording what was done: `done`, or what the action says) or report."""
    if repair:
        said = action()
        rep.repaired.append(done or said)
    else:
        rep.problems.append(f"{problem} (repairable: 'nmkevc fsck --repair')")
        rep.repairable += 1


def _drop_ref(repo: Repo, ref: str) -> None:
    repo.refs.delete(ref, "fsck: corrupt")


def _repair_derived(repo: Repo, ref: str, oid: str, recorded: dict) -> str:
    """Drop a damaged derived object and its ref, then compute it again from the base
    (context templates of the first rule always, of other rules and statistics when the commits
    that used them say how, and for statistics the corpus is the shipped one). Whatever is not
    rebuilt now, the next edit rebuilds."""
    repo.refs.delete(ref, "fsck: damaged object")
    repo.store.delete(oid)
    rebuilt = None
    first_rule = TemplatesKey(ref[len(CONTEXT):])
    if ref.startswith(CONTEXT) and (ref in recorded or first_rule.ref == ref):
        context_templates(repo, recorded.get(ref, first_rule))
        rebuilt = repo.refs.read(ref)
    elif ref in recorded:
        rebuilt = rebuild_stats(repo, recorded[ref])
    if rebuilt:
        return f"rebuilt {ref} ({oid[:12]} was damaged; now {rebuilt[:12]})"
    return f"dropped damaged {oid[:12]} and {ref} (the next edit that needs it rebuilds it)"



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
    temp_dirs: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def gc(repo: Repo) -> GcReport:
    with repo.writing():
        rep = fsck(repo)
        if not rep.ok:
            hint = "nmkevc fsck --repair" if rep.repairable == len(rep.problems) else "nmkevc fsck"
            raise NmkevcError(f"gc refused: fsck reports {len(rep.problems)} problem(s); "
                              f"fix them first ('{hint}')")
        freed = 0
        for oid in rep.dangling:
            freed += repo.store.stored_size(oid)
            repo.store.delete(oid)
        temps = repo.remove_stale_temps()
        return GcReport(len(rep.dangling), freed, temps, repo.remove_leftover_dirs())


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
