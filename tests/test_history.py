import random

import pytest

from nmkevc.history.commit import Commit
from nmkevc.history.dag import CommitGraph, find_cycle


def graph(spec):
    """spec: {id: (parents, delta, cancels)}"""
    commits = {
        k: Commit(kind="edit", parents=tuple(p), base="b", message=k, author="t", time=i,
                  delta=d, cancels=tuple(c))
        for i, (k, (p, d, c)) in enumerate(spec.items())
    }
    return CommitGraph(lambda oid: commits[oid])


def test_revert_and_revert_of_revert():
    g = graph({
        "a0": ([], None, []),
        "b1": (["a0"], "dx", []),
        "c2": (["b1"], "dy", []),
        "d3": (["c2"], None, ["b1"]),  # revert b1
        "e4": (["d3"], None, ["d3"]),  # revert the revert
    })
    assert g.active("c2") == ["a0", "b1", "c2"]
    assert g.active("d3") == ["a0", "c2", "d3"]
    assert [d for _, d in g.active_deltas("d3")] == ["dy"]
    assert g.active("e4") == ["a0", "b1", "c2", "e4"]


def test_merge_is_union_and_order_is_canonical():
    g = graph({
        "r": ([], None, []),
        "x": (["r"], "dx", []),
        "y": (["r"], "dy", []),
        "m1": (["x", "y"], None, []),
        "m2": (["y", "x"], None, []),
    })
    assert [d for _, d in g.active_deltas("m1")] == [d for _, d in g.active_deltas("m2")]
    assert g.merge_bases("x", "y") == ["r"]
    assert g.is_ancestor("r", "m1") and not g.is_ancestor("x", "y")
    assert g.active_for(("x", "y"), ("x",)) == ["r", "y"]


def test_revert_on_one_side_survives_merge():
    g = graph({
        "r": ([], None, []),
        "x": (["r"], "dx", []),
        "rv": (["x"], None, ["x"]),
        "y": (["x"], "dy", []),
        "m": (["rv", "y"], None, []),
    })
    assert [d for _, d in g.active_deltas("m")] == ["dy"]


def test_same_delta_applied_once():
    g = graph({
        "r": ([], None, []),
        "x": (["r"], "dx", []),
        "pick": (["r"], "dx", []),
        "m": (["x", "pick"], None, []),
    })
    assert [d for _, d in g.active_deltas("m")] == ["dx"]


def test_newest_first_respects_parents():
    g = graph({"r": ([], None, []), "a": (["r"], None, []), "b": (["a"], None, [])})
    assert g.newest_first(g.ancestors("b")) == ["b", "a", "r"]


def random_history(seed: int, n: int = 40) -> dict:
    """A graph() spec: each commit has up to three parents among the earlier ones, ids shuffled
    against the order of creation so ties by id and by time disagree."""
    rng = random.Random(seed)
    ids = [f"c{i:02d}" for i in rng.sample(range(100), n)]
    spec = {}
    for i, cid in enumerate(ids):
        parents = sorted(rng.sample(ids[:i], min(i, rng.choice([1, 1, 1, 2, 3]))))
        spec[cid] = (parents, f"d{cid}", [])
    return spec


@pytest.mark.parametrize("seed", range(20))
def test_walks_agree_with_networkx(seed):
    """Ancestry, merge bases and both orders against networkx's algorithms on random histories."""
    import networkx as nx

    spec = random_history(seed)
    g = graph(spec)
    dag = nx.DiGraph([(p, c) for c, (ps, _, _) in spec.items() for p in ps])
    dag.add_nodes_from(spec)
    rng = random.Random(seed)
    for tip in rng.sample(sorted(spec), 5):
        assert g.ancestors(tip) == nx.ancestors(dag, tip) | {tip}
        nodes = g.ancestors(tip)
        assert g.canonical_order(nodes) == list(nx.lexicographical_topological_sort(dag.subgraph(nodes)))
        newest = nx.lexicographical_topological_sort(dag.subgraph(nodes).reverse(),
                                                     key=lambda n: (-g.commit(n).time, n))
        assert g.newest_first(nodes) == list(newest)
        other = rng.choice(sorted(spec))
        common = g.ancestors(tip) & g.ancestors(other)
        best = {c for c in common if not any(nx.has_path(dag, c, d) for d in common - {c})}
        assert g.merge_bases(tip, other) == sorted(best)
        assert g.is_ancestor(other, tip) == (other in nodes)


def test_find_cycle_names_the_commits_on_one():
    assert find_cycle({"a": [], "b": ["a"], "m": ["a", "b"]}) == []
    assert sorted(find_cycle({"a": ["c"], "b": ["a"], "c": ["b"], "d": ["a"]})) == ["a", "b", "c"]
    assert find_cycle({"a": ["a"]}) == ["a"]


@pytest.mark.parametrize("bad", [b"{}", b"not json", b'{"kind": "edit"}'])
def test_commit_parse_errors(bad):
    from nmkevc.errors import CorruptObjectError

    with pytest.raises(CorruptObjectError):
        Commit.from_bytes(bad)
