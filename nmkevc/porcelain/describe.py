"""Read-only views: log, show, diff, status — as records that print and serialise."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..history.commit import Commit
from ..history.lanes import GraphRow, layout
from ..repo.repository import Repo

if TYPE_CHECKING:  # log, show and export's provenance need no torch; diff loads it
    import torch

    from ..deltas.delta import WeightDelta


#: a layer's neuron map has at most this many bins: d_ff (1536 on SmolLM2) does not fit a screen
NEURON_BINS = 128


@dataclass
class WeightStat:
    weight: str
    layer: int
    neurons: int
    d_ff: int
    rank: int
    norm: float
    info: dict = field(default_factory=dict)
    #: which neurons the delta wrote and how much, binned (`neuron_map`)
    neuron_map: dict = field(default_factory=dict)


@dataclass
class CommitInfo:
    id: str
    kind: str
    parents: list[str]
    author: str
    time: int
    message: str
    base: str
    delta: str | None
    cancels: list[str]
    requests: list[dict]
    method: dict | None
    info: dict
    refs: list[str]
    weights: list[WeightStat] = field(default_factory=list)
    stored_bytes: int = 0
    dense_bytes: int = 0
    #: whether every fact's own check held after the edit (None: nothing was checked)
    checks_held: bool | None = None
    #: where `log` draws it (`log_graph`): {"column": its lane, "lanes": what each lane waits for}
    graph: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)


def weight_stats(w: WeightDelta) -> WeightStat:
    return WeightStat(w.name, w.layer, int(w.idx.numel()), w.d_ff, w.rank, round(w.frobenius(), 6), w.info,
                      neuron_map(w))


def neuron_map(w: WeightDelta, bins: int = NEURON_BINS) -> dict:
    """The layer's d_ff neurons in `bins` equal bins (bin of neuron j: j * bins // d_ff), so a
    screen can show which ones an edit wrote and how hard: per bin a level 0-255, the norm of
    ΔW's columns in it relative to the largest bin (0: no neuron written, at least 1 where any
    was), as base64 bytes; `scale` is the largest bin's norm."""
    import torch

    written = torch.zeros(w.d_ff, dtype=torch.bool)
    written[w.idx] = True
    return binned_map(w.neuron_mass(), written, bins)


def binned_map(mass: torch.Tensor, written: torch.Tensor, bins: int = NEURON_BINS) -> dict:
    """`neuron_map` of per-neuron squared norms `mass` (d_ff,) and the neurons `written` (bool)."""
    import torch

    d_ff = int(mass.numel())
    n = max(1, min(bins, d_ff))
    where = torch.arange(d_ff) * n // max(d_ff, 1)
    norms = torch.zeros(n, dtype=torch.float64).index_add_(0, where, mass.to(torch.float64)).sqrt()
    top = float(norms.max())
    levels = (norms / top * 255).round().to(torch.int64) if top > 0 else torch.zeros(n, dtype=torch.int64)
    hit = torch.zeros(n, dtype=torch.bool)
    hit[where[written]] = True
    levels = torch.where(hit, levels.clamp(1, 255), torch.zeros_like(levels))
    return {"bins": n, "scale": float(f"{top:.6g}"),
            "levels": base64.b64encode(bytes(levels.to(torch.uint8).tolist())).decode("ascii")}


def checks_held(info: dict) -> bool | None:
    """Whether each fact of a commit's own check after the edit held (`info["evaluation"]`)."""
    ev = info.get("evaluation") if isinstance(info, dict) else None
    reqs = ev.get("requests") if isinstance(ev, dict) else None
    if not isinstance(reqs, list) or not reqs or not all(isinstance(r, dict) and "efficacy" in r for r in reqs):
        return None
    return all(bool(r["efficacy"]) for r in reqs)


