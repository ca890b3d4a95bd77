"""The record `nmkevc view` draws: everything the page shows, gathered once as plain JSON.

Kept apart from the drawing so that tests (and other tools) check the numbers against the
repository without a browser: commit ids and parents, the lanes of `log --graph`, each delta's
binned neuron map, the health figures, and for `A...B` the mask-overlap scores `merge` computes.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...deltas.measure import DEFAULT_MASK_THRESHOLD, neuron_masses
from ...errors import RevisionError, UsageError
from ...history.lanes import layout
from ...repo.repository import Repo
from ...version import __version__
from .. import describe
from ..merging import MergeReport, detect

if TYPE_CHECKING:
    import torch

FORMAT = "nmkevc-view/1"
#: what the page shows of a fact, and of its own check after the edit
FACT_KEYS = ("subject", "prompt", "target_new", "target_true")
CHECK_KEYS = ("text", "target_new", "efficacy", "p_before", "p_after", "generalization", "specificity")
#: the health figures a drift plot draws (workbench.health.SUMMARY)
DRIFT_KEYS = ("norm_growth", "disturbance", "disturbance_cumulative")


@dataclass(frozen=True)
class Selection:
    """What a view spec names: `REV` (its history), `A..B` (B's commits not in A) or `A...B`
    (the commits on either side since their merge base, and B's merge into A scored)."""

    spec: str
    kind: str  # "rev" | "range" | "compare"
    a: str | None
    b: str


def parse_spec(spec: str) -> Selection:
    """Split a view spec; an empty side means HEAD, as in git."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("view needs a revision, A..B or A...B")
    spec = spec.strip()
    for sep, kind in (("...", "compare"), ("..", "range")):
        if sep in spec:
            a, b = spec.split(sep, 1)
            if sep in b or (sep == ".." and b.startswith(".")):
                raise RevisionError(f"bad revision range {spec!r}")
            return Selection(spec, kind, a or "HEAD", b or "HEAD")
    return Selection(spec, "rev", None, spec)


def gather(repo: Repo, spec: str = "HEAD", mask_threshold: float = DEFAULT_MASK_THRESHOLD) -> dict:
    """The page's data for `spec` (see `Selection`): a JSON-able dict, format `FORMAT`."""
    if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, int | float) \
            or not 0.0 <= mask_threshold <= 1.0:
        raise UsageError(f"the mask threshold is a share of delta mass, between 0 and 1, not {mask_threshold!r}")
    sel = parse_spec(spec)
    g = repo.graph
    b = repo.resolve(sel.b)
    a = repo.resolve(sel.a) if sel.a is not None else None
    if sel.kind == "rev":
        nodes = g.ancestors(b)
    elif sel.kind == "range":
        nodes = g.ancestors(b) - g.ancestors(a)
    else:
        nodes = (g.ancestors(a) ^ g.ancestors(b)) | set(g.merge_bases(a, b))
    if not nodes:
        raise RevisionError(f"{sel.spec!r} names no commits: every commit of {sel.b!r} is in {sel.a!r}")
    order = g.newest_first(nodes)
    row_of = {c: i for i, c in enumerate(order)}
    names = describe.ref_names(repo)
    rows = layout([(c, [p for p in repo.commit(c).parents if p in nodes]) for c in order])
    protocols: list[dict] = []
    commits = []
    for cid, row in zip(order, rows):
        ci = describe.commit_info(repo, cid, stat=True, names=names)
        commits.append(_commit_record(ci, row.column, [row_of[x] for x in row.lanes], protocols))
    for c in commits:  # a revert, or a merge that kept one side, drops commits from the set
        for x in c["cancels"]:
            if x in row_of:
                commits[row_of[x]]["cancelled_by"].append(c["id"])
    tips = [a, b] if sel.kind == "compare" else [b]
    return {
        "format": FORMAT,
        "tool_version": __version__,
        "title": repo.root.name,
        "generated": int(time.time()),
        "selection": {"spec": sel.spec, "kind": sel.kind, "a": a, "b": b, "a_name": sel.a, "b_name": sel.b},
        "bins": describe.NEURON_BINS,
        "protocols": protocols,
        "commits": commits,
        "drift": [_drift_line(repo, t, nodes, name) for t, name in zip(tips, _tip_names(sel))],
        "compare": _compare(repo, a, b, mask_threshold) if sel.kind == "compare" else None,
    }


def _tip_names(sel: Selection) -> list[str]:
    return [sel.a or "", sel.b] if sel.kind == "compare" else [sel.b]


def _commit_record(ci: describe.CommitInfo, column: int, lanes: list[int], protocols: list[dict]) -> dict:
    """One commit as the page needs it; user text stays as it is (the page writes it as text)."""
    info = ci.info if isinstance(ci.info, dict) else {}
    ev = info.get("evaluation")
    editor = info.get("editor")
    rec = {
        "id": ci.id, "kind": ci.kind, "parents": ci.parents, "author": ci.author, "time": ci.time,
        "message": ci.message, "refs": ci.refs, "delta": ci.delta[:12] if ci.delta else None, "cancels": ci.cancels,
        "column": column, "lanes": lanes, "cancelled_by": [],
        "facts": [_pick(r, FACT_KEYS) for r in ci.requests],
        "checks": [_pick(r, CHECK_KEYS) for r in ev.get("requests", [])]
        if isinstance(ev, dict) and isinstance(ev.get("requests"), list) else [],
        "checks_held": ci.checks_held,
        "method": _protocol(ci.method, protocols),
        # the editor's scalar figures (its per-request lists are long and are in `show --json`)
        "editor": {k: v for k, v in editor.items() if isinstance(v, str | int | float | bool)}
        if isinstance(editor, dict) else {},
        "health": info.get("health") if isinstance(info.get("health"), dict) else None,
        "stored_bytes": ci.stored_bytes,
        "layers": [
            {"layer": w.layer, "neurons": w.neurons, "d_ff": w.d_ff, "rank": w.rank, "norm": w.norm,
             **w.neuron_map}
            for w in ci.weights
        ],
    }
    if ci.kind == "merge":
        conflicts = info.get("conflicts")
        rec["merge"] = {"strategy": info.get("strategy"), "merged": info.get("merged"),
                        "conflicts": [str(x) for x in conflicts] if isinstance(conflicts, list) else []}
    return rec


def _pick(rec: object, keys: tuple[str, ...]) -> dict:
    """The fields of a request or check the page shows (its prompts for evaluation, such as
    neighbourhood prompts, stay in `show --json`: they would double a long history's page)."""
    return {k: rec[k] for k in keys if k in rec} if isinstance(rec, dict) else {}


def _protocol(method: dict | None, protocols: list[dict]) -> int | None:
    """The index of a commit's method record (name, hyperparameters: its protocol) in the
    page's table; a long history repeats one protocol, so each is stored once."""
    if not isinstance(method, dict):
        return None
    key = json.dumps(method, sort_keys=True, default=str)
    for i, p in enumerate(protocols):
        if json.dumps(p, sort_keys=True, default=str) == key:
            return i
    protocols.append(method)
    return len(protocols) - 1


def _drift_line(repo: Repo, tip: str, nodes: set[str], name: str) -> dict:
    """The health figures along tip's first-parent line (the commits shown), oldest first;
    `step` counts first-parent steps from the root, so two lines share one axis."""
    line = []
    cid: str | None = tip
    while cid:
        line.append(cid)
        parents = repo.commit(cid).parents
        cid = parents[0] if parents else None
    points = []
    for step, c in enumerate(reversed(line)):
        h = repo.commit(c).info.get("health") if c in nodes else None
        if isinstance(h, dict) and any(k in h for k in DRIFT_KEYS):
            points.append({"commit": c, "step": step, **{k: h[k] for k in DRIFT_KEYS if k in h}})
    return {"name": name, "tip": tip, "points": points}


def shared_levels(shared: torch.Tensor, bins: int = describe.NEURON_BINS) -> str:
    """Per bin, the share of its neurons both sides touch, as levels 0-255 (base64; at least 1
    where any is shared), binned as `describe.neuron_map`."""
    import torch

    d_ff = int(shared.numel())
    n = max(1, min(bins, d_ff))
    where = torch.arange(d_ff) * n // d_ff
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, where, shared.to(torch.float64))
    size = torch.bincount(where, minlength=n).to(torch.float64)
    levels = (count / size * 255).round().to(torch.int64)
    levels = torch.where(count > 0, levels.clamp(1, 255), torch.zeros_like(levels))
    return base64.b64encode(bytes(levels.to(torch.uint8).tolist())).decode("ascii")


