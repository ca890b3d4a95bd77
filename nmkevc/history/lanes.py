"""The drawing of `log --graph`: lanes, merges and forks with git's connectors.

Input: commits in display order (children before parents) with their parents.
Each commit gets the prefix of its own line (`*` in its lane, `|` in the others),
the prefix for any further lines of its text (body, stats), and the connector rows
drawn after them (`|\\` where a merge opens a lane for its second parent, `|/` where
two lanes reach the same parent and join). Lane i sits at column 2i; a connector between lanes
i-1 and i sits at column 2i-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GraphRow:
    """How one commit is drawn: its line's prefix, the prefix of its other lines, and
    the connector rows after them."""

    commit: str
    prefix: str
    body: str
    connectors: list[str] = field(default_factory=list)
    #: the commit's lane (its `*` sits at column 2 * column of the prefix)
    column: int = 0
    #: what each lane waits for when this row is drawn (lanes[column] is the commit itself), so
    #: a drawing other than text (`nmkevc view`) can follow each edge lane by lane
    lanes: tuple[str, ...] = ()


def _lanes_line(lanes: Sequence[str], mark: int | None = None) -> str:
    return " ".join("*" if i == mark else "|" for i in range(len(lanes)))


def _row(width: int) -> list[str]:
    return [" "] * max(width, 0)


def layout(entries: Sequence[tuple[str, Sequence[str]]]) -> list[GraphRow]:
    """Lay out `(commit, parents)` in display order; see the module docstring."""
    lanes: list[str] = []
    out: list[GraphRow] = []
    for cid, parents in entries:
        if cid in lanes:
            col = lanes.index(cid)
        else:  # a tip not reached yet from a shown child: a new lane on the right
            lanes.append(cid)
            col = len(lanes) - 1
        prefix = _lanes_line(lanes, col)
        waiting, column = tuple(lanes), col
        body = _lanes_line(lanes)
        connectors: list[str] = []
        if not parents:  # a root: its lane ends, lanes to its right slide left
            lanes.pop(col)
            if col < len(lanes):
                row = _row(2 * len(lanes) + 1)
                for i in range(len(lanes)):
                    row[2 * i] = "|" if i < col else " "
                    if i >= col:
                        row[2 * i + 1] = "/"
                connectors.append("".join(row).rstrip())
        else:
            lanes[col] = parents[0]
            for extra in parents[1:]:
                # a merge opens a lane for each further parent right of its own;
                # lanes already to the right step one column over
                row = _row(2 * (len(lanes) + 1))
                for i in range(len(lanes)):
                    if i <= col:
                        row[2 * i] = "|"
                    else:
                        row[2 * i + 1] = "\\"
                row[2 * col + 1] = "\\"
                connectors.append("".join(row).rstrip())
                col += 1
                lanes.insert(col, extra)
        connectors.extend(_join_duplicates(lanes))
        out.append(GraphRow(cid, prefix, body, connectors, column, waiting))
    return out


def _join_duplicates(lanes: list[str]) -> list[str]:
    """Rows that fold lanes waiting for the same commit into its leftmost lane (`|/`)."""
    rows = []
    while True:
        dup = next((j for j in range(len(lanes) - 1, 0, -1) if lanes[j] in lanes[:j]), None)
        if dup is None:
            return rows
        target = lanes.index(lanes[dup])
        row = _row(2 * len(lanes))
        for i in range(len(lanes)):
            if i < dup:
                row[2 * i] = "|"
            elif i > dup:
                row[2 * i - 1] = "/"  # lanes right of the joining one slide left with it
        row[2 * dup - 1] = "/"
        for c in range(2 * target + 1, 2 * dup - 1):
            if row[c] == " ":
                row[c] = "_"  # the join passes under the lanes between
        rows.append("".join(row).rstrip())
        lanes.pop(dup)
