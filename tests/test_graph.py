"""`log --graph` drawing: lanes, merge connectors and joins, as git draws them."""

from __future__ import annotations

from nmkevc.history.lanes import layout


def _draw(entries) -> str:
    lines = []
    for row in layout(entries):
        lines.append(f"{row.prefix} {row.commit}")
        lines.extend(row.connectors)
    return "\n".join(lines)


def test_merge_opens_and_join_closes_a_lane():
    entries = [("M", ["a2", "b1"]), ("b1", ["base"]), ("a2", ["a1"]), ("a1", ["base"]), ("base", [])]
    assert _draw(entries) == "\n".join([
        "* M",
        "|\\",
        "| * b1",
        "* | a2",
        "* | a1",
        "|/",
        "* base",
    ])


def test_nested_merges_shift_lanes_right():
    entries = [("M2", ["M1", "c1"]), ("c1", ["base"]), ("M1", ["a1", "b1"]), ("b1", ["base"]),
               ("a1", ["base"]), ("base", [])]
    assert _draw(entries) == "\n".join([
        "* M2",
        "|\\",
        "| * c1",
        "* | M1",
        "|\\ \\",
        "| * | b1",
        "| |/",
        "* | a1",
        "|/",
        "* base",
    ])


def test_join_across_a_lane_and_body_prefix():
    # three lanes, the outer two waiting for the same commit: it passes under the middle one
    entries = [("x", ["A"]), ("y", ["B"]), ("z", ["A"])]
    rows = layout(entries)
    assert rows[2].connectors == ["|_|/"]
    assert rows[0].body == "|" and rows[2].body == "| | |"


def test_linear_history_is_one_lane():
    rows = layout([("c", ["b"]), ("b", ["a"]), ("a", [])])
    assert [r.prefix for r in rows] == ["*", "*", "*"] and not any(r.connectors for r in rows)