def _compare(repo: Repo, a: str, b: str, threshold: float) -> dict:
    """What merging B into A would find, by merge's own detection (fact and mask conflicts;
    the functional check needs the model and is merge's to run), with both sides' neuron maps."""
    g = repo.graph
    out: dict = {"a": a, "b": b, "threshold": threshold, "merge_bases": sorted(g.merge_bases(a, b))}
    if repo.commit(a).base != repo.commit(b).base:
        out.update(status="different bases", mask_scores=[], fact_conflicts=[], maps=[],
                   ours_side=[], theirs_side=[])
        return out
    if g.is_ancestor(b, a):
        status = "up-to-date"
    elif g.is_ancestor(a, b):
        status = "fast-forward"
    elif not out["merge_bases"]:
        status = "unrelated histories (merge refuses them without --allow-unrelated-histories)"
    else:
        status = "merge"
    eff_a, eff_b = set(repo.effective(a)), set(repo.effective(b))
    merged = g.active_for((a, b))
    report = MergeReport(ours=a, theirs=b, result=status)
    report.ours_side = [c for c in merged if c not in eff_b and repo.commit(c).delta]
    report.theirs_side = [c for c in merged if c not in eff_a and repo.commit(c).delta]
    detect(repo, report, merged, threshold, None)
    plan_a, plan_b = repo.plan_of(report.ours_side), repo.plan_of(report.theirs_side)
    maps = []
    for name in sorted(set(plan_a) & set(plan_b), key=lambda n: (plan_a[n][0][1].layer, n)):
        ma = neuron_masses([w for _, w in plan_a[name]])
        mb = neuron_masses([w for _, w in plan_b[name]])
        if ma is None or mb is None:
            continue
        eps = 1e-30  # the neurons mask_overlap counts as touched
        on_a = ma > eps * max(float(ma.max()), eps)
        on_b = mb > eps * max(float(mb.max()), eps)
        shared = on_a & on_b
        maps.append({
            "weight": name, "layer": plan_a[name][0][1].layer, "d_ff": int(ma.numel()),
            "a": describe.binned_map(ma, on_a), "b": describe.binned_map(mb, on_b),
            "shared": shared_levels(shared), "shared_neurons": int(shared.sum()),
        })
    out.update(status=status, ours_side=report.ours_side, theirs_side=report.theirs_side,
               mask_scores=report.mask_scores, fact_conflicts=report.fact_conflicts,
               conflicted=bool(report.fact_conflicts or any(m["conflict"] for m in report.mask_scores)),
               maps=maps)
    return out
