import pytest

from nmkevc.history.commit import Commit
from nmkevc.history.dag import CommitGraph


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


@pytest.mark.parametrize("bad", [b"{}", b"not json", b'{"kind": "edit"}'])
def test_commit_parse_errors(bad):
    from nmkevc.errors import CorruptObjectError

    with pytest.raises(CorruptObjectError):
        Commit.from_bytes(bad)