def ref_names(repo: Repo) -> dict[str, list[str]]:
    """commit id → the names pointing at it (HEAD, branches, remote-tracking branches, tags)."""
    out: dict[str, list[str]] = {}
    head = repo.head()
    for name, oid in repo.branches().items():
        label = f"HEAD -> {name}" if head.branch == name else name
        out.setdefault(oid, []).append(label)
    if head.branch is None and head.commit:
        out.setdefault(head.commit, []).insert(0, "HEAD")
    for name, oid in repo.remote_branches().items():
        out.setdefault(oid, []).append(name)
    for name, oid in repo.tags().items():
        out.setdefault(oid, []).append(f"tag: {name}")
    return out


def commit_info(repo: Repo, cid: str, stat: bool = True, names: dict | None = None) -> CommitInfo:
    c: Commit = repo.commit(cid)
    names = ref_names(repo) if names is None else names
    ci = CommitInfo(
        id=cid, kind=c.kind, parents=list(c.parents), author=c.author, time=c.time,
        message=c.message, base=c.base, delta=c.delta, cancels=list(c.cancels),
        requests=list(c.requests), method=c.method, info=c.info, refs=names.get(cid, []),
        checks_held=checks_held(c.info),
    )
    if stat and c.delta:
        d = repo.delta(c.delta)
        ci.weights = [weight_stats(w) for w in d.weights]
        ci.stored_bytes = repo.store.stored_size(c.delta)
        ci.dense_bytes = d.dense_nbytes()
    return ci


def log(repo: Repo, rev: str = "HEAD", max_count: int | None = None, stat: bool = False) -> list[CommitInfo]:
    """Commits reachable from rev, newest first, never a parent before its child."""
    tip = repo.resolve(rev)
    order = repo.graph.newest_first(repo.graph.ancestors(tip))
    if max_count is not None:
        order = order[:max_count]
    names = ref_names(repo)
    return [commit_info(repo, c, stat=stat, names=names) for c in order]


def log_graph(repo: Repo, rev: str = "HEAD", max_count: int | None = None,
              stat: bool = False) -> list[tuple[CommitInfo, GraphRow]]:
    """`log` with the drawing of the graph beside each commit (lanes, merges, joins)."""
    entries = log(repo, rev, max_count, stat)
    shown = {e.id for e in entries}
    rows = layout([(e.id, [p for p in e.parents if p in shown or max_count is None]) for e in entries])
    for e, row in zip(entries, rows):
        e.graph = {"column": row.column, "lanes": list(row.lanes)}
    return list(zip(entries, rows))


def facts_at(repo: Repo, cid: str) -> list[tuple[str, dict]]:
    """(commit, request) of every fact in effect at cid, in canonical order."""
    out = []
    for c in repo.effective(cid):
        commit = repo.commit(c)
        if commit.delta is not None:
            out.extend((c, r) for r in commit.requests)
    return out


@dataclass
class LayerDiff:
    weight: str
    layer: int
    neurons_touched: int
    norm_a: float
    norm_b: float
    norm_diff: float


@dataclass
class DiffReport:
    a: str
    b: str
    facts_added: list[dict]
    facts_removed: list[dict]
    commits_added: list[str]
    commits_removed: list[str]
    layers: list[LayerDiff]

    def to_json(self) -> dict:
        return asdict(self)


