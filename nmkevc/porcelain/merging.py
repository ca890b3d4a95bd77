"""Merge: the union of two effective sets, stopped when edits fight.

Conflicts, in increasing strength (docs/merging.md): fact (same subject and prompt, different
target), mask (the two sides' deltas share neurons and push them differently, scored
per weight), functional (on the merged model an edit no longer holds). A conflicting
merge changes nothing unless a strategy says how to resolve it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..deltas.measure import DEFAULT_MASK_THRESHOLD, mask_overlap
from ..errors import BaseMismatchError, MergeConflictError, MergeError
from ..facts import EditRequest
from ..history.commit import Commit
from ..repo.repository import Repo, default_author
from .strategies import Replay, Resolution, get_strategy, strategy_names

#: (merged effective set, [(commit, request)] to check) → failures [{commit, subject, ...}]
FunctionalCheck = Callable[[str, list[str], list[tuple[str, EditRequest]]], list[dict]]
#: (base id, the merged effective set, stored deltas the merge carries) → health figures
Health = Callable[[str, list[str], list[str]], dict]


@dataclass
class MergeReport:
    ours: str
    theirs: str
    result: str  # "up-to-date" | "fast-forward" | "merged" | "conflict"
    commit: str | None = None
    strategy: str | None = None
    ours_side: list[str] = field(default_factory=list)
    theirs_side: list[str] = field(default_factory=list)
    fact_conflicts: list[dict] = field(default_factory=list)
    mask_scores: list[dict] = field(default_factory=list)
    functional_conflicts: list[dict] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    #: the drift of the merged state (`workbench.health`), recorded in the merge commit
    health: dict = field(default_factory=dict)

    @property
    def conflicted(self) -> bool:
        return bool(
            self.fact_conflicts
            or any(m["conflict"] for m in self.mask_scores)
            or self.functional_conflicts
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["conflicted"] = self.conflicted
        return d

    def conflict_lines(self) -> list[str]:
        lines = []
        for f in self.fact_conflicts:
            text = f["prompt"].replace("{}", f["subject"], 1)
            lines.append(
                f"fact conflict: {text!r}: ours {f['ours_target']!r} "
                f"({f['ours_commit'][:10]}) vs theirs {f['theirs_target']!r} ({f['theirs_commit'][:10]})"
            )
        for m in self.mask_scores:
            if m["conflict"]:
                lines.append(
                    f"mask conflict: layer {m['layer']} ({m['weight']}): score {m['score']:.3f} "
                    f"(shared {m['shared']} neurons, {m['share_a']:.0%} of ours / {m['share_b']:.0%} "
                    f"of theirs, agreement {m['agreement']:+.2f})"
                )
        for f in self.functional_conflicts:
            lines.append(
                f"functional conflict: {f['commit'][:10]} {f['text']!r} -> {f['target']!r} "
                f"no longer holds (model now prefers {f.get('now', '?')!r})"
            )
        return lines


def merge(
    repo: Repo,
    rev: str,
    strategy: str | None = None,
    message: str | None = None,
    no_ff: bool = False,
    allow_unrelated: bool = False,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
    functional_check: FunctionalCheck | None = None,
    replay: Replay | None = None,
    health: Health | None = None,
) -> MergeReport:
    """Merge `rev` into HEAD. `functional_check`, `replay` and `health` are the model side's
    (the workbench's), given by the caller: whether edits still hold on the merged model, the
    re-run of their edits, and the drift of the merged state."""
    resolver = get_strategy(strategy) if strategy is not None else None
    if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, int | float) \
            or not 0.0 <= mask_threshold <= 1.0:
        raise MergeError(f"--mask-threshold is a share of delta mass, between 0 and 1, not {mask_threshold!r}")
    with repo.writing():
        ours = repo.resolve("HEAD")
        theirs = repo.resolve(rev)
        g = repo.graph
        if repo.commit(ours).base != repo.commit(theirs).base:
            raise BaseMismatchError(
                f"cannot merge {rev!r}: it is built on a different base model "
                f"({repo.commit(theirs).base[:12]} vs {repo.commit(ours).base[:12]})"
            )
        report = MergeReport(ours=ours, theirs=theirs, result="merged", strategy=strategy)
        if g.is_ancestor(theirs, ours):
            report.result = "up-to-date"
            return report
        if not g.merge_bases(ours, theirs) and not allow_unrelated:
            raise MergeError(f"refusing to merge unrelated histories ({rev!r}); "
                             "use --allow-unrelated-histories")
        if g.is_ancestor(ours, theirs) and not no_ff:
            repo.refs.update_head(theirs, f"merge {rev}: fast-forward")
            report.result = "fast-forward"
            report.commit = theirs
            return report

        eff_o, eff_t = set(repo.effective(ours)), set(repo.effective(theirs))
        merged = g.active_for((ours, theirs))
        report.ours_side = [c for c in merged if c not in eff_t and repo.commit(c).delta]
        report.theirs_side = [c for c in merged if c not in eff_o and repo.commit(c).delta]
        detect(repo, report, merged, mask_threshold, functional_check)

        if report.conflicted and resolver is None:
            report.result = "conflict"
            n = len(report.conflict_lines())
            raise MergeConflictError(
                f"merge of {rev!r} stopped: {n} conflict(s); nothing was changed "
                f"(resolve with --strategy {'|'.join(strategy_names())})",
                report.to_json(),
                report.conflict_lines(),
            )
        res = resolver.resolve(repo, report, replay) if resolver is not None else Resolution()
        cancels, delta_id, extra = res.cancels, res.delta, res.extra
        report.cancelled = list(cancels)
        if health is not None:
            report.health = health(repo.commit(ours).base, g.active_for((ours, theirs), cancels),
                                   [delta_id] if delta_id else [])
        c = Commit(
            kind="merge", parents=(ours, theirs), base=repo.commit(ours).base,
            message=message or f"Merge {rev!r}" + (f" (strategy {strategy})" if strategy else ""),
            author=default_author(), time=int(time.time()), delta=delta_id, cancels=cancels,
            requests=tuple(extra.get("requests", ())), method=extra.get("method"),
            info={
                "strategy": strategy,
                "merged": rev,
                "conflicts": report.conflict_lines(),
                **({"replay": extra.get("info")} if extra.get("info") else {}),
                **({"health": report.health} if report.health else {}),
            },
        )
        report.commit = repo.advance_head(c, f"merge {rev}")
        return report


def detect(
    repo: Repo,
    report: MergeReport,
    merged: list[str],
    mask_threshold: float,
    functional_check: FunctionalCheck | None,
) -> None:
    """Fill the report's fact, mask and functional findings."""
    ours_req = [(c, r) for c in report.ours_side for r in repo.commit(c).edit_requests()]
    theirs_req = [(c, r) for c in report.theirs_side for r in repo.commit(c).edit_requests()]
    by_key: dict[tuple, list[tuple[str, EditRequest]]] = {}
    for c, r in ours_req:
        by_key.setdefault(r.key, []).append((c, r))
    for c, r in theirs_req:
        for oc, orq in by_key.get(r.key, []):
            if orq.target_new.strip().lower() != r.target_new.strip().lower():
                report.fact_conflicts.append(
                    {
                        "subject": r.subject, "prompt": r.prompt,
                        "ours_commit": oc, "ours_target": orq.target_new,
                        "theirs_commit": c, "theirs_target": r.target_new,
                    }
                )
    plan_o = repo.plan_of(report.ours_side)
    plan_t = repo.plan_of(report.theirs_side)
    for name in sorted(set(plan_o) & set(plan_t)):
        ov = mask_overlap([w for _, w in plan_o[name]], [w for _, w in plan_t[name]], mask_threshold)
        if ov is not None:
            report.mask_scores.append(ov.to_json())
    if functional_check is not None and (ours_req or theirs_req):
        base = repo.commit(report.ours).base
        report.functional_conflicts = functional_check(base, merged, ours_req + theirs_req)
