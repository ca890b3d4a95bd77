"""Revision syntax, git's habits: HEAD, @, branch, tag, remote/branch, id prefix (≥ 4 hex), ~N, ^N."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import RevisionError
from ..history.dag import CommitGraph
from ..storage.refs import HEADS, TAGS, RefStore, is_valid_ref_name
from ..storage.store import ObjectStore
from .namespaces import REMOTES

_SUFFIX = re.compile(r"(~\d*|\^\d*)")
_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")


def split_revision(rev: str) -> tuple[str, list[tuple[str, int]]]:
    m = re.search(r"[~^]", rev)
    if not m:
        return rev, []
    name, rest = rev[: m.start()], rev[m.start() :]
    steps = []
    pos = 0
    for sm in _SUFFIX.finditer(rest):
        if sm.start() != pos:
            raise RevisionError(f"bad revision {rev!r}")
        tok = sm.group(0)
        if len(tok) > 10:  # no history is a billion commits deep; int() of 5000 digits raises
            raise RevisionError(f"bad revision {rev[:40]!r}...: {tok[:12]}... is too far back")
        n = int(tok[1:]) if len(tok) > 1 else 1
        steps.append((tok[0], n))
        pos = sm.end()
    if pos != len(rest):
        raise RevisionError(f"bad revision {rev!r}")
    return name, steps


def resolve_revision(
    rev: str,
    refs: RefStore,
    store: ObjectStore,
    graph: CommitGraph,
    is_commit: Callable[[str], bool],
) -> str:
    if not rev or not rev.strip():
        raise RevisionError("empty revision")
    name, steps = split_revision(rev.strip())
    oid = _resolve_name(name or "HEAD", refs, store, is_commit)
    for op, n in steps:
        if op == "~":
            for _ in range(n):
                parents = graph.commit(oid).parents
                if not parents:
                    raise RevisionError(f"{rev!r}: {oid[:12]} has no parent")
                oid = parents[0]
        else:
            if n == 0:
                continue
            parents = graph.commit(oid).parents
            if len(parents) < n:
                raise RevisionError(f"{rev!r}: {oid[:12]} has no parent number {n}")
            oid = parents[n - 1]
    return oid


def _resolve_name(name: str, refs: RefStore, store: ObjectStore, is_commit) -> str:
    if name in ("HEAD", "@"):
        head = refs.head()
        if head.commit is None:
            raise RevisionError(f"HEAD is on branch {head.branch!r}, which has no commits")
        return head.commit
    for prefix in (HEADS, TAGS, REMOTES, ""):
        if prefix == "" and not name.startswith("refs/"):
            continue
        full = prefix + name
        oid = refs.read(full) if is_valid_ref_name(full) and full.count("/") >= 2 else None
        if oid:
            return oid
    if _HEX.match(name):
        matches = [m for m in store.resolve_prefix(name.lower()) if is_commit(m)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise RevisionError(f"ambiguous revision {name!r}: matches {shown}")
    raise RevisionError(f"unknown revision {name!r}")