def diff(repo: Repo, rev_a: str, rev_b: str) -> DiffReport:
    import torch

    from ..deltas.compose import summed_out_in

    a, b = repo.resolve(rev_a), repo.resolve(rev_b)
    eff_a, eff_b = repo.effective(a), repo.effective(b)
    sa, sb = set(eff_a), set(eff_b)
    fa = {(c, _fact_key(r)) for c, r in facts_at(repo, a)}
    fb = {(c, _fact_key(r)) for c, r in facts_at(repo, b)}
    keys_a = {k for _, k in fa}
    keys_b = {k for _, k in fb}
    added = [dict(commit=c, **r) for c, r in facts_at(repo, b) if _fact_key(r) not in keys_a]
    removed = [dict(commit=c, **r) for c, r in facts_at(repo, a) if _fact_key(r) not in keys_b]
    plan_a, plan_b = repo.plan_of(eff_a), repo.plan_of(eff_b)
    layers = []
    for name in sorted(set(plan_a) | set(plan_b)):
        ids_a = {d for d, _ in plan_a.get(name, [])}
        ids_b = {d for d, _ in plan_b.get(name, [])}
        tot_a = summed_out_in([w for _, w in plan_a.get(name, [])])
        tot_b = summed_out_in([w for _, w in plan_b.get(name, [])])
        only_a = summed_out_in([w for d, w in plan_a.get(name, []) if d not in ids_b])
        only_b = summed_out_in([w for d, w in plan_b.get(name, []) if d not in ids_a])
        if only_a is None and only_b is None:
            continue
        ref = only_a if only_a is not None else only_b
        zero = torch.zeros_like(ref)
        dif = (only_b if only_b is not None else zero) - (only_a if only_a is not None else zero)
        col = dif.norm(dim=0)
        w0 = (plan_b.get(name) or plan_a.get(name))[0][1]
        layers.append(
            LayerDiff(
                weight=name, layer=w0.layer, neurons_touched=int((col > 0).sum()),
                norm_a=round(float(tot_a.norm()) if tot_a is not None else 0.0, 6),
                norm_b=round(float(tot_b.norm()) if tot_b is not None else 0.0, 6),
                norm_diff=round(float(dif.norm()), 6),
            )
        )
    return DiffReport(
        a=a, b=b, facts_added=added, facts_removed=removed,
        commits_added=[c for c in eff_b if c not in sa], commits_removed=[c for c in eff_a if c not in sb],
        layers=layers,
    )


def _fact_key(r: dict) -> tuple:
    return (r.get("subject"), r.get("prompt"), r.get("target_new"))


@dataclass
class Status:
    branch: str | None
    head: str
    summary: str
    base: str
    base_source: str
    architecture: str
    commits: int
    edits_in_effect: int
    facts_in_effect: int
    reverted: int
    objects: int
    stored_bytes: int
    #: the model's drift (`workbench.health`) as recorded by `drift_commit`, the newest commit on
    #: HEAD's first-parent line that measured it (HEAD itself after an edit or a merge)
    drift: dict = field(default_factory=dict)
    drift_commit: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def recorded_drift(repo: Repo, cid: str) -> tuple[str | None, dict]:
    """(commit, health) of the newest commit on cid's first-parent line that recorded its health."""
    while cid:
        c = repo.commit(cid)
        h = c.info.get("health") if isinstance(c.info, dict) else None
        if isinstance(h, dict) and h:
            return cid, {k: v for k, v in h.items() if k != "layers"}
        cid = c.parents[0] if c.parents else None
    return None, {}


def status(repo: Repo) -> Status:
    head = repo.head()
    cid = repo.resolve("HEAD")
    c = repo.commit(cid)
    anc = repo.graph.ancestors(cid)
    eff = repo.effective(cid)
    n_obj, n_bytes = 0, 0
    for oid in repo.store:
        n_obj += 1
        n_bytes += repo.store.stored_size(oid)
    with_delta = [x for x in anc if repo.commit(x).delta is not None]
    st = Status(
        branch=head.branch, head=cid, summary=c.summary, base=c.base,
        base_source=repo.base_source(c.base).describe(), architecture=repo.manifest(c.base).architecture,
        commits=len(anc), edits_in_effect=len([x for x in eff if repo.commit(x).delta is not None]),
        facts_in_effect=len(facts_at(repo, cid)),
        reverted=len([x for x in with_delta if x not in set(eff)]),
        objects=n_obj, stored_bytes=n_bytes,
    )
    st.drift_commit, st.drift = recorded_drift(repo, cid)
    return st
