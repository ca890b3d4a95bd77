"""Merge strategies: how a merge that found conflicts is resolved, one object each.

A strategy is looked up by name in `STRATEGIES` (the CLI's choices come from there);
adding one is a subclass and a `register_strategy` call, in this file or one of its own.
Each turns the merge's findings into a `Resolution`:
the commits the merge cancels and, for a replay, the delta it carries. The module stays
torch-free (the repository is only a type here), so the CLI can list the choices
without loading the model stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..errors import MergeError

if TYPE_CHECKING:
    from ..repo.repository import Repo

#: (repo, base id, effective set kept, their commits to re-run) → (delta id or None, commit fields)
Replay = Callable[["Repo", str, list[str], list[str]], tuple[str | None, dict]]


class Findings(Protocol):
    """What a strategy reads of a merge report."""

    ours: str
    theirs: str
    ours_side: list[str]
    theirs_side: list[str]
    fact_conflicts: list[dict]
    mask_scores: list[dict]
    functional_conflicts: list[dict]


@dataclass(frozen=True)
class Resolution:
    cancels: tuple[str, ...] = ()
    delta: str | None = None
    #: requests / method / info of a replayed delta, for the merge commit
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MergeStrategy:
    name: str
    help: str

    def resolve(self, repo: Repo, findings: Findings, replay: Replay | None) -> Resolution:
        raise NotImplementedError


class KeepOurs(MergeStrategy):
    def resolve(self, repo: Repo, findings: Findings, replay: Replay | None) -> Resolution:
        return Resolution(cancels=tuple(sorted(conflicting_commits(repo, findings, side="theirs"))))


class KeepTheirs(MergeStrategy):
    def resolve(self, repo: Repo, findings: Findings, replay: Replay | None) -> Resolution:
        return Resolution(cancels=tuple(sorted(conflicting_commits(repo, findings, side="ours"))))


class SumAnyway(MergeStrategy):
    def resolve(self, repo: Repo, findings: Findings, replay: Replay | None) -> Resolution:
        return Resolution()


class ReplayTheirs(MergeStrategy):
    def resolve(self, repo: Repo, findings: Findings, replay: Replay | None) -> Resolution:
        if replay is None:
            raise MergeError(f"--strategy {self.name} needs the editing engine")
        cancels = tuple(findings.theirs_side)
        keep = repo.graph.active_for((findings.ours, findings.theirs), cancels)
        delta, extra = replay(repo, repo.commit(findings.ours).base, keep, findings.theirs_side)
        return Resolution(cancels=cancels, delta=delta, extra=extra)


STRATEGIES: dict[str, MergeStrategy] = {
    s.name: s
    for s in (
        KeepOurs("ours", "drop their commits involved in a conflict"),
        KeepTheirs("theirs", "drop our commits involved in a conflict"),
        SumAnyway("sum", "keep every commit of both sides"),
        ReplayTheirs("replay", "re-run their edits on top of ours (recomputes their deltas)"),
    )
}


def register_strategy(strategy: MergeStrategy) -> MergeStrategy:
    """Add a strategy (a later registration of the same name replaces the earlier one)."""
    STRATEGIES[strategy.name] = strategy
    return strategy


def strategy_names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


def get_strategy(name: str) -> MergeStrategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise MergeError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})") from None


def conflicting_commits(repo: Repo, findings: Findings, side: str) -> set[str]:
    """The commits of one side involved in any conflict (dropped by ours/theirs)."""
    side_commits = set(findings.ours_side if side == "ours" else findings.theirs_side)
    out: set[str] = set()
    for f in findings.fact_conflicts:
        out.add(f[f"{side}_commit"])
    conflicted_weights = {m["weight"] for m in findings.mask_scores if m["conflict"]}
    for c in side_commits:
        d = repo.commit(c).delta
        if d and any(w.name in conflicted_weights for w in repo.delta(d).weights):
            out.add(c)
    for f in findings.functional_conflicts:
        if f["commit"] in side_commits:
            out.add(f["commit"])
    other = findings.theirs_side if side == "ours" else findings.ours_side
    for f in findings.functional_conflicts:  # a failure on one side was caused by the other
        if f["commit"] in other:
            out |= {c for c in side_commits if _touches_same(repo, c, f["commit"])}
    return out & side_commits


def _touches_same(repo: Repo, a: str, b: str) -> bool:
    da, db = repo.commit(a).delta, repo.commit(b).delta
    if not da or not db:
        return False
    return bool({w.name for w in repo.delta(da).weights} & {w.name for w in repo.delta(db).weights})
