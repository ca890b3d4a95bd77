"""The commit DAG and the one idea everything rests on: the effective set.

The model at commit C is base + the deltas of C's effective set: C and its ancestors,
minus commits cancelled by an *active* revert in that set. The set, and its canonical
order (topological, ties broken by commit id), depend only on the DAG, so merges in
either direction and re-checkouts always give the same model.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Mapping

from .commit import Commit


class CommitGraph:
    """Commits are immutable, so a loaded commit and its edges never go stale.

    Ancestry and the two orders are plain dictionaries and two short walks (ancestors, a keyed
    topological sort), not networkx: importing networkx takes about 0.15 s, as long as a whole
    `log` or `status` takes without it (docs/design.md, "The commit graph"), and `branch -d` and
    `export` read ancestry and the effective set through them. Merge bases (asked by `merge`,
    which loads the model anyway) and `fsck`'s cycle check are networkx's; networkx is also the
    reference the walks are tested against (tests/test_history.py)."""

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
        """Best common ancestors: those no child of which is a common ancestor too (an ancestor
        of a common ancestor is one, so this is git's "not an ancestor of another")."""
        import networkx as nx

        self.ensure(a)
        self.ensure(b)
        graph = _parent_graph({oid: c.parents for oid, c in self.commits.items()})
        common = (nx.descendants(graph, a) | {a}) & (nx.descendants(graph, b) | {b})
        return sorted(c for c in common if not any(child in common for child in graph.predecessors(c)))

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


def _parent_graph(parents: Mapping[str, Iterable[str]]):
    """A networkx DiGraph of {commit: its parents}, one edge child -> parent."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(parents)
    graph.add_edges_from((child, p) for child, ps in parents.items() for p in ps)
    return graph


def find_cycle(parents: Mapping[str, Iterable[str]]) -> list[str]:
    """Commits on one cycle of the parent relation ({commit: its parents}), or [] when there is
    none. Content addressing rules cycles out among objects whose ids verify: `fsck` checks."""
    import networkx as nx

    try:
        return [child for child, _ in nx.find_cycle(_parent_graph(parents))]
    except nx.NetworkXNoCycle:
        return []
