"""The commit DAG and the one idea everything rests on: the effective set.

The model at commit C is base + the deltas of C's effective set: C and its ancestors,
minus commits cancelled by an *active* revert in that set. The set, and its canonical
order (topological, ties broken by commit id), depend only on the DAG, so merges in
either direction and re-checkouts always give the same model.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable

from ..errors import CorruptObjectError
from .commit import Commit


class CommitGraph:
    """Commits are immutable, so a loaded commit and its edges never go stale.

    Plain dictionaries and two short walks (ancestors, a keyed topological sort) instead of a
    graph library: every command that reads the effective set, export included, starts
    without importing one."""

    def __init__(self, load: Callable[[str], Commit]):
        self._load = load
        self.commits: dict[str, Commit] = {}
        #: effective sets already resolved (a pure function of immutable commits)
        self._active: dict[str, tuple[str, ...]] = {}

    def commit(self, oid: str) -> Commit:
        self.ensure(oid)
        return self.commits[oid]

    def ensure(self, oid: str) -> None:
        """Load `oid` and all its ancestors into the graph."""
        stack = [oid]
        while stack:
            cur = stack.pop()
            if cur in self.commits:
                continue
            c = self._load(cur)
            self.commits[cur] = c
            for p in c.parents:
                if p not in self.commits:
                    stack.append(p)

    def ancestors(self, oid: str, inclusive: bool = True) -> set[str]:
        self.ensure(oid)
        out: set[str] = set()
        stack = list(self.commits[oid].parents)
        while stack:
            cur = stack.pop()
            if cur not in out:
                out.add(cur)
                stack.extend(self.commits[cur].parents)
        if inclusive:
            out.add(oid)
        return out

    def is_ancestor(self, a: str, b: str) -> bool:
        """True when a is b or an ancestor of b."""
        return a == b or a in self.ancestors(b, inclusive=False)

    def canonical_order(self, nodes: set[str]) -> list[str]:
        """Topological order of a set of commits, ties broken by commit id."""
        return self._sorted(nodes, lambda n: n, parents_first=True)

    def newest_first(self, nodes: set[str]) -> list[str]:
        """Children before parents; among ready commits the newest first (git's date order)."""
        return self._sorted(nodes, lambda n: (-self.commits[n].time, n), parents_first=False)

    def merge_bases(self, a: str, b: str) -> list[str]:
        """Best common ancestors (those not ancestors of another common ancestor)."""
        common = self.ancestors(a) & self.ancestors(b)
        below: set[str] = set()  # common ancestors of another common ancestor
        for c in common:
            if c not in below:
                below |= self.ancestors(c, inclusive=False)
        return sorted(common - below)

    def _sorted(self, nodes: set[str], key: Callable[[str], Hashable], parents_first: bool) -> list[str]:
        """Kahn's topological sort of `nodes` (edges within them only) that always takes the
        ready commit of smallest key, so the order depends on the graph alone."""
        edges: dict[str, list[str]] = {n: [] for n in nodes}  # node -> the nodes it must precede
        waiting = dict.fromkeys(nodes, 0)
        for n in nodes:
            for p in self.commits[n].parents:
                if p in nodes:
                    first, then = (p, n) if parents_first else (n, p)
                    edges[first].append(then)
                    waiting[then] += 1
        ready = [(key(n), n) for n, w in waiting.items() if w == 0]
        heapq.heapify(ready)
        out = []
        while ready:
            _, n = heapq.heappop(ready)
            out.append(n)
            for m in edges[n]:
                waiting[m] -= 1
                if waiting[m] == 0:
                    heapq.heappush(ready, (key(m), m))
        return out

    def active(self, oid: str) -> list[str]:
        """The effective set of `oid` in canonical order."""
        if oid not in self._active:
            self._active[oid] = tuple(self._resolve(self.ancestors(oid), ()))
        return list(self._active[oid])

    def active_for(self, parents: tuple[str, ...], cancels: tuple[str, ...] = ()) -> list[str]:
        """The effective set a new commit with these parents and cancels would have."""
        nodes: set[str] = set()
        for p in parents:
            nodes |= self.ancestors(p)
        return self._resolve(nodes, cancels)

    def _resolve(self, nodes: set[str], extra_cancels: tuple[str, ...]) -> list[str]:
        order = self.canonical_order(nodes)
        cancelled: set[str] = set(extra_cancels)
        for x in reversed(order):  # a revert always comes after what it cancels
            if x in cancelled:
                continue
            cancelled.update(self.commits[x].cancels)
        return [x for x in order if x not in cancelled]

    def active_deltas(self, oid: str) -> list[tuple[str, str]]:
        """(commit, delta id) of the effective set, in canonical order, each delta once.

        A cherry-picked delta that meets its original after a merge is the same object:
        it is applied once, because the fact it carries is taught once.
        """
        return self.deltas_of(self.active(oid))

    def deltas_of(self, commits: list[str]) -> list[tuple[str, str]]:
        """(commit, delta id) of an ordered commit list, each delta once."""
        seen: set[str] = set()
        out = []
        for c in commits:
            d = self.commits[c].delta
            if d is not None and d not in seen:
                seen.add(d)
                out.append((c, d))
        return out

    def first_parent_walk(self, oid: str) -> list[str]:
        out = []
        cur: str | None = oid
        while cur is not None:
            out.append(cur)
            ps = self.commit(cur).parents
            cur = ps[0] if ps else None
        return out

    def check_base(self, oid: str) -> str:
        c = self.commit(oid)
        for p in c.parents:
            if self.commit(p).base != c.base:
                raise CorruptObjectError(f"commit {oid[:12]} and its parent disagree on the base")
        return c.base
