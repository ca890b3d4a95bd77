"""fsck (check everything), gc (drop what nothing reaches), and recording bases."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..bases import BaseManifest
from ..deltas.delta import Delta
from ..errors import NmkevcError
from ..history.commit import Commit
from ..remote.untrusted import check_commit_payload, check_delta_values
from ..repo.caches import TemplatesKey
from ..repo.namespaces import CONTEXT, PROJECTORS, STATS
from ..repo.repository import BASE_KIND, COMMIT_KIND, DELTA_KIND, Repo
from .changes import check_delta_against_base

if TYPE_CHECKING:
    from ..workbench import Workbench


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


def fsck(repo: Repo, repair: bool = False, full: bool = False, bench: Workbench | None = None) -> FsckReport:
    """Check every object, ref and delta; with `repair`, first take missing or damaged
    history back from the remotes and rebuild a damaged base manifest from its weights,
    then drop damaged derived objects (statistics, context templates: rebuilt now or by the
    next edit) and damaged objects nothing refers to, restore a corrupt branch or tag (or
    one at a lost commit) from its reflog and a lost HEAD; with `full`, rehash every base.
    `bench` (the repository's models) is what reads bases and rebuilds derived objects;
    one is made for `repo` when needed and not given."""
    if repair:
        with repo.writing():
            healed = _heal(repo)
            rep = _fsck(repo, repair=True, full=full, bench=bench)
            rep.repaired[:0] = healed
            return rep
    return _fsck(repo, repair=False, full=full, bench=bench)


def _scan(repo: Repo) -> tuple[dict[str, str], dict[str, Commit], dict[str, str]]:
    """(kind of every intact object, the commits, {damaged object: why}) of the whole store."""
    kinds: dict[str, str] = {}
    commits: dict[str, Commit] = {}
    damaged: dict[str, str] = {}
    for oid in repo.store:
        try:
            kind, payload = repo.read_object(oid)
            if kind == COMMIT_KIND:  # the same checks a received commit passes: log, show, replay read these
                commits[oid] = check_commit_payload(payload, oid)
            elif kind == DELTA_KIND:
                check_delta_values(Delta.from_bytes(payload, oid), oid)
            elif kind == BASE_KIND:
                BaseManifest.from_bytes(payload)
            kinds[oid] = kind
        except NmkevcError as e:
            damaged[oid] = str(e)
        except Exception:
            damaged[oid] = f"object {oid[:12]} cannot be parsed"
    return kinds, commits, damaged


def _needed(repo: Repo, kinds: dict[str, str], commits: dict[str, Commit]) -> dict[str, str]:
    """{id: kind} of what the history names but the store lacks intact: commits of refs and
    HEAD, parents, cancelled commits, bases and deltas of intact commits, recorded bases."""
    need: dict[str, str] = {}
    names = [*repo.refs.scan(repo.branch_refs.prefix)[0].values(), *repo.refs.scan(repo.tag_refs.prefix)[0].values()]
    try:
        names.append(repo.head().commit or "")
    except NmkevcError:
        pass
    want = [(o, COMMIT_KIND) for o in names if o]
    for c in commits.values():
        want += [(o, COMMIT_KIND) for o in (*c.parents, *c.cancels)] + [(c.base, BASE_KIND)]
        want += [(c.delta, DELTA_KIND)] if c.delta else []
    want += [(b, BASE_KIND) for b in repo.config.bases]
    for oid, kind in want:
        if kinds.get(oid) != kind:
            need.setdefault(oid, kind)
    return need


def _heal(repo: Repo) -> list[str]:
    """What --repair does before checking: a damaged recorded base manifest is rebuilt from
    the base's weights (same bytes, same id), and every object the history names but the
    store lacks intact is taken from a remote that holds it intact (checked like any fetch)."""
    kinds, commits, _damaged = _scan(repo)
    need = _needed(repo, kinds, commits)
    done: list[str] = []
    for oid in [o for o, k in need.items() if k == BASE_KIND and o in repo.config.bases]:
        if _rebuild_base(repo, oid):
            done.append(f"rebuilt base manifest {oid[:12]} from the base's weights")
            need.pop(oid)
    if not need or not repo.config.remotes:
        return done
    from ..remote.transfer import TransferReport, fetch_objects, open_peer

    for name, url in sorted(repo.config.remotes.items()):
        for oid, kind in sorted(need.items()):
            try:
                peer = open_peer(url)
                is_commit = kind == COMMIT_KIND
                fetch_objects(repo, peer, [oid] if is_commit else [], {} if is_commit else {oid: kind},
                              TransferReport(url))
            except NmkevcError:
                continue  # this remote lacks it (or is unreachable): try the next
            done.append(f"fetched {kind} {oid[:12]} from remote {name}")
        kinds, commits, _damaged = _scan(repo)
        need = _needed(repo, kinds, commits)
        if not need:
            break
    return done


def _base_files_at_hand(repo: Repo, base_id: str) -> bool:
    """The recorded base can be read again: a hub id or the embedded model, or a local
    directory that exists (whether its files still hash to the manifest, --repair finds out)."""
    src = repo.config.bases[base_id]
    return src.kind != "local" or Path(src.location).is_dir()


def _rebuild_base(repo: Repo, base_id: str) -> bool:
    """Hash the recorded base's files again; store the manifest if it is the one recorded."""
    from ..models.manifest import build_manifest
    from ..models.source import resolve_dir

    try:
        manifest = build_manifest(resolve_dir(repo.config.bases[base_id]))
        if repo.store.put(BASE_KIND, manifest.to_bytes()) == base_id:
            return True
    except (NmkevcError, OSError):
        return False
    return False


def _fsck(repo: Repo, repair: bool, full: bool, bench: Workbench | None = None) -> FsckReport:
    from ..workbench import Workbench

    bench = bench or Workbench(repo)
    rep = FsckReport()
    kinds, commits, damaged = _scan(repo)
    rep.objects = len(kinds) + len(damaged)
    #: damaged manifests of recorded bases whose files are at hand: --repair rebuilds them
    rebuildable = {o for o in damaged if o in repo.config.bases and _base_files_at_hand(repo, o)}
    _check_refs(repo, rep, kinds, damaged, repair, commits, bench)
    for cid, c in commits.items():
        for p in c.parents:
            if kinds.get(p) != COMMIT_KIND:
                rep.problems.append(f"commit {cid[:12]}: parent {p[:12]} is missing or not a commit")
        if kinds.get(c.base) != BASE_KIND and c.base not in rebuildable:
            rep.problems.append(f"commit {cid[:12]}: base {c.base[:12]} is missing")
        for x in c.cancels:
            if kinds.get(x) != COMMIT_KIND:
                rep.problems.append(f"commit {cid[:12]}: cancelled commit {x[:12]} is missing")
        if c.delta is not None:
            if kinds.get(c.delta) != DELTA_KIND:
                rep.problems.append(f"commit {cid[:12]}: delta {c.delta[:12]} is missing or corrupt")
            elif kinds.get(c.base) == BASE_KIND:
                try:
                    check_delta_against_base(repo, c.base, repo.delta(c.delta))
                except NmkevcError as e:
                    rep.problems.append(f"commit {cid[:12]}: {e}")
    from ..history.dag import find_cycle

    cycle = find_cycle({cid: c.parents for cid, c in commits.items()})
    if cycle:
        rep.problems.append("commits are their own ancestors: " + " -> ".join(c[:12] for c in cycle))
    _check_head(repo, rep, kinds, repair)
    for base_id in repo.config.bases:
        if kinds.get(base_id) != BASE_KIND:
            if base_id not in rebuildable:
                rep.problems.append(f"config names base {base_id[:12]}, which is missing")
        elif full:
            try:
                bench.base_dir(base_id, full=True)
                rep.bases_verified.append(base_id)
            except NmkevcError as e:
                rep.problems.append(f"base {base_id[:12]}: {e}")
    reachable = _reachable(repo, commits, kinds)
    rep.dangling = sorted(o for o in kinds if o not in reachable)
    for oid, problem in damaged.items():
        if oid in rebuildable and not repair:
            _fix(rep, repair, problem + " (the base's manifest: rebuilt from its weights)", None, None)
        elif oid in rebuildable:  # --repair tried before checking (_heal): the files no longer match
            rep.problems.append(f"{problem}; the base's files no longer hash to it")
        elif oid in reachable:
            rep.problems.append(problem)
        else:  # nothing names it (say, left by a repair cut off between two steps): it can go
            _fix(rep, repair, f"{problem}; nothing refers to it", lambda o=oid: repo.store.delete(o),
                 f"removed damaged object {oid[:12]}, which nothing refers to")
    repo.refs.broken.clear()  # reported above as problems, not again as warnings
    return rep


def _check_refs(repo: Repo, rep: FsckReport, kinds: dict[str, str], damaged: dict[str, str],
                repair: bool, commits: dict[str, Commit], bench: Workbench) -> None:
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
                        from ..workbench.statistics import recorded_stats, recorded_templates

                        recorded = {**recorded_stats(bench, commits.values()),
                                    **recorded_templates(repo, commits.values())}
                    _fix(rep, repair, f"{ref}: {what}",
                         lambda r=ref, o=oid, known=recorded: _repair_derived(bench, r, o, known or {}), None)
            elif kinds.get(oid) != COMMIT_KIND:
                problem = f"ref {ref} points at missing commit {oid[:12]}"
                restored = _reflog_target(repo, ref, kinds)
                if restored and restored != oid:
                    _fix(rep, repair, problem, lambda r=ref, o=restored: repo.refs.set(r, o, "fsck: restored"),
                         f"restored {ref} to {restored[:12]} from its reflog ({oid[:12]} is lost)")
                else:
                    rep.problems.append(problem)


def _check_head(repo: Repo, rep: FsckReport, kinds: dict[str, str], repair: bool) -> None:
    try:
        head = repo.head()
        if head.commit is not None and kinds.get(head.commit) == COMMIT_KIND:
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
        if b in branches and kinds.get(branches[b]) == COMMIT_KIND:
            return b, branches[b]
    return None


def _reflog_target(repo: Repo, ref: str, kinds: dict[str, str]) -> str | None:
    for e in reversed(repo.refs.reflog(ref)):
        if e.new and kinds.get(e.new) == COMMIT_KIND:
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


def _repair_derived(bench: Workbench, ref: str, oid: str, recorded: dict) -> str:
    """Drop a damaged derived object and its ref, then compute it again from the base
    (context templates of the first rule always, of other rules and statistics when the commits
    that used them say how, and for statistics the corpus is the shipped one). Whatever is not
    rebuilt now, the next edit rebuilds."""
    from ..workbench.statistics import context_templates, rebuild_stats

    repo = bench.repo
    repo.refs.delete(ref, "fsck: damaged object")
    repo.store.delete(oid)
    rebuilt = None
    name = ref[len(CONTEXT):]
    alone = len(name) == 64 and all(c in "0123456789abcdef" for c in name)  # refs/context/<base id>
    first_rule = TemplatesKey(name) if alone else None
    if ref.startswith(CONTEXT) and (ref in recorded or (first_rule is not None and first_rule.ref == ref)):
        context_templates(bench, recorded.get(ref, first_rule))
        rebuilt = repo.refs.read(ref)
    elif ref in recorded:
        rebuilt = rebuild_stats(bench, recorded[ref])
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
